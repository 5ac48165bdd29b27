//! `companero bench live`: many concurrent, idle live-chat WebSockets held open against one
//! server, the server's memory per connection, and how long a staff message takes to reach an
//! end user who is connected.
//!
//! The server is this executable started as a child process (`serve`, its own data directory in
//! the temp folder, no models), so its memory is measured alone. Every end user is real: a
//! visitor token from the public route, a `hello` and an `open` (which starts a conversation),
//! and a task that reads the socket (answering the server's pings) for the whole run. Staff
//! messages go through the REST route, as the dashboard sends them; the time runs from sending
//! the request to the end user's client reading the message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt, stream};
use serde::Serialize;
use serde_json::{Value, json};

/// The bench's server is its own, so its set-up token can be fixed.
const SETUP_TOKEN: &str = "setup_bench-live";
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;

#[derive(Debug, Serialize)]
pub struct LiveReport {
    pub connections: usize,
    /// Connections still open when the run ended.
    pub connected_at_end: usize,
    pub connect_s: f64,
    pub server_rss_before_mb: f64,
    pub server_rss_after_mb: f64,
    pub rss_per_connection_kb: f64,
    pub samples: usize,
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
}

pub struct LiveBenchOptions {
    pub connections: usize,
    pub samples: usize,
}

/// Connections opened at the same time while setting up.
const SETUP_CONCURRENCY: usize = 128;

pub fn run(options: LiveBenchOptions) -> anyhow::Result<LiveReport> {
    // Each side holds one descriptor per connection; the child inherits the raised limit.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let needed = options.connections as u64 + 1024;
    if limit < needed {
        bail!(
            "{} connections need about {needed} open files per process, but the limit is {limit}; \
             raise it (ulimit -Hn) or ask for fewer connections",
            options.connections
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut server = Server::start()?;
    let result = runtime.block_on(measure(&server, &options));
    server.stop();
    result
}

/// The server under test, a child process with a throw-away data directory.
struct Server {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
}

impl Server {
    fn start() -> anyhow::Result<Server> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let data_dir =
            std::env::temp_dir().join(format!("companero-bench-live-{}", std::process::id()));
        std::fs::create_dir_all(&data_dir)?;
        let child = Command::new(std::env::current_exe()?)
            .args([
                "serve",
                "--offline",
                "--signup",
                "open",
                "--setup-token",
                SETUP_TOKEN,
                "--live-connections-per-ip",
                "100000",
                "--public-rate-limit",
                "100000000",
                "--new-visitor-rate-limit",
                "100000000",
                "--log-level",
                "warn",
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--bind")
            .arg(addr.to_string())
            // Set-up creates thousands of visitors from one address in seconds.
            .args([
                "--auth-rate-limit",
                "100000000",
                "--api-rate-limit",
                "100000000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the server")?;
        Ok(Server {
            child,
            addr,
            data_dir,
        })
    }

    fn rss_mb(&self) -> f64 {
        super::memory_mb(&self.child.id().to_string(), "VmRSS")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

async fn measure(server: &Server, options: &LiveBenchOptions) -> anyhow::Result<LiveReport> {
    let addr = server.addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(addr, "GET", "/healthz", None, None).await.is_err() {
        if Instant::now() > deadline {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let account = json!({"email": "bench@example.com", "password": "violet tractor sings at noon",
                         "full_name": "Bench", "setup_token": SETUP_TOKEN});
    let (_, registered) =
        request(addr, "POST", "/api/v1/auth/register", None, Some(&account)).await?;
    let staff = registered["access_token"]
        .as_str()
        .context("no access token")?
        .to_string();
    let (_, coach) = request(addr, "GET", "/api/v1/coach", Some(&staff), None).await?;
    let slug = coach["slug"].as_str().context("no slug")?.to_string();

    let visitors_path = format!("/api/v1/public/coaches/{slug}/visitors");
    let tokens: Vec<String> = stream::iter(0..options.connections)
        .map(|_| {
            let path = visitors_path.clone();
            async move {
                let (_, visitor) = request(addr, "POST", &path, None, None).await?;
                Ok::<_, anyhow::Error>(visitor["token"].as_str().unwrap_or_default().to_string())
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_mb();

    // Every `stride`-th connection is a sample: its reader reports staff messages.
    let stride = (options.connections / options.samples.max(1)).max(1);
    let open = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let connected: Vec<(usize, String, Option<mpsc::UnboundedReceiver<Instant>>)> =
        stream::iter(tokens.into_iter().enumerate())
            .map(|(i, token)| {
                let open = Arc::clone(&open);
                async move {
                    let (conversation, arrivals) = connect(addr, &token, i % stride == 0, open)
                        .await
                        .with_context(|| format!("connection {i}"))?;
                    Ok::<_, anyhow::Error>((i, conversation, arrivals))
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let connect_s = started.elapsed().as_secs_f64();
    // Let allocations settle before reading the server's memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = server.rss_mb();

    let mut samples: Vec<(String, mpsc::UnboundedReceiver<Instant>)> = connected
        .into_iter()
        .filter_map(|(_, conversation, arrivals)| Some((conversation, arrivals?)))
        .take(options.samples)
        .collect();
    for (conversation, _) in &samples {
        let path = format!("/api/v1/conversations/{conversation}/takeover");
        let (status, body) = request(addr, "POST", &path, Some(&staff), None).await?;
        if status != 200 {
            bail!("takeover failed: {status} {body}");
        }
    }
    let mut latencies = Vec::with_capacity(samples.len());
    for (conversation, arrivals) in &mut samples {
        while arrivals.try_recv().is_ok() {}
        let path = format!("/api/v1/conversations/{conversation}/messages");
        let body = json!({"content": "A note from your coach.", "stream": false});
        let sent = Instant::now();
        let (status, stored) = request(addr, "POST", &path, Some(&staff), Some(&body)).await?;
        if status != 201 {
            bail!("staff message refused: {status} {stored}");
        }
        let arrived = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
            .await
            .context("a staff message never reached its end user")?
            .context("the end user's connection closed")?;
        latencies.push(arrived.duration_since(sent).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(LiveReport {
        connections: options.connections,
        connected_at_end: open.load(Ordering::Relaxed),
        connect_s,
        server_rss_before_mb: rss_before,
        server_rss_after_mb: rss_after,
        rss_per_connection_kb: (rss_after - rss_before) * 1024.0 / options.connections as f64,
        samples: latencies.len(),
        delivery_p50_ms: percentile(0.5),
        delivery_p99_ms: percentile(0.99),
        delivery_max_ms: latencies.last().copied().unwrap_or(0.0),
    })
}

/// Opens an end user's socket, says hello, opens a conversation, then reads it in a task of its
/// own for the rest of the run. A sample reports when each staff message arrives.
async fn connect(
    addr: SocketAddr,
    token: &str,
    sample: bool,
    open: Arc<AtomicUsize>,
) -> anyhow::Result<(String, Option<mpsc::UnboundedReceiver<Instant>>)> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/live")).await?;
    let hello = json!({"type": "hello", "token": token});
    socket.send(Frame::Text(hello.to_string().into())).await?;
    socket
        .send(Frame::Text(json!({"type": "open"}).to_string().into()))
        .await?;
    let conversation = loop {
        let frame = socket.next().await.context("closed during set-up")??;
        if let Frame::Text(text) = frame {
            let event: Value = serde_json::from_str(&text)?;
            match event["type"].as_str() {
                Some("opened") => {
                    break event["conversation"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
                Some("error") => bail!("refused: {event}"),
                _ => {}
            }
        }
    };
    let (report, arrivals) = mpsc::unbounded_channel();
    open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = socket.next().await {
            if let Frame::Text(text) = frame
                && sample
                && text.contains(r#""role":"staff""#)
            {
                let _ = report.send(Instant::now());
            }
        }
        open.fetch_sub(1, Ordering::Relaxed);
    });
    Ok((conversation, sample.then_some(arrivals)))
}

/// A one-shot HTTP/1.1 request with a JSON body; the status and the JSON answer.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP response")?;
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    Ok((status, json))
}
