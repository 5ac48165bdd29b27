//! Reading multipart uploads without trusting their size: the file streams to
//! `originals/.incoming/` under the upload limit and the tenant's storage quota, text fields are
//! read up to a small bound, unknown fields are drained without being kept, and a temporary
//! file never outlives the request that wrote it.

use std::path::{Path, PathBuf};

use axum::extract::multipart::Field;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::{ApiError, ErrorCode};
use crate::auth::new_id;
use crate::knowledge::quota::StorageUse;
use crate::knowledge::{Knowledge, KnowledgeError};

/// Bounds of the text fields (bytes): a title or collection is a line, tags a short list.
pub const MAX_TITLE_BYTES: usize = 1024;
pub const MAX_COLLECTION_BYTES: usize = 1024;
/// For all `tags` fields of one upload together.
pub const MAX_TAGS_BYTES: usize = 4096;

/// A file in `originals/.incoming/`. Dropping it removes the file unless it was moved into
/// place, so an upload whose client disconnects or whose request times out (axum drops the
/// handler's future) leaves nothing behind.
pub struct IncomingFile {
    path: PathBuf,
    kept: bool,
}

impl IncomingFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to `destination`; from then on it is no longer temporary.
    pub async fn persist(mut self, destination: &Path) -> std::io::Result<()> {
        tokio::fs::rename(&self.path, destination).await?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for IncomingFile {
    fn drop(&mut self) {
        if !self.kept {
            // Drop cannot await; one unlink is quick enough to do in place.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An upload streamed to a temporary file.
pub struct Received {
    pub file: IncomingFile,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// Streams the `file` field to disk, hashing it; stops at `max_upload_bytes` or as soon as the
/// tenant's quota (`storage`, as it was when the upload began) would be exceeded.
pub async fn receive(
    knowledge: &Knowledge,
    mut field: Field<'_>,
    filename: String,
    storage: &StorageUse,
) -> Result<Received, ApiError> {
    let max = knowledge.settings().max_upload_bytes;
    let dir = knowledge.upload_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(KnowledgeError::from)?;
    let incoming = IncomingFile {
        path: dir.join(new_id()),
        kept: false,
    };
    let mut file = tokio::fs::File::create(incoming.path())
        .await
        .map_err(KnowledgeError::from)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the upload was interrupted: {e}"),
        )
    })? {
        size += chunk.len() as u64;
        if size > max {
            return Err(KnowledgeError::TooLarge {
                max_mb: max / (1024 * 1024),
            }
            .into());
        }
        storage.admit(size)?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(KnowledgeError::from)?;
    }
    file.sync_all().await.map_err(KnowledgeError::from)?;
    Ok(Received {
        file: incoming,
        filename,
        size,
        sha256: hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// A text field of at most `max` bytes (lossy UTF-8); longer is refused before more is read.
pub async fn read_text(mut field: Field<'_>, max: usize) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
        if bytes.len() + chunk.len() > max {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the `{name}` field is longer than {max} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads a field we do not use to its end, keeping nothing.
pub async fn drain(mut field: Field<'_>) -> Result<(), ApiError> {
    while field.chunk().await.map_err(bad_form)?.is_some() {}
    Ok(())
}

pub fn bad_form(e: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::new(
        ErrorCode::BadRequest,
        format!("cannot read the upload: {e}"),
    )
}

/// The last path component, without control characters, at most 255 characters.
pub fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let clean = clean.trim().to_string();
    if clean.is_empty() || clean == "." || clean == ".." {
        "document".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_reduced_to_a_safe_base_name() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\me\\Guide.pdf"), "Guide.pdf");
        assert_eq!(clean_filename(".."), "document");
    }

    #[test]
    fn an_incoming_file_is_removed_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        std::fs::write(&path, b"partial").unwrap();
        drop(IncomingFile {
            path: path.clone(),
            kept: false,
        });
        assert!(!path.exists());
    }
}
