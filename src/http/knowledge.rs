//! Knowledge-base routes: upload and manage documents, and search them.

use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::AppState;
use super::auth::{AdminRole, Authenticated, Client, CoachRole};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::route_table::Routes;
use super::uploads::{self, Received};
use crate::auth::audit::{self, AuditEvent};
use crate::auth::new_id;
use crate::knowledge::KnowledgeError;
use crate::knowledge::documents::{
    self, CollectionView, DocumentPage, DocumentUpdate, DocumentView, ListQuery, NewDocument,
};
use crate::knowledge::quota;
use crate::knowledge::search::{SearchRequest, SearchResults};
use crate::knowledge::sniff::{self, DocumentKind};

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
        (status = 413, description = "Larger than max_upload_mb (`payload_too_large`), or over the tenant's storage quota (`quota_exceeded`)", body = ErrorBody),
        (status = 422, description = "A title, collection or tags field is too long", body = ErrorBody),
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
    let storage = {
        let (scope, default) = (
            auth.scope().clone(),
            knowledge.settings().storage_quota_bytes,
        );
        state
            .db
            .call(move |c| quota::of(c, &scope, default))
            .await?
    };
    let mut received: Option<Received> = None;
    let mut title = None;
    let mut collection = None;
    let mut tags = String::new();
    while let Some(field) = multipart.next_field().await.map_err(uploads::bad_form)? {
        match field.name().unwrap_or_default() {
            "file" => {
                let filename = uploads::clean_filename(field.file_name().unwrap_or("document"));
                // A second file replaces the first, whose temporary file goes with it.
                drop(received.take());
                received = Some(uploads::receive(knowledge, field, filename, &storage).await?);
            }
            "title" => title = Some(uploads::read_text(field, uploads::MAX_TITLE_BYTES).await?),
            "collection" => {
                collection = Some(uploads::read_text(field, uploads::MAX_COLLECTION_BYTES).await?)
            }
            "tags" => {
                let text = uploads::read_text(field, uploads::MAX_TAGS_BYTES).await?;
                if tags.len() + text.len() >= uploads::MAX_TAGS_BYTES {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "the `tags` fields are longer than {} bytes together",
                            uploads::MAX_TAGS_BYTES
                        ),
                    ));
                }
                tags.push(',');
                tags.push_str(&text);
            }
            _ => uploads::drain(field).await?,
        }
    }
    let received = received.ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            "send the document as multipart/form-data in a field named `file`",
        )
    })?;
    let tags = tags.split(',').map(str::to_string).collect::<Vec<_>>();
    let document = accept(&state, &auth, received, title, collection, tags).await?;
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

/// Checks the type, moves the file into place and records the document with its job. On any
/// error the temporary file is removed (by `Received`'s guard).
async fn accept(
    state: &AppState,
    auth: &Authenticated<CoachRole>,
    received: Received,
    title: Option<String>,
    collection: Option<String>,
    tags: Vec<String>,
) -> Result<DocumentView, ApiError> {
    let bytes = tokio::fs::read(received.file.path())
        .await
        .map_err(KnowledgeError::from)?;
    let (kind, bytes) = tokio::task::spawn_blocking(move || (sniff::sniff(&bytes), bytes))
        .await
        .map_err(|_| ApiError::internal())?;
    let kind: DocumentKind = kind.map_err(KnowledgeError::Unsupported)?;
    if sniff::is_zip(&bytes) {
        // Which kind of archive it is takes parsing it, which only the sandbox does.
        state
            .knowledge
            .settings()
            .sandbox
            .check_zip(bytes)
            .await
            .map_err(KnowledgeError::Unsupported)?;
    }
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
    received
        .file
        .persist(&destination)
        .await
        .map_err(KnowledgeError::from)?;
    let default_quota = state.knowledge.settings().storage_quota_bytes;
    let created = state
        .db
        .call(move |c| documents::create(c, &scope, &new, default_quota))
        .await;
    if created.is_err() {
        let _ = tokio::fs::remove_file(&destination).await;
    }
    Ok(created?)
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
            // A read: the list never waits behind ingestion's writes.
            .read(move |c| documents::list(c, &scope, &query))
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
            .read(move |c| documents::get(c, &scope, &id))
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
            .read(move |c| documents::get(c, &scope, &id))
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
    fn downloads_name_the_file_safely() {
        assert_eq!(
            content_disposition("Guía \"1\".pdf"),
            "attachment; filename=\"Gu_a _1_.pdf\"; filename*=UTF-8''Gu%C3%ADa%20%221%22.pdf"
        );
    }
}
