//! Long-lived responses and server shutdown.
//!
//! A graceful shutdown waits for open connections, and a Server-Sent Events stream would keep
//! its connection open forever. Streams built here end when the server shuts down, with a last
//! `shutdown` event that tells the client to reconnect later rather than treat it as an error.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt, stream};
use tokio_util::sync::CancellationToken;

/// The event a stream sends when the server is shutting down.
pub fn shutdown_event() -> Event {
    Event::default()
        .event("shutdown")
        .data(r#"{"reason":"server_shutting_down"}"#)
}

/// Wraps `events` as an SSE response that ends with a `shutdown` event when `shutdown` fires.
pub fn sse_until_shutdown<S>(
    events: S,
    shutdown: CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static>
where
    S: Stream<Item = Event> + Send + 'static,
{
    let body = events.take_until(shutdown.clone().cancelled_owned());
    // Evaluated only once `body` has ended: a stream that simply finished gets no farewell.
    let farewell = stream::once(async move { shutdown.is_cancelled().then(shutdown_event) })
        .filter_map(|event| async move { event });
    Sse::new(body.chain(farewell).map(Ok)).keep_alive(KeepAlive::default())
}
