//! Pages rendered by the server: the coach's chat page at `/c/{slug}`, installable as an app
//! (its web app manifest; `web/chat-sw.js` keeps it opening without a network).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::route_table::Routes;
use crate::chat::ChatError;
use crate::chat::coach;

pub fn routes() -> Routes {
    Routes::new()
        .route("/c/{slug}", get(chat_page))
        .route("/c/{slug}/manifest.webmanifest", get(manifest))
        .route("/c/{slug}/icon.svg", get(icon))
}

/// Up to two initials of the coach's name.
fn initials(name: &str) -> String {
    let letters: String = name
        .split_whitespace()
        .filter_map(|word| word.chars().find(|c| c.is_alphanumeric()))
        .take(2)
        .flat_map(char::to_uppercase)
        .collect();
    if letters.is_empty() {
        "C".into()
    } else {
        letters
    }
}

/// The app's icon: the coach's initials on its brand colour (an avatar on another host cannot
/// be an installed app's icon reliably, so the manifest lists it second).
async fn icon(State(state): State<AppState>, Path(slug): Path<String>) -> Response {
    let lookup = slug.clone();
    let coach = match state.db.call(move |c| coach::by_slug(c, &lookup)).await {
        Ok((_, coach)) => coach,
        Err(ChatError::NotFound(_)) => return not_found(),
        Err(error) => {
            tracing::error!(%error, "chat page icon");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 512 512\">\
         <rect width=\"512\" height=\"512\" rx=\"96\" fill=\"{color}\"/>\
         <text x=\"256\" y=\"256\" dy=\".35em\" text-anchor=\"middle\" font-family=\"system-ui,sans-serif\" \
         font-size=\"220\" font-weight=\"700\" fill=\"#fff\">{letters}</text></svg>",
        color = escape(&coach.brand_color),
        letters = escape(&initials(&coach.name)),
    );
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        svg,
    )
        .into_response()
}

/// The chat page as an installable app: its name, colour and start address.
async fn manifest(State(state): State<AppState>, Path(slug): Path<String>) -> Response {
    let lookup = slug.clone();
    let coach = match state.db.call(move |c| coach::by_slug(c, &lookup)).await {
        Ok((_, coach)) => coach,
        Err(ChatError::NotFound(_)) => return not_found(),
        Err(error) => {
            tracing::error!(%error, "chat page manifest");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let start = format!("/c/{}", coach.slug);
    let mut icons = vec![
        serde_json::json!({"src": format!("{start}/icon.svg"), "sizes": "any",
        "type": "image/svg+xml", "purpose": "any maskable"}),
    ];
    if coach.avatar_url.starts_with("https://") {
        icons.push(serde_json::json!({"src": coach.avatar_url, "sizes": "any", "purpose": "any"}));
    }
    let short: String = coach.name.chars().take(12).collect();
    let manifest = serde_json::json!({
        "id": start,
        "name": coach.name,
        "short_name": short,
        "description": format!("Chat with {}", coach.name),
        "start_url": start,
        "scope": start,
        "display": "standalone",
        "background_color": "#f8fafc",
        "theme_color": coach.brand_color,
        "icons": icons,
    });
    (
        [
            (header::CONTENT_TYPE, "application/manifest+json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        manifest.to_string(),
    )
        .into_response()
}

/// The chat page: a shell named after the coach that runs the same script as the widget, full
/// window. Avatars may live on any https host, so images are allowed from there.
async fn chat_page(State(state): State<AppState>, Path(slug): Path<String>) -> Response {
    let lookup = slug.clone();
    let found = state.db.call(move |c| coach::by_slug(c, &lookup)).await;
    let coach = match found {
        Ok((_, coach)) => coach,
        Err(ChatError::NotFound(_)) => return not_found(),
        Err(error) => {
            tracing::error!(%error, "chat page");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let name = escape(&coach.name);
    let page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1, viewport-fit=cover\">\n\
         <title>{name}</title>\n<meta name=\"description\" content=\"Chat with {name}\">\n\
         <meta name=\"theme-color\" content=\"{color}\">\n\
         <link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\">\n\
         <link rel=\"manifest\" href=\"/c/{slug}/manifest.webmanifest\">\n\
         <style>html,body{{margin:0;height:100%;background:#f8fafc}}</style>\n</head>\n<body>\n\
         <noscript>This chat needs JavaScript.</noscript>\n\
         <script src=\"/widget.js\" data-coach=\"{slug}\" data-mode=\"page\" defer></script>\n\
         </body>\n</html>\n",
        color = escape(&coach.brand_color),
        slug = escape(&coach.slug),
    );
    let mut response = Html(page).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: https:; connect-src 'self'; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'self'",
        ),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn not_found() -> Response {
    let page = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\">\
        <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
        <title>No coach here · Compañero</title>\
        <body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem\">\
        <h1>No coach here</h1><p>This chat address does not exist (any more). Check the link you \
        were given.</p></body></html>";
    (StatusCode::NOT_FOUND, Html(page)).into_response()
}

/// Text for HTML content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn icons_carry_the_initials() {
        assert_eq!(super::initials("Ana López"), "AL");
        assert_eq!(super::initials("coach ada lovelace"), "CA");
        assert_eq!(super::initials("  "), "C");
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            super::escape("<b>\"Ana\" & 'co'</b>"),
            "&lt;b&gt;&quot;Ana&quot; &amp; &#39;co&#39;&lt;/b&gt;"
        );
    }
}
