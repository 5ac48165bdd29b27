//! Knowledge-base routes: upload and manage documents, and search them.

use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::AppState;
use super::auth::{AdminRole, Authenticated, Client, CoachRole};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use crate::auth::audit::{self, AuditEvent};
use crate::auth::new_id;
use crate::knowledge::documents::{
    self, CollectionView, DocumentPage, DocumentUpdate, DocumentView, ListQuery, NewDocument,
};
use crate::knowledge::search::{SearchRequest, SearchResults};
use crate::knowledge::sniff::{self, DocumentKind};
use crate::knowledge::{Knowledge, KnowledgeError};

pub fn routes() -> Routes {
    Routes::new()
        .route(
            "/api/v1/documents",
            // Uploads stream to disk under their own limit (max_upload_mb), not the JSON one.
            post(upload).layer(DefaultBodyLimit::disable()).get(list),
        )
        .route(
            "/api/v1/documents/{id}",
            get(get_document).patch(update).delete(delete),
        )
        .route("/api/v1/documents/{id}/original", get(original))
        .route("/api/v1/documents/{id}/reingest", post(reingest))
        .route("/api/v1/collections", get(collections))
        .route("/api/v1/search", post(search))
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    /// The document: PDF, Word (.docx), HTML, Markdown or plain text.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// [default: the title inside the document, else the file name]
    title: Option<String>,
    collection: Option<String>,
    /// Comma-separated.
    tags: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/documents",
    tag = "knowledge",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Stored and queued for ingestion; poll GET /api/v1/documents/{id}", body = DocumentView),
        (status = 413, description = "Larger than max_upload_mb", body = ErrorBody),
        (status = 415, description = "Not a PDF, Word, HTML, Markdown or text file", body = ErrorBody),
        (status = 400, description = "No `file` field", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<CoachRole>,
    mut multipart: Multipart,
) -> Result<(StatusCode, Json<DocumentView>), ApiError> {
    let knowledge = &state.knowledge;
    let mut received: Option<Received> = None;
    let mut title = None;
    let mut collection = None;
    let mut tags = Vec::new();
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("cannot read the upload: {e}"),
        )
    };
    while let Some(field) = multipart.next_field().await.map_err(bad_form)? {
        match field.name().unwrap_or_default() {
            "file" => {
                let filename = clean_filename(field.file_name().unwrap_or("document"));
                if let Some(previous) = received.take() {
                    previous.discard().await;
                }
                received = Some(receive(knowledge, field, filename).await?);
            }
            "title" => title = Some(field.text().await.map_err(bad_form)?),
            "collection" => collection = Some(field.text().await.map_err(bad_form)?),
            "tags" => {
                let text = field.text().await.map_err(bad_form)?;
                tags.extend(text.split(',').map(str::to_string));
            }
            _ => {}
        }
    }
    let received = received.ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            "send the document as multipart/form-data in a field named `file`",
        )
    })?;
    match accept(&state, &auth, received.clone(), title, collection, tags).await {
        Ok(document) => {
            state.knowledge.wake();
            let principal = auth.principal.clone();
            let (id, filename) = (document.id.clone(), document.filename.clone());
            state
                .db
                .call(move |c| {
                    audit::record(
                        c,
                        &AuditEvent::by(&principal, "document.uploaded", &context)
                            .target(&id)
                            .detail(serde_json::json!({ "filename": filename })),
                    )
                    .map_err(crate::db::DbError::from)
                })
                .await?;
            Ok((StatusCode::ACCEPTED, Json(document)))
        }
        Err(error) => {
            received.discard().await;
            Err(error)
        }
    }
}

/// An upload streamed to a temporary file.
#[derive(Clone)]
struct Received {
    path: std::path::PathBuf,
    filename: String,
    size: u64,
    sha256: String,
}

impl Received {
    async fn discard(&self) {
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

async fn receive(
    knowledge: &Knowledge,
    mut field: axum::extract::multipart::Field<'_>,
    filename: String,
) -> Result<Received, ApiError> {
    let max = knowledge.settings().max_upload_bytes;
    let dir = knowledge.upload_dir();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(KnowledgeError::from)?;
    let path = dir.join(new_id());
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(KnowledgeError::from)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let received = Received {
        path,
        filename,
        size: 0,
        sha256: String::new(),
    };
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                received.discard().await;
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("the upload was interrupted: {e}"),
                ));
            }
        };
        size += chunk.len() as u64;
        if size > max {
            drop(file);
            received.discard().await;
            return Err(KnowledgeError::TooLarge {
                max_mb: max / (1024 * 1024),
            }
            .into());
        }
        hasher.update(&chunk);
        if let Err(e) = file.write_all(&chunk).await {
            received.discard().await;
            return Err(KnowledgeError::from(e).into());
        }
    }
    if let Err(e) = file.sync_all().await {
        received.discard().await;
        return Err(KnowledgeError::from(e).into());
    }
    Ok(Received {
        size,
        sha256: hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        ..received
    })
}

/// Checks the type, moves the file into place and records the document with its job.
async fn accept(
    state: &AppState,
    auth: &Authenticated<CoachRole>,
    received: Received,
    title: Option<String>,
    collection: Option<String>,
    tags: Vec<String>,
) -> Result<DocumentView, ApiError> {
    let bytes = tokio::fs::read(&received.path)
        .await
        .map_err(KnowledgeError::from)?;
    let kind: DocumentKind = tokio::task::spawn_blocking(move || sniff::sniff(&bytes))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(KnowledgeError::Unsupported)?;
    let title = match title.as_deref().map(str::trim) {
        Some(title) if !title.is_empty() => documents::clean_title(title)?,
        _ => received.filename.clone(),
    };
    let collection = documents::clean_collection(collection.as_deref())?;
    let tags = documents::clean_tags(&tags)?;
    let scope = auth.scope().clone();
    let new = NewDocument {
        id: new_id(),
        title,
        filename: received.filename.clone(),
        kind,
        size_bytes: received.size,
        sha256: received.sha256.clone(),
        collection,
        tags,
    };
    let destination = state.knowledge.original_path(&scope, &new.id);
    if let Some(dir) = destination.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(KnowledgeError::from)?;
    }
    tokio::fs::rename(&received.path, &destination)
        .await
        .map_err(KnowledgeError::from)?;
    let created = state
        .db
        .call(move |c| documents::create(c, &scope, &new))
        .await;
    if created.is_err() {
        let _ = tokio::fs::remove_file(&destination).await;
    }
    Ok(created?)
}

/// The last path component, without control characters, at most 255 characters.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let clean = clean.trim().to_string();
    if clean.is_empty() || clean == "." || clean == ".." {
        "document".into()
    } else {
        clean
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/documents",
    tag = "knowledge",
    params(ListQuery),
    responses(
        (status = 200, description = "Newest first", body = DocumentPage),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    auth: Authenticated,
    Query(query): Query<ListQuery>,
) -> Result<Json<DocumentPage>, ApiError> {
    let scope = auth.scope().clone();
    Ok(Json(
        state
            .db
            .call(move |c| documents::list(c, &scope, &query))
            .await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/documents/{id}",
    tag = "knowledge",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 200, description = "The document with its ingestion status and progress", body = DocumentView),
        (status = 404, description = "No such document in this tenant", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn get_document(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<DocumentView>, ApiError> {
    let scope = auth.scope().clone();
    Ok(Json(
        state
            .db
            .call(move |c| documents::get(c, &scope, &id))
            .await?,
    ))
}

#[utoipa::path(
    patch,
    path = "/api/v1/documents/{id}",
    tag = "knowledge",
    request_body = DocumentUpdate,
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 200, description = "Renamed or reorganised", body = DocumentView),
        (status = 404, description = "No such document in this tenant", body = ErrorBody),
        (status = 422, description = "A title, collection or tag is empty or too long", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
    Json(change): Json<DocumentUpdate>,
) -> Result<Json<DocumentView>, ApiError> {
    let scope = auth.scope().clone();
    Ok(Json(
        state
            .db
            .call(move |c| documents::update(c, &scope, &id, &change))
            .await?,
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/documents/{id}",
    tag = "knowledge",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 204, description = "Deleted with its chunks, vectors and original file"),
        (status = 404, description = "No such document in this tenant", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Client(context): Client,
    auth: Authenticated<AdminRole>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.knowledge.delete(auth.scope(), &id).await?;
    let principal = auth.principal;
    state
        .db
        .call(move |c| {
            audit::record(
                c,
                &AuditEvent::by(&principal, "document.deleted", &context).target(&id),
            )
            .map_err(crate::db::DbError::from)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/documents/{id}/original",
    tag = "knowledge",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 200, description = "The uploaded file, byte for byte"),
        (status = 404, description = "No such document in this tenant", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn original(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let scope = auth.scope().clone();
    let document = {
        let (scope, id) = (scope.clone(), id.clone());
        state
            .db
            .call(move |c| documents::get(c, &scope, &id))
            .await?
    };
    let path = state.knowledge.original_path(&scope, &id);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found("the original file of this document is missing"))?;
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(document.kind.media_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&document.filename)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(document.size_bytes),
    );
    Ok(response)
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 5987 form.
fn content_disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[utoipa::path(
    post,
    path = "/api/v1/documents/{id}/reingest",
    tag = "knowledge",
    params(("id" = String, Path, description = "Document id")),
    responses(
        (status = 202, description = "Queued again", body = DocumentView),
        (status = 404, description = "No such document in this tenant", body = ErrorBody),
        (status = 409, description = "It is already queued or processing", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn reingest(
    State(state): State<AppState>,
    auth: Authenticated<CoachRole>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DocumentView>), ApiError> {
    let scope = auth.scope().clone();
    let document = state
        .db
        .call(move |c| documents::reingest(c, &scope, &id))
        .await?;
    state.knowledge.wake();
    Ok((StatusCode::ACCEPTED, Json(document)))
}

#[utoipa::path(
    get,
    path = "/api/v1/collections",
    tag = "knowledge",
    responses(
        (status = 200, description = "Collections in use, with their document counts", body = Vec<CollectionView>),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn collections(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<Vec<CollectionView>>, ApiError> {
    let scope = auth.scope().clone();
    Ok(Json(
        state
            .db
            .call(move |c| documents::collections(c, &scope))
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/search",
    tag = "knowledge",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Passages from ready documents, best first", body = SearchResults),
        (status = 422, description = "Empty query or bad limit", body = ErrorBody),
        (status = 503, description = "`mode: vector` without an embedder", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn search(
    State(state): State<AppState>,
    auth: Authenticated,
    Json(request): Json<SearchRequest>,
) -> Result<Json<SearchResults>, ApiError> {
    Ok(Json(state.knowledge.search(auth.scope(), request).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_reduced_to_a_safe_base_name() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\me\\Guide.pdf"), "Guide.pdf");
        assert_eq!(clean_filename(".."), "document");
        assert_eq!(
            content_disposition("Guía \"1\".pdf"),
            "attachment; filename=\"Gu_a _1_.pdf\"; filename*=UTF-8''Gu%C3%ADa%20%221%22.pdf"
        );
    }
}
