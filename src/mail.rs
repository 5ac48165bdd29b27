//! Outgoing email (password resets, invitations) through the SMTP server in `--smtp-url`.
//! Without one nothing is sent, and nothing of the message reaches the log either: messages
//! carry secrets (reset links, invitation codes), and whoever reads a log must not be able to
//! take an account over. Admins get such links from the dashboard's team screen or
//! `companero admin reset-link` instead.

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[derive(Clone)]
pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl Mailer {
    /// `smtp_url`: `smtp://user:pass@host:587` (STARTTLS with `?tls=required`), `smtps://...`
    /// (implicit TLS), or `None` to log instead of sending.
    pub fn new(smtp_url: Option<&str>, from: &str) -> anyhow::Result<Mailer> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid --mail-from {from:?}: {e}"))?;
        let transport = match smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| anyhow::anyhow!("invalid --smtp-url: {e}"))?
                    .build(),
            ),
            None => None,
        };
        Ok(Mailer { transport, from })
    }

    pub fn is_configured(&self) -> bool {
        self.transport.is_some()
    }

    /// Sends a plain-text message; without a mail server, drops it (saying so, without its
    /// content). Failures are logged, not returned: the caller's request (a reset, an
    /// invitation) has succeeded either way.
    pub async fn send(&self, to: &str, subject: &str, body: &str) {
        let Some(transport) = &self.transport else {
            tracing::info!(%subject, "email is off (no --smtp-url): not sent");
            return;
        };
        let message = to
            .parse::<Mailbox>()
            .map_err(|e| e.to_string())
            .and_then(|to| {
                Message::builder()
                    .from(self.from.clone())
                    .to(to)
                    .subject(subject)
                    .body(body.to_string())
                    .map_err(|e| e.to_string())
            });
        let result = match message {
            Ok(message) => transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => tracing::info!(%to, %subject, "email sent"),
            Err(error) => tracing::error!(%to, %subject, %error, "could not send email"),
        }
    }
}
