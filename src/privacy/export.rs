//! Exports (data portability): the job that writes one end user's data, or a whole tenant's,
//! into a ZIP. It reads inside one read transaction (a consistent snapshot), writes row by row
//! (a tenant's tables as JSON Lines, never held in memory whole) into `<id>.zip.part`, and
//! renames it when complete: a job interrupted by a crash is claimed again and starts over, so
//! no half-written export is ever offered.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;
use zip::ZipWriter;
use zip::write::SimpleFileOptions;

use super::{Privacy, PrivacyError, expiry};
use crate::auth::TenantScope;
use crate::db::DbError;
use crate::db::privacy::{ExportRecord, PrivacyStore, Records, in_snapshot};
use crate::jobs::{BoxFuture, Handler, Job, JobError, Outcome};

pub(super) struct ExportJob(pub(super) Privacy);

impl Handler for ExportJob {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        _now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let scope = crate::jobs::tenant_scope(job)?;
            match self.0.write_export(&scope, &job.subject_id).await {
                Ok(()) => Ok(Outcome::Done),
                Err(PrivacyError::Db(error)) => Err(error.into()),
                Err(error) => {
                    let message = error.to_string();
                    let (scope, id) = (scope.clone(), job.subject_id.clone());
                    self.0
                        .db()
                        .call(move |c| c.export_finished(&scope, &id, Err(&message), None))
                        .await?;
                    Err(JobError::Fatal(error.to_string()))
                }
            }
        })
    }
}

impl Privacy {
    async fn write_export(&self, scope: &TenantScope, id: &str) -> Result<(), PrivacyError> {
        let (scope_moved, id_moved) = (scope.clone(), id.to_string());
        let Some(record) = self
            .db()
            .call(move |c| {
                let record = c.export(&scope_moved, &id_moved)?;
                if record.as_ref().is_some_and(|r| r.status != "ready") {
                    c.export_started(&scope_moved, &id_moved)?;
                }
                Ok::<_, DbError>(record)
            })
            .await?
        else {
            return Ok(()); // erased before its turn
        };
        if record.status == "ready" {
            return Ok(()); // finished just before a crash
        }
        let path = self.export_path(scope.tenant_id(), &record);
        let part = path.with_extension("zip.part");
        tokio::fs::create_dir_all(path.parent().expect("an export's folder")).await?;
        let originals = self.inner.originals_dir.join(scope.tenant_id());
        let (scope_moved, record_moved, part_moved) = (scope.clone(), record.clone(), part.clone());
        let bytes = self
            .db()
            .read(move |c| {
                in_snapshot(c, |store| {
                    write_zip(store, &scope_moved, &record_moved, &part_moved, &originals)
                })
            })
            .await;
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(error);
            }
        };
        tokio::fs::rename(&part, &path).await?;
        let (scope_moved, id_moved) = (scope.clone(), id.to_string());
        let kept = self.export_kept(scope, super::EXPORT_KEPT).await?;
        let expires = expiry(&record, Utc::now(), kept);
        let still_wanted = self
            .db()
            .call(move |c| {
                if c.export(&scope_moved, &id_moved)?.is_none() {
                    return Ok::<_, DbError>(false);
                }
                c.export_finished(&scope_moved, &id_moved, Ok(bytes as i64), Some(expires))?;
                Ok(true)
            })
            .await?;
        if !still_wanted {
            // The end user was erased while this was written.
            tokio::fs::remove_file(&path).await?;
        }
        Ok(())
    }
}

fn zip_error(error: zip::result::ZipError) -> PrivacyError {
    PrivacyError::Io(std::io::Error::other(error))
}

/// A ZIP being written: entries start and end here, each compressed.
struct Archive {
    zip: ZipWriter<BufWriter<File>>,
}

impl Archive {
    fn create(path: &Path) -> Result<Archive, PrivacyError> {
        let file = BufWriter::new(File::create(path)?);
        Ok(Archive {
            zip: ZipWriter::new(file).set_auto_large_file(),
        })
    }

    fn start(&mut self, name: &str) -> Result<&mut ZipWriter<BufWriter<File>>, PrivacyError> {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o600);
        self.zip.start_file(name, options).map_err(zip_error)?;
        Ok(&mut self.zip)
    }

    fn text(&mut self, name: &str, text: &str) -> Result<(), PrivacyError> {
        self.start(name)?.write_all(text.as_bytes())?;
        Ok(())
    }

    fn json(&mut self, name: &str, value: &Value) -> Result<(), PrivacyError> {
        let writer = self.start(name)?;
        serde_json::to_writer_pretty(&mut *writer, value).map_err(std::io::Error::other)?;
        writer.write_all(b"\n")?;
        Ok(())
    }

    /// `records` as JSON Lines, streamed row by row; `seen` is shown each row once written.
    fn lines(
        &mut self,
        name: &str,
        store: &dyn PrivacyStore,
        scope: &TenantScope,
        records: Records,
        seen: &mut dyn FnMut(&Value),
    ) -> Result<(), PrivacyError> {
        let writer = self.start(name)?;
        store.for_each_record(scope, None, records, &mut |row| {
            serde_json::to_writer(&mut *writer, &row)
                .map_err(std::io::Error::other)
                .and_then(|_| writer.write_all(b"\n"))
                .map_err(|e| DbError::Task(format!("writing {name}: {e}")))?;
            seen(&row);
            Ok(())
        })?;
        Ok(())
    }

    /// Copies a file in, streamed.
    fn file(&mut self, name: &str, path: &Path) -> Result<(), PrivacyError> {
        let mut source = File::open(path)?;
        std::io::copy(&mut source, self.start(name)?)?;
        Ok(())
    }

    /// Completes the archive; returns its size in bytes.
    fn finish(self) -> Result<u64, PrivacyError> {
        crate::crash_points::reached("export.before_finish");
        let mut file = self.zip.finish().map_err(zip_error)?;
        file.flush()?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file.metadata()?.len())
    }
}

fn write_zip(
    store: &dyn PrivacyStore,
    scope: &TenantScope,
    record: &ExportRecord,
    path: &Path,
    originals: &Path,
) -> Result<u64, PrivacyError> {
    let mut archive = Archive::create(path)?;
    match &record.end_user_id {
        Some(end_user) => write_end_user(&mut archive, store, scope, end_user)?,
        None => write_tenant(&mut archive, store, scope, originals)?,
    }
    archive.finish()
}

/// Every row of `records` for one end user (one person's history fits in memory).
fn collect(
    store: &dyn PrivacyStore,
    scope: &TenantScope,
    end_user: &str,
    records: Records,
) -> Result<Vec<Value>, PrivacyError> {
    let mut rows = Vec::new();
    store.for_each_record(scope, Some(end_user), records, &mut |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(rows)
}

const END_USER_README: &str = "\
Your data, as the coach holds it
================================

profile.json        who you are to the coach: name, email, time zone, tags, when you were
                    last active, and whether the coach may check in on its own
consent.json        your answer about check-ins (proactive messages): when, on which channel,
                    and when you said STOP, overall and per channel
identities.json     the ways you talk to the coach: this browser (web) and messaging apps
                    (Telegram, WhatsApp), each with the platform's id for the chat
conversations.json  every conversation with every message, and for the coach's answers the
                    passages of the coach's documents they cite
conversations.md    the same conversations, to read
goals.json          your goals, each with its check-ins
enrollments.json    the programs you joined and the steps you completed
nudges.json         every message the coach planned or sent on its own, and what became of it

Times are UTC (RFC 3339). Files are JSON (UTF-8).
";

fn write_end_user(
    archive: &mut Archive,
    store: &dyn PrivacyStore,
    scope: &TenantScope,
    end_user: &str,
) -> Result<(), PrivacyError> {
    archive.text("README.txt", END_USER_README)?;
    let profile = collect(store, scope, end_user, Records::Profile)?
        .into_iter()
        .next()
        .ok_or(PrivacyError::NotFound("end user"))?;
    let identities = collect(store, scope, end_user, Records::Identities)?;
    let consent = serde_json::json!({
        "consent": profile["consent"] == 1,
        "given_or_withdrawn_at": profile["consent_at"],
        "channel": profile["consent_channel"],
        "opted_out_at": profile["opted_out_at"],
        "per_channel": identities.iter().map(|i| serde_json::json!({
            "channel": i["channel"], "opted_out_at": i["opted_out_at"],
        })).collect::<Vec<_>>(),
        "note": "The coach keeps your current answer and when you gave it; \
                 changes before it are not kept.",
    });
    archive.json("profile.json", &profile)?;
    archive.json("consent.json", &consent)?;
    archive.json("identities.json", &Value::Array(identities))?;
    let mut conversations = collect(store, scope, end_user, Records::Conversations)?;
    let messages = collect(store, scope, end_user, Records::Messages)?;
    for conversation in &mut conversations {
        let own: Vec<Value> = messages
            .iter()
            .filter(|m| m["conversation_id"] == conversation["id"])
            .cloned()
            .collect();
        conversation["messages"] = Value::Array(own);
    }
    archive.text("conversations.md", &conversations_markdown(&conversations))?;
    archive.json("conversations.json", &Value::Array(conversations))?;
    let mut goals = collect(store, scope, end_user, Records::Goals)?;
    let check_ins = collect(store, scope, end_user, Records::CheckIns)?;
    for goal in &mut goals {
        let own: Vec<Value> = check_ins
            .iter()
            .filter(|k| k["goal_id"] == goal["id"])
            .cloned()
            .collect();
        goal["check_ins"] = Value::Array(own);
    }
    archive.json("goals.json", &Value::Array(goals))?;
    let enrollments = collect(store, scope, end_user, Records::Enrollments)?;
    archive.json("enrollments.json", &Value::Array(enrollments))?;
    let nudges = collect(store, scope, end_user, Records::Nudges)?;
    archive.json("nudges.json", &Value::Array(nudges))?;
    Ok(())
}

/// The conversations as a person reads them: who said what, when, and the sources cited.
fn conversations_markdown(conversations: &[Value]) -> String {
    let mut out = String::from("# Your conversations with the coach\n");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    for conversation in conversations {
        out.push_str(&format!(
            "\n## Conversation of {} ({})\n",
            text(&conversation["created_at"]),
            text(&conversation["channel"])
        ));
        for message in conversation["messages"].as_array().into_iter().flatten() {
            let who = match message["role"].as_str() {
                Some("user") => "You".to_string(),
                Some("assistant") => "Coach".to_string(),
                Some("staff") => message["author_name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("The coach's team")
                    .to_string(),
                _ => "Note".to_string(),
            };
            out.push_str(&format!(
                "\n**{who}** · {}\n\n{}\n",
                text(&message["created_at"]),
                text(&message["content"]).trim()
            ));
            let citations = message["citations"].as_array().cloned().unwrap_or_default();
            if !citations.is_empty() {
                out.push_str("\nSources:\n");
                for citation in citations {
                    let heading = text(&citation["heading_path"]);
                    out.push_str(&format!(
                        "- [{}] {}{}: \"{}\"\n",
                        citation["marker"],
                        text(&citation["document_title"]),
                        if heading.is_empty() {
                            String::new()
                        } else {
                            format!(", {heading}")
                        },
                        text(&citation["snippet"]).trim()
                    ));
                }
            }
        }
    }
    out
}

const TENANT_README: &str = "\
Everything this coach's account holds
=====================================

tenant.json           the account and the coach's settings (name, persona, greeting, answer
                      style, guardrails for proactive messages, allowed origins)
members.jsonl         the team: email, name, role (never passwords)
api_keys.jsonl        API keys: name, prefix, role, use (never the keys)
channels.jsonl        messaging connections (never their credentials)
documents.jsonl       the knowledge base's documents; originals/ holds each uploaded file as
                      <document id>-<file name>
programs.jsonl, program_versions.jsonl, nudge_rules.jsonl
                      coaching programs (every version) and nudge rules
end_users.jsonl, identities.jsonl, conversations.jsonl, messages.jsonl, goals.jsonl,
check_ins.jsonl, enrollments.jsonl, nudges.jsonl
                      the people coached and everything of theirs
knowledge_gaps.jsonl  questions the coach could not answer
audit_log.jsonl       the account's audit log

.jsonl files hold one JSON object per line. Times are UTC (RFC 3339).
";

/// The tenant's tables in the archive, in order.
const TENANT_FILES: &[(&str, Records)] = &[
    ("members.jsonl", Records::Members),
    ("api_keys.jsonl", Records::ApiKeys),
    ("channels.jsonl", Records::Channels),
    ("programs.jsonl", Records::Programs),
    ("program_versions.jsonl", Records::ProgramVersions),
    ("nudge_rules.jsonl", Records::NudgeRules),
    ("end_users.jsonl", Records::EndUsers),
    ("identities.jsonl", Records::AllIdentities),
    ("conversations.jsonl", Records::AllConversations),
    ("messages.jsonl", Records::AllMessages),
    ("goals.jsonl", Records::AllGoals),
    ("check_ins.jsonl", Records::AllCheckIns),
    ("enrollments.jsonl", Records::AllEnrollments),
    ("nudges.jsonl", Records::AllNudges),
    ("knowledge_gaps.jsonl", Records::KnowledgeGaps),
    ("audit_log.jsonl", Records::AuditLog),
];

fn write_tenant(
    archive: &mut Archive,
    store: &dyn PrivacyStore,
    scope: &TenantScope,
    originals: &Path,
) -> Result<(), PrivacyError> {
    archive.text("README.txt", TENANT_README)?;
    let first = |records| -> Result<Value, PrivacyError> {
        let mut found = Value::Null;
        store.for_each_record(scope, None, records, &mut |row| {
            found = row;
            Ok(())
        })?;
        Ok(found)
    };
    let tenant = serde_json::json!({
        "tenant": first(Records::Tenant)?,
        "coach": first(Records::Coach)?,
    });
    archive.json("tenant.json", &tenant)?;
    for (name, records) in TENANT_FILES {
        archive.lines(name, store, scope, *records, &mut |_| {})?;
    }
    // Documents: their rows, then their files (one entry is written at a time).
    let mut files = Vec::new();
    archive.lines(
        "documents.jsonl",
        store,
        scope,
        Records::Documents,
        &mut |row| {
            let text = |key: &str| row[key].as_str().unwrap_or_default().to_string();
            files.push((text("id"), text("filename")));
        },
    )?;
    for (id, filename) in files {
        let path = originals.join(&id);
        if path.exists() {
            archive.file(&format!("originals/{id}-{}", safe_name(&filename)), &path)?;
        }
    }
    Ok(())
}

/// A file name that stays inside its folder when unpacked.
fn safe_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    name.trim_start_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_leave_their_folder() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("notes.pdf"), "notes.pdf");
        assert_eq!(safe_name(".hidden"), "hidden");
    }

    #[test]
    fn markdown_names_speakers_and_sources() {
        let conversations = serde_json::json!([{
            "created_at": "2026-03-01T10:00:00.000Z", "channel": "web",
            "messages": [
                {"role": "user", "content": "How long are sessions?", "created_at": "t1", "citations": []},
                {"role": "assistant", "content": "45 minutes [1].", "created_at": "t2",
                 "citations": [{"marker": 1, "document_title": "Programme", "heading_path": "Week 1",
                                "snippet": "Sessions last 45 minutes."}]}
            ]
        }]);
        let text = conversations_markdown(conversations.as_array().unwrap());
        assert!(
            text.contains("**You** · t1\n\nHow long are sessions?"),
            "{text}"
        );
        assert!(text.contains("**Coach** · t2"), "{text}");
        assert!(
            text.contains("- [1] Programme, Week 1: \"Sessions last 45 minutes.\""),
            "{text}"
        );
    }
}
