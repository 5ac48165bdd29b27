//! Outgoing email (password resets, invitations) through the SMTP server in `--smtp-url`.
//! Without one nothing is sent, and nothing of the message reaches the log either: messages
//! carry secrets (reset links, invitation codes), and whoever reads a log must not be able to
//! take an account over. Admins get such links from the dashboard's team screen or
//! `companero admin reset-link` instead.
//!
//! Mails go out as jobs (kind [`MAIL`]), so a mail server that is down, or a restart, delays a
//! mail instead of losing it. A job holds no secret, only what the mail is about: a reset link
//! is made when the job runs; an invitation's link is derived again from its id
//! ([`crate::auth::tokens::TokenKeys::link_secret`]).

use chrono::Utc;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::auth::RequestContext;
use crate::auth::accounts::Accounts;
use crate::jobs::{BoxFuture, Handler, Job, JobError, Jobs, NewJob, Outcome};

/// The job kind of outgoing mail.
pub const MAIL: &str = "mail";

/// What a mail job sends: a reference, never a secret.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "mail", rename_all = "snake_case")]
pub enum Mail {
    /// A reset link for the account with this email, if there is one (made when sent).
    PasswordReset {
        email: String,
        ip: Option<std::net::IpAddr>,
        request_id: String,
    },
    /// The invitation's link (derived again from its id), while it can still be accepted.
    Invitation { invitation_id: String },
}

/// Queues a mail; it goes out in the background, retried while the mail server fails.
pub async fn queue(jobs: &Jobs, mail: Mail) -> Result<(), crate::db::DbError> {
    let subject_id = match &mail {
        Mail::PasswordReset { request_id, .. } => request_id.clone(),
        Mail::Invitation { invitation_id } => invitation_id.clone(),
    };
    jobs.enqueue(NewJob {
        kind: MAIL,
        tenant_id: None,
        subject_id,
        payload: serde_json::to_value(&mail).expect("mail serialises"),
        run_at: Utc::now(),
        dedupe_key: None,
        clock_id: None,
    })
    .await?;
    Ok(())
}

/// Where an invitee signs up: the dashboard's sign-up form with the code filled in.
pub fn invitation_link(public_url: &str, token: &str) -> String {
    format!("{public_url}/app/#/signup?invitation={token}")
}

/// Where a reset token is used.
pub fn reset_link(public_url: &str, token: &str) -> String {
    format!("{public_url}/reset-password?token={token}")
}

/// Sends mail jobs.
pub struct MailJob {
    pub accounts: Accounts,
    pub mailer: Mailer,
    pub public_url: std::sync::Arc<str>,
}

impl MailJob {
    /// The message a job stands for (to, subject, body), or `None` when there is nothing to
    /// send any more (no such account, an invitation accepted or withdrawn).
    async fn compose(&self, mail: Mail) -> Result<Option<(String, String, String)>, JobError> {
        let failed = |e: crate::auth::AuthError| JobError::Retry(e.to_string());
        match mail {
            Mail::PasswordReset {
                email,
                ip,
                request_id,
            } => {
                let context = RequestContext { ip, request_id };
                let Some(token) = self
                    .accounts
                    .request_reset(&email, &context)
                    .await
                    .map_err(failed)?
                else {
                    return Ok(None);
                };
                let link = reset_link(&self.public_url, &token);
                Ok(Some((
                    email.trim().to_lowercase(),
                    "Reset your Compañero password".into(),
                    format!(
                        "Someone asked to reset the password of your Compañero account.\n\n\
                         Choose a new password here (the link works once, for one hour):\n{link}\n\n\
                         If it was not you, ignore this message; your password stays as it is.\n"
                    ),
                )))
            }
            Mail::Invitation { invitation_id } => {
                let Some(invitation) = self
                    .accounts
                    .pending_invitation(&invitation_id)
                    .await
                    .map_err(failed)?
                else {
                    return Ok(None);
                };
                let link = invitation_link(&self.public_url, &invitation.token);
                Ok(Some((
                    invitation.email,
                    "Your invitation to Compañero".into(),
                    format!(
                        "You are invited to join a coaching team on Compañero as {role}.\n\n\
                         Create your account here with this email address:\n{link}\n\n\
                         The invitation expires on {expires}.\n",
                        role = invitation.role.as_str(),
                        expires = invitation.expires_at,
                    ),
                )))
            }
        }
    }
}

impl Handler for MailJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        _now: chrono::DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let mail: Mail = serde_json::from_value(job.payload.clone())
                .map_err(|e| JobError::Fatal(format!("not a mail: {e}")))?;
            if !self.mailer.is_configured() {
                tracing::info!(job = job.id, "email is off (no --smtp-url): not sent");
                return Ok(Outcome::Done);
            }
            if let Some((to, subject, body)) = self.compose(mail).await? {
                self.mailer
                    .send(&to, &subject, &body)
                    .await
                    .map_err(JobError::Retry)?;
            }
            Ok(Outcome::Done)
        })
    }
}

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
    /// content). The error says why the server did not take it.
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let Some(transport) = &self.transport else {
            tracing::info!(%subject, "email is off (no --smtp-url): not sent");
            return Ok(());
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
        match &result {
            Ok(()) => tracing::info!(%to, %subject, "email sent"),
            Err(error) => tracing::warn!(%to, %subject, %error, "could not send email"),
        }
        result
    }
}
