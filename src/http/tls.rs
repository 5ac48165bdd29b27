//! HTTPS without a proxy: rustls (ring, TLS 1.2 and 1.3 only), HTTP/2 and HTTP/1.1 by ALPN, and
//! a certificate that is reloaded when its files change (a renewal by certbot or acme.sh needs
//! no restart). Also the plain-HTTP listener that only redirects to HTTPS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use axum::body::Body;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are looked at for a change.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(2);
/// A client that has not finished its TLS handshake by then is disconnected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain and private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS side of the listener: the acceptor and the certificate it serves.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<Certificate>,
}

impl Tls {
    /// Loads the files; a missing, unreadable or mismatched certificate and key fail here, at
    /// start-up, with the file named.
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_key(&files, &provider)?;
        let certificate = Arc::new(Certificate {
            current: RwLock::new(Arc::new(key)),
            stamp: RwLock::new(stamp(&files)),
            files,
            provider: provider.clone(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("cannot set up TLS")?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Looks at the files every [`RELOAD_CHECK_EVERY`] until `shutdown`, and serves the new
    /// certificate for new connections once it loads. A broken new pair is logged and the old
    /// one kept, so a half-written renewal never takes the server down.
    pub fn watch(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let certificate = self.certificate.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_CHECK_EVERY) => {}
                }
                let certificate = certificate.clone();
                let _ = tokio::task::spawn_blocking(move || certificate.reload_if_changed()).await;
            }
        })
    }
}

/// The certificate being served, swapped in place when its files change.
#[derive(Debug)]
struct Certificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times and sizes of the two files when they were last loaded.
    stamp: RwLock<Stamp>,
}

type Stamp = [Option<(SystemTime, u64)>; 2];

fn stamp(files: &TlsFiles) -> Stamp {
    let of = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [of(&files.cert), of(&files.key)]
}

impl Certificate {
    fn reload_if_changed(&self) {
        let now = stamp(&self.files);
        if *self.stamp.read().expect("stamp lock") == now {
            return;
        }
        match load_key(&self.files, &self.provider) {
            Ok(key) => {
                *self.current.write().expect("certificate lock") = Arc::new(key);
                *self.stamp.write().expect("stamp lock") = now;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                // Remembered, so a broken pair is reported once, not every few seconds; the
                // next write to either file is tried again.
                *self.stamp.write().expect("stamp lock") = now;
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the changed TLS certificate cannot be used; still serving the previous one"
                );
            }
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

fn load_key(files: &TlsFiles, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate {}", files.cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no PEM certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read the private key {}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "the key {} does not fit the certificate {}",
            files.key.display(),
            files.cert.display()
        )
    })
}

/// Serves `listener` until `shutdown`, answering every request with a permanent redirect to
/// the same path on `https_base` (`https://host[:port]`, no trailing slash), or, when that is
/// `None`, on the request's host at `https_port`.
pub async fn redirect_to_https(
    listener: TcpListener,
    https_base: Option<String>,
    https_port: u16,
    shutdown: CancellationToken,
) {
    let base: Arc<Option<String>> = Arc::new(https_base);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection to redirect");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let base = base.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = redirect(&request, base.as_deref(), https_port);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
}

fn redirect(request: &Request<Incoming>, base: Option<&str>, https_port: u16) -> Response<Body> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let base = match base {
        Some(base) => Some(base.to_string()),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|host| host_of(host))
            .map(|host| match https_port {
                443 => format!("https://{host}"),
                port => format!("https://{host}:{port}"),
            }),
    };
    let Some(base) = base else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from("This server only answers over HTTPS.\n"))
            .expect("static response");
    };
    let location = format!("{base}{path}");
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, &location)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(format!("Moved to {location}\n")))
        .unwrap_or_else(|_| {
            Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(Body::from("Bad request\n"))
                .expect("static response")
        })
}

/// The host of a `Host` header without its port (`[::1]:80` → `[::1]`), if it is a plain host
/// name or address, so a forged header cannot inject anything into `Location`.
fn host_of(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        &host[..=host.find(']')?]
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    plain.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_keeps_only_a_plain_host() {
        assert_eq!(host_of("coach.example.com:80"), Some("coach.example.com"));
        assert_eq!(host_of("coach.example.com"), Some("coach.example.com"));
        assert_eq!(host_of("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_of("evil.com/@x"), None);
        assert_eq!(host_of(""), None);
    }
}
