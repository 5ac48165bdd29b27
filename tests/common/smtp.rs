//! A minimal SMTP server that accepts every message and keeps it, for tests of outgoing mail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub struct FakeSmtp {
    pub url: String,
    messages: Arc<Mutex<Vec<String>>>,
}

impl FakeSmtp {
    pub async fn start() -> FakeSmtp {
        FakeSmtp::refusing(0).await
    }

    /// A server that answers the first `refusals` messages with a temporary failure (451), as
    /// a mail server that is briefly down does, and accepts the rest.
    pub async fn refusing(refusals: usize) -> FakeSmtp {
        let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(refusals));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let messages: Arc<Mutex<Vec<String>>> = Arc::default();
        let store = Arc::clone(&messages);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (store, refusals) = (Arc::clone(&store), Arc::clone(&refusals));
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 fake ESMTP\r\n").await.ok();
                    let mut data: Option<String> = None;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(body) = &mut data {
                            if line == "." {
                                let refuse = refusals
                                    .fetch_update(
                                        std::sync::atomic::Ordering::SeqCst,
                                        std::sync::atomic::Ordering::SeqCst,
                                        |left| left.checked_sub(1),
                                    )
                                    .is_ok();
                                let message = std::mem::take(body);
                                data = None;
                                if refuse {
                                    write.write_all(b"451 try again later\r\n").await.ok();
                                } else {
                                    store.lock().unwrap().push(message);
                                    write.write_all(b"250 queued\r\n").await.ok();
                                }
                            } else {
                                body.push_str(&line);
                                body.push('\n');
                            }
                            continue;
                        }
                        let command = line.to_ascii_uppercase();
                        let reply: &[u8] =
                            if command.starts_with("EHLO") || command.starts_with("HELO") {
                                b"250 fake\r\n"
                            } else if command.starts_with("DATA") {
                                data = Some(String::new());
                                b"354 go ahead\r\n"
                            } else if command.starts_with("QUIT") {
                                write.write_all(b"221 bye\r\n").await.ok();
                                break;
                            } else {
                                b"250 OK\r\n"
                            };
                        write.write_all(reply).await.ok();
                    }
                });
            }
        });
        FakeSmtp { url, messages }
    }

    /// Waits until `count` messages have arrived (at most 30 s: a retried mail comes after
    /// its backoff) and returns them.
    pub async fn wait_for(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let messages = self.messages.lock().unwrap().clone();
            if messages.len() >= count || Instant::now() > deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The decoded text of a message (quoted-printable soft breaks and escapes undone).
pub fn text_of(message: &str) -> String {
    let body = message.split_once("\n\n").map_or(message, |(_, body)| body);
    let joined = body.replace("=\n", "");
    let mut out = Vec::new();
    let bytes = joined.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
