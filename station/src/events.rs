//! The live event fan-out to supervisors: one unit's report events as
//! Server-Sent Events, for supervisors' devices (`/v1/events`) and the
//! dashboard (`/dashboard/events`).

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::state::AppState;

/// One unit's report events as Server-Sent Events (supervisors' devices and
/// the dashboard), ending when the station stops or `ended` is cancelled
/// (a dashboard session ending).
pub fn unit_event_stream(
    s: &AppState,
    unit: String,
    ended: tokio_util::sync::CancellationToken,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    let rx = s.events.subscribe();
    let shutdown = s.shutdown.clone();
    let stop = async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = ended.cancelled() => {}
        }
    };
    let stream =
        futures_util::StreamExt::take_until(BroadcastStream::new(rx), stop).filter_map(move |ev| {
            match ev {
                Ok((u, ev)) if u == unit => serde_json::to_string(&ev)
                    .ok()
                    .map(|data| Ok(Event::default().event("report").data(data))),
                // A lagging listener lost events: tell it to pull.
                Err(_) => Some(Ok(Event::default().event("lagged").data("{}"))),
                _ => None,
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
