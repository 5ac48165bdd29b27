//! Outgoing email (password resets, invitations) through the SMTP server in `--smtp-url`.
//! Without one, messages are written to the log for the instance owner to pass on.

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

    /// Sends a plain-text message; without a mail server, logs it. Failures are logged, not
    /// returned: the caller's request (a reset, an invitation) has succeeded either way.
    pub async fn send(&self, to: &str, subject: &str, body: &str) {
        let Some(transport) = &self.transport else {
            tracing::warn!(%to, %subject, %body, "no mail server configured (--smtp-url); pass this message on");
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
