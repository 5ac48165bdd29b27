//! HTTPS served by the binary itself: a certificate generated here (rcgen), a client that
//! trusts only that certificate, HTTP/2 and HTTP/1.1, the plain-HTTP redirect, a renewed
//! certificate picked up without a restart, a broken renewal that keeps the old one, and a key
//! that does not fit its certificate refused at start.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Served, companero, stderr};
use platform_http::{Certificate, Client, StatusCode, Version, redirect};

struct Pem {
    cert: String,
    key: String,
}

fn self_signed() -> Pem {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("generate a certificate");
    Pem {
        cert: generated.cert.pem(),
        key: generated.signing_key.serialize_pem(),
    }
}

/// A client that trusts only `pem`'s certificate and finds `localhost` at `addr`.
fn client_trusting(pem: &Pem, addr: SocketAddr, http1_only: bool) -> Client {
    let mut builder = Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(Certificate::from_pem(pem.cert.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// The address after `prefix` in the server's log, once it is there.
fn logged_address(served: &Served, prefix: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = served.log();
        if let Some(at) = log.find(prefix) {
            let address: String = log[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || ".:".contains(*c))
                .collect();
            return address.parse().expect("an address in the log");
        }
        assert!(Instant::now() < deadline, "no {prefix} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `check` holds, trying every 100 ms for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_pair(dir: &Path, pem: &Pem) {
    // Key first, then certificate, as a renewal tool does; the server must cope with seeing
    // the new key beside the old certificate for a moment.
    std::fs::write(dir.join("key.pem"), &pem.key).unwrap();
    std::fs::write(dir.join("cert.pem"), &pem.cert).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_https_redirects_http_and_reloads_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = self_signed();
    write_pair(dir.path(), &first);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let data = dir.path().join("data");
    let served = Served::start(
        data.to_str().unwrap(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--redirect-http",
            "0",
            "--offline",
        ],
    );
    let addr = logged_address(&served, "https://");
    let redirect_addr = logged_address(&served, "redirecting http://");

    // HTTP/2 by ALPN for a client that offers it, HTTP/1.1 for one that does not.
    let url = format!("https://localhost:{}/healthz", addr.port());
    let response = client_trusting(&first, addr, false)
        .get(&url)
        .send()
        .await
        .expect("an HTTPS request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    let response = client_trusting(&first, addr, true)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(response.status(), StatusCode::OK);

    // The plain-HTTP port sends everything, path and query kept, to the HTTPS one.
    let plain = Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap();
    let response = plain
        .post(format!(
            "http://127.0.0.1:{}/c/my-coach?from=email",
            redirect_addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        format!("https://127.0.0.1:{}/c/my-coach?from=email", addr.port()).as_str()
    );
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(
        plain
            .get(format!("http://127.0.0.1:{}/healthz", addr.port()))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );

    // A renewed certificate is served to new connections without a restart.
    let renewed = self_signed();
    write_pair(dir.path(), &renewed);
    eventually("the renewed certificate is served", || {
        let client = client_trusting(&renewed, addr, false);
        let url = url.clone();
        async move { client.get(&url).send().await.is_ok() }
    })
    .await;
    assert!(
        client_trusting(&first, addr, false)
            .get(&url)
            .send()
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    assert!(served.log().contains("TLS certificate reloaded"));

    // A broken renewal is reported and the working certificate kept.
    std::fs::write(&cert, "not a certificate").unwrap();
    eventually("the broken certificate is reported", || {
        let reported = served
            .log()
            .contains("the changed TLS certificate cannot be used");
        async move { reported }
    })
    .await;
    let response = client_trusting(&renewed, addr, false)
        .get(&url)
        .send()
        .await
        .expect("still served with the renewed certificate");
    assert_eq!(response.status(), StatusCode::OK);
    // The graceful shutdown works the same over TLS.
    let (status, _, log) = served.terminate_and_wait();
    assert!(status.success(), "{log}");
}

/// `serve` with `tls` flags on a fresh data directory: it must refuse to start, saying `why`.
fn refuses_to_serve(tls: &[&str], why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = vec![
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "--offline",
    ];
    args.extend_from_slice(tls);
    let output = companero(&args, &[]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(why), "{}", stderr(&output));
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (one, other) = (self_signed(), self_signed());
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &one.cert).unwrap();
    std::fs::write(&key, &other.key).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    refuses_to_serve(
        &["--tls-cert", cert, "--tls-key", key],
        "does not fit the certificate",
    );
    refuses_to_serve(&["--tls-cert", cert], "--tls-key");
    refuses_to_serve(&["--redirect-http", "0"], "needs --tls-cert");
}
