//! Runs document parsers in a child process, so that a crash, a runaway loop or a memory
//! explosion in one hostile file costs that file and nothing else.
//!
//! The parent spawns `companero extract --kind K --limits JSON`, writes the file to its stdin and
//! reads one JSON [`ChildAnswer`] from its stdout. The child caps its own address space and CPU
//! time with `setrlimit`; the parent kills it at the wall-clock deadline.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
}

#[derive(Debug, Serialize, Deserialize)]
enum ChildAnswer {
    Ok(Extracted),
    Err(ExtractError),
}

impl Sandbox {
    /// Extracts `bytes` in a child process.
    pub async fn extract(
        &self,
        kind: DocumentKind,
        bytes: Vec<u8>,
    ) -> Result<Extracted, ExtractError> {
        let limits = serde_json::to_string(&self.limits).expect("limits serialise");
        let mut child = tokio::process::Command::new(&self.executable)
            .arg("extract")
            .arg("--kind")
            .arg(kind.as_str())
            .arg("--limits")
            .arg(limits)
            .arg("--memory-bytes")
            .arg(self.memory_bytes.to_string())
            .arg("--cpu-seconds")
            .arg((self.timeout.as_secs() + 1).to_string())
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
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let run = async move {
            let feed = async move {
                // The child may die before reading everything; that shows in its status.
                let _ = stdin.write_all(&bytes).await;
                drop(stdin);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (_, _, _, status) = tokio::join!(
                feed,
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err),
                child.wait()
            );
            (out, err, status)
        };
        let (out, err, status) =
            tokio::time::timeout(self.timeout, run)
                .await
                .map_err(|_| ExtractError::TimedOut {
                    seconds: self.timeout.as_secs(),
                })?;
        if let Ok(answer) = serde_json::from_slice::<ChildAnswer>(&out) {
            return match answer {
                ChildAnswer::Ok(extracted) => Ok(extracted),
                ChildAnswer::Err(error) => Err(error),
            };
        }
        let stderr = String::from_utf8_lossy(&err);
        tracing::warn!(status = ?status, stderr = %stderr.trim(), "document reader failed");
        Err(describe_failure(status.ok(), &stderr))
    }
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

/// The child's side: `companero extract`. Reads the file from stdin, writes a [`ChildAnswer`].
pub fn child_main(
    kind: &str,
    limits: &str,
    memory_bytes: u64,
    cpu_seconds: u64,
) -> anyhow::Result<()> {
    // Limits first, before touching the untrusted bytes.
    rlimit::setrlimit(rlimit::Resource::AS, memory_bytes, memory_bytes)?;
    rlimit::setrlimit(rlimit::Resource::CPU, cpu_seconds, cpu_seconds + 1)?;
    let kind = DocumentKind::parse(kind).ok_or_else(|| anyhow::anyhow!("unknown kind {kind}"))?;
    let limits: ExtractLimits = serde_json::from_str(limits)?;
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    // Parser panics are answers too (damaged file), not crashes.
    std::panic::set_hook(Box::new(|_| {}));
    let answer = match std::panic::catch_unwind(|| extract::extract(kind, &bytes, &limits)) {
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
