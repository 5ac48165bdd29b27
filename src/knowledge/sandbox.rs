//! Runs document parsers in a child process, so that a crash, a runaway loop, a memory
//! explosion or an exploit in one hostile file costs that file and nothing else.
//!
//! The parent spawns `companero extract --kind K --limits JSON` with an empty environment,
//! `/` as its working directory and pipes for stdin, stdout and stderr (nothing else), writes
//! the file to its stdin and reads one JSON [`ChildAnswer`] from its stdout, at most
//! `max_output_bytes` of it. The child confines itself ([`super::confine`]: rlimits, Landlock,
//! seccomp) before it reads the file; the parent kills it at the wall-clock deadline or when
//! it writes more than allowed.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::confine::{self, Probe, ProbeReport};
use super::extract::{self, ExtractError, ExtractLimits, Extracted};
use super::sniff::DocumentKind;

/// How extraction runs.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The `companero` executable that serves `extract` (the server's own binary).
    pub executable: PathBuf,
    pub limits: ExtractLimits,
    /// Wall-clock limit for one file.
    pub timeout: Duration,
    /// Address-space limit of the child.
    pub memory_bytes: u64,
    /// Most the child may write to stdout (its JSON answer); more kills it.
    pub max_output_bytes: u64,
}

/// Most the child may write to stderr; its messages are short.
const MAX_STDERR_BYTES: u64 = 64 * 1024;

/// The smallest stdout bound: an answer is the text of the document as JSON, so it is derived
/// from the upload limit (`Sandbox::output_limit`) but never below this.
const MIN_OUTPUT_BYTES: u64 = 64 * 1024 * 1024;

/// `--kind` value that asks the child only which kind of zip archive the file is.
const ZIP_KIND: &str = "zip";

#[derive(Debug, Serialize, Deserialize)]
enum ChildAnswer {
    Ok(Extracted),
    Err(ExtractError),
    /// For `--kind zip`: a Word document, or why not (for the creator).
    Zip(Result<(), String>),
    Probe(ProbeReport),
}

impl Sandbox {
    /// The stdout bound for uploads of at most `max_upload_bytes`: twice the file (JSON
    /// escaping and per-paragraph overhead), at least 64 MiB.
    pub fn output_limit(max_upload_bytes: u64) -> u64 {
        max_upload_bytes.saturating_mul(2).max(MIN_OUTPUT_BYTES)
    }

    /// Extracts `bytes` in a child process.
    pub async fn extract(
        &self,
        kind: DocumentKind,
        bytes: Vec<u8>,
    ) -> Result<Extracted, ExtractError> {
        match self.run(kind.as_str(), &[], bytes).await? {
            ChildAnswer::Ok(extracted) => Ok(extracted),
            ChildAnswer::Err(error) => Err(error),
            _ => Err(ExtractError::ReaderFailed(
                "it answered another question".into(),
            )),
        }
    }

    /// Whether a zip archive is a Word document, decided in the child: the archive's central
    /// directory is hostile input too. `Err` is the reason for the creator.
    pub async fn check_zip(&self, bytes: Vec<u8>) -> Result<(), String> {
        match self.run(ZIP_KIND, &[], bytes).await {
            Ok(ChildAnswer::Zip(verdict)) => verdict,
            Ok(_) => Err("the document reader answered another question".into()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Runs `probe` in a child started exactly like a document reader (tests).
    #[doc(hidden)]
    pub async fn probe(&self, probe: &Probe) -> Result<ProbeReport, ExtractError> {
        let mut args: Vec<OsString> = Vec::new();
        for path in &probe.open {
            args.extend(["--probe-open".into(), path.into()]);
        }
        for addr in &probe.connect {
            args.extend(["--probe-connect".into(), addr.to_string().into()]);
        }
        for path in &probe.exec {
            args.extend(["--probe-exec".into(), path.into()]);
        }
        if probe.unconfined {
            args.push("--probe-unconfined".into());
        }
        match self
            .run(DocumentKind::Text.as_str(), &args, Vec::new())
            .await?
        {
            ChildAnswer::Probe(report) => Ok(report),
            _ => Err(ExtractError::ReaderFailed(
                "it answered another question".into(),
            )),
        }
    }

    async fn run(
        &self,
        kind: &str,
        extra: &[OsString],
        input: Vec<u8>,
    ) -> Result<ChildAnswer, ExtractError> {
        let limits = serde_json::to_string(&self.limits).expect("limits serialise");
        let mut child = tokio::process::Command::new(&self.executable)
            .arg("extract")
            .arg("--kind")
            .arg(kind)
            .arg("--limits")
            .arg(limits)
            .arg("--memory-bytes")
            .arg(self.memory_bytes.to_string())
            .arg("--cpu-seconds")
            .arg((self.timeout.as_secs() + 1).to_string())
            .args(extra)
            // Nothing of the server's reaches the child but its arguments: no secrets in the
            // environment (COMPANERO_SMTP_URL), no working directory inside the data.
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ExtractError::ReaderFailed(format!(
                    "cannot start {}: {e}",
                    self.executable.display()
                ))
            })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let max_output = self.max_output_bytes;
        let run = async move {
            let feed = async move {
                // The child may die before reading everything; that shows in its status.
                let _ = stdin.write_all(&input).await;
                drop(stdin);
                Ok::<(), u64>(())
            };
            let streams = tokio::try_join!(
                feed,
                read_capped(stdout, max_output),
                read_capped(stderr, MAX_STDERR_BYTES)
            );
            match streams {
                Ok(((), out, err)) => Ok((out, err, child.wait().await)),
                Err(limit) => {
                    // A flood of output: stop it now rather than at the deadline.
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    Err(ExtractError::ReaderFailed(format!(
                        "it wrote more than {} output",
                        super::quota::human(limit)
                    )))
                }
            }
        };
        let (out, err, status) =
            tokio::time::timeout(self.timeout, run)
                .await
                .map_err(|_| ExtractError::TimedOut {
                    seconds: self.timeout.as_secs(),
                })??;
        if let Ok(answer) = serde_json::from_slice::<ChildAnswer>(&out) {
            return Ok(answer);
        }
        let stderr = String::from_utf8_lossy(&err);
        tracing::warn!(status = ?status, stderr = %stderr.trim(), "document reader failed");
        Err(describe_failure(status.ok(), &stderr))
    }
}

/// Reads `reader` to its end, or fails with `cap` once it has given more than `cap` bytes.
async fn read_capped(reader: impl AsyncRead + Unpin, cap: u64) -> Result<Vec<u8>, u64> {
    let mut out = Vec::new();
    // A read error (the child died) leaves what was read; its exit status tells the rest.
    let _ = reader.take(cap + 1).read_to_end(&mut out).await;
    if out.len() as u64 > cap {
        return Err(cap);
    }
    Ok(out)
}

fn describe_failure(status: Option<std::process::ExitStatus>, stderr: &str) -> ExtractError {
    use std::os::unix::process::ExitStatusExt;
    if stderr.contains("memory allocation") || stderr.contains("out of memory") {
        return ExtractError::OutOfMemory;
    }
    match status.and_then(|s| s.signal()) {
        // SIGXCPU: the CPU-time limit.
        Some(24) => ExtractError::TimedOut { seconds: 0 },
        Some(signal) => ExtractError::ReaderFailed(format!("it stopped with signal {signal}")),
        None => ExtractError::ReaderFailed("it stopped unexpectedly".into()),
    }
}

/// The child's command line (`companero extract`).
#[derive(Debug, Clone, Default)]
pub struct ChildArgs {
    pub kind: String,
    pub limits: String,
    pub memory_bytes: u64,
    pub cpu_seconds: u64,
    pub probe: Probe,
}

/// The child's side: `companero extract`. Confines itself, reads the file from stdin, writes a
/// [`ChildAnswer`].
pub fn child_main(args: &ChildArgs) -> anyhow::Result<()> {
    let answer = if !args.probe.is_empty() {
        ChildAnswer::Probe(confine::run_probe(
            &args.probe,
            args.memory_bytes,
            args.cpu_seconds,
        ))
    } else {
        // Confinement first, before touching the untrusted bytes.
        confine::confine(args.memory_bytes, args.cpu_seconds)?;
        let limits: ExtractLimits = serde_json::from_str(&args.limits)?;
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        // Parser panics are answers too (damaged file), not crashes.
        std::panic::set_hook(Box::new(|_| {}));
        if args.kind == ZIP_KIND {
            let verdict = std::panic::catch_unwind(|| extract::zip_is_word(&bytes));
            ChildAnswer::Zip(verdict.unwrap_or(Ok(())))
        } else {
            let kind = DocumentKind::parse(&args.kind)
                .ok_or_else(|| anyhow::anyhow!("unknown kind {}", args.kind))?;
            match std::panic::catch_unwind(|| extract::extract(kind, &bytes, &limits)) {
                Ok(Ok(extracted)) => ChildAnswer::Ok(extracted),
                Ok(Err(error)) => ChildAnswer::Err(error),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "internal error".into());
                    ChildAnswer::Err(ExtractError::ReaderFailed(shorten(&message)))
                }
            }
        }
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &answer)?;
    stdout.flush()?;
    Ok(())
}

fn shorten(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or_default();
    first_line.chars().take(160).collect()
}
