//! The HTTP API (`/v1`, JSON). Devices authenticate with the bearer
//! credential issued at enrollment. Every refused request gets a JSON error
//! body; refused pushes are kept for audit.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fieldreport_core::sync::wire::*;
use fieldreport_core::{Change, Role};
use futures_util::stream::Stream;
use serde::Deserialize;
use uuid::Uuid;

use crate::audit::AuditActor;
use crate::error::{Result, StationError};
use crate::events::unit_event_stream;
use crate::state::AppState;
use crate::storage::{parse_reports, AuditEntry, Enrolled};

/// Changes per push request.
pub const MAX_PUSH_CHANGES: usize = 1000;
/// Bytes per push request body.
pub const MAX_PUSH_BYTES: usize = 32 << 20;
/// Bytes per media chunk.
pub const MAX_CHUNK_BYTES: usize = 8 << 20;
pub const MAX_PULL_LIMIT: u32 = 1000;
/// A device clock further than this from the station's is flagged on the
/// reports it pushes (never refused: the hybrid logical clock keeps order).
pub const CLOCK_SKEW_TOLERANCE_MS: i64 = 2 * 60 * 1000;

pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/enroll", post(enroll))
        .route("/v1/devices", get(devices))
        .route(
            "/v1/changes",
            post(push)
                .get(pull)
                .layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)),
        )
        .route("/v1/reports/{id}/changes", get(report_changes))
        .route("/v1/reports/{id}", get(report))
        .route("/v1/reports/{id}/export", get(export))
        .route("/v1/reports/{id}/receipts", get(receipts))
        .route("/v1/media/{sha}/status", get(media_status))
        .route(
            "/v1/media/{sha}",
            put(media_put)
                .get(media_get)
                .layer(DefaultBodyLimit::max(MAX_CHUNK_BYTES)),
        )
        .route("/v1/events", get(events))
        .route("/v1/reviews", get(reviews))
        .route("/public", get(public_page))
        .route("/public/counts.csv", get(public_csv))
        .route("/public/public.css", get(public_css))
        .merge(crate::dashboard::routes(state.clone()))
        // Matched routes name themselves to the audit entry; the audit
        // layer wraps everything, unknown paths (the fallback) included.
        .route_layer(axum::middleware::from_fn(crate::audit::note_route))
        .fallback(|| async { StationError::NotFound })
        .layer(axum::middleware::from_fn(
            crate::dashboard::security_headers,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::audit::audit_layer,
        ))
        .with_state(state)
}

/// The authenticated device of a request.
pub struct Device(pub Enrolled);

impl FromRequestParts<AppState> for Device {
    type Rejection = StationError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let audit = parts
            .extensions
            .get::<AuditActor>()
            .cloned()
            .unwrap_or_default();
        let Some(token) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            audit.note("no credential");
            return Err(StationError::Unauthorized);
        };
        let Some(d) = state.storage.authenticate(token.trim()).await? else {
            audit.note("unknown credential");
            return Err(StationError::Unauthorized);
        };
        audit.set(d.record.device_id.to_string());
        if d.revoked {
            audit.note("device revoked");
            return Err(StationError::Unauthorized);
        }
        let now = state.clock.now_ms();
        if d.credential_expires_at.is_some_and(|t| t <= now) {
            audit.note("credential expired");
            return Err(StationError::Unauthorized);
        }
        Ok(Device(d))
    }
}

/// The lifecycle steps a batch carries: (report, target state).
fn lifecycle_steps(changes: &[Change]) -> Vec<(Uuid, String)> {
    use fieldreport_core::crdt::{Action, Target};
    let mut out = Vec::new();
    for c in changes {
        for op in &c.body().ops {
            if let (Target::Field(p), Action::Set(fieldreport_core::Value::Text(to))) =
                (&op.target, &op.action)
            {
                if p == fieldreport_core::model::schema::LIFECYCLE_FIELD {
                    out.push((c.report(), to.clone()));
                }
            }
        }
    }
    out
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Parses a JSON body ourselves, so malformed JSON gets our error body.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        StationError::BadRequest(
            "malformed_json",
            format!("request body: {}", e.classify_name()),
        )
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

async fn enroll(
    State(s): State<AppState>,
    axum::Extension(actor): axum::Extension<AuditActor>,
    body: Bytes,
) -> Result<Json<EnrollResponse>> {
    let req: EnrollRequest = parse(&body)?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(&req.public_key, &mut key).map_err(|_| {
        StationError::BadRequest("bad_key", "public_key must be 64 hex characters".into())
    })?;
    let (device, credential) = s.storage.enroll(&req.code, req.device_id, key).await?;
    actor.set(device.device_id.to_string());
    tracing::info!(device = %device.device_id, role = %device.person.role, "device enrolled");
    Ok(Json(EnrollResponse {
        credential,
        device,
        station_id: s.station_id.clone(),
        credential_expires_at_ms: Some(s.clock.now_ms() + crate::storage::CREDENTIAL_LIFETIME_MS),
    }))
}

async fn devices(State(s): State<AppState>, Device(d): Device) -> Result<Json<DevicesResponse>> {
    Ok(Json(DevicesResponse {
        devices: s.storage.directory(&d).await?,
    }))
}

async fn push(
    State(s): State<AppState>,
    axum::Extension(actor): axum::Extension<AuditActor>,
    Device(d): Device,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<PushResponse>> {
    let device = d.record.device_id;
    let result = async {
        let req: PushRequest = parse(&body)?;
        if req.changes.len() > MAX_PUSH_CHANGES {
            return Err(StationError::TooLarge(format!(
                "at most {MAX_PUSH_CHANGES} changes per push"
            )));
        }
        let changes = req
            .changes
            .iter()
            .map(WireChange::to_change)
            .collect::<std::result::Result<Vec<Change>, _>>()?;
        let reports: std::collections::BTreeSet<Uuid> =
            changes.iter().map(|c| c.report()).collect();
        let transitions = lifecycle_steps(&changes);
        let ahead = clocks_ahead(&changes, s.clock.now_ms());
        let outcome = s.storage.push(changes).await?;
        // Each lifecycle step pushed gets its own audit entry.
        for (report, to) in transitions {
            s.storage
                .audit(AuditEntry {
                    id: 0,
                    at_ms: s.clock.now_ms(),
                    actor: device.to_string(),
                    action: format!("lifecycle {to}"),
                    target: format!("/v1/reports/{report}"),
                    outcome: "ok".into(),
                })
                .await?;
        }
        // Receipt time is the station's; a skewed device clock is flagged,
        // from what the device says its clock reads (the header) and, for
        // each author, from what its signed changes say (which a header
        // cannot talk away).
        let device_time = headers
            .get(DEVICE_TIME_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(t) = device_time {
            let skew = t.saturating_sub(s.clock.now_ms());
            let unproven: Vec<Uuid> = reports
                .into_iter()
                .filter(|r| !ahead.contains_key(&(device, *r)))
                .collect();
            // unsigned_abs: a header of i64::MIN must not overflow.
            if skew.unsigned_abs() > CLOCK_SKEW_TOLERANCE_MS.unsigned_abs() && !unproven.is_empty() {
                tracing::warn!(%device, skew_ms = skew, "device clock skewed");
                s.storage.record_clock_skew(device, unproven, skew).await?;
            }
        }
        for ((author, report), skew) in ahead {
            tracing::warn!(device = %author, %report, skew_ms = skew, "change clock ahead of the station's");
            s.storage
                .record_clock_skew(author, vec![report], skew)
                .await?;
        }
        Ok(outcome)
    }
    .await;
    match result {
        Ok(outcome) => {
            tracing::info!(%device, applied = outcome.applied, duplicates = outcome.duplicates, "push");
            if s.local_events {
                for ev in outcome.events {
                    let _ = s.events.send(ev);
                }
            }
            Ok(Json(PushResponse {
                applied: outcome.applied,
                duplicates: outcome.duplicates,
            }))
        }
        Err(e) => {
            if let StationError::DeviceRevoked {
                device: revoked, ..
            } = &e
            {
                // Which revoked key was used, and by whom it came.
                actor.note(REVOKED_NOTE);
                s.storage
                    .audit(AuditEntry {
                        id: 0,
                        at_ms: s.clock.now_ms(),
                        actor: device.to_string(),
                        action: "push refused".into(),
                        target: format!("device {revoked}"),
                        outcome: format!("refused: {REVOKED_NOTE}"),
                    })
                    .await?;
            }
            if e.is_client_error() {
                let code = e.status_and_code().1;
                tracing::warn!(%device, code, "push refused");
                s.storage
                    .record_rejection(Some(device), code, &body)
                    .await?;
            }
            Err(e)
        }
    }
}

/// The audit log's phrase for a push refused because a change in it is
/// signed by a revoked device.
pub const REVOKED_NOTE: &str = "change signed by a revoked device";

/// Per (author device, report): how far ahead of the station's clock
/// (`now_ms`) the pushed changes show their author's clock, where they show
/// it beyond doubt: a change's own wall clock reading later than its
/// receipt by more than the tolerance, or its hybrid logical clock beyond
/// the bound no honest device follows (`MAX_CLOCK_AHEAD_MS`). The larger
/// offset of the two, the largest over the author's changes of the report.
pub fn clocks_ahead(
    changes: &[Change],
    now_ms: i64,
) -> std::collections::BTreeMap<(Uuid, Uuid), i64> {
    let mut out = std::collections::BTreeMap::new();
    for c in changes {
        let b = c.body();
        let by_wall = b.wall_clock_ms.saturating_sub(now_ms);
        let hlc_ms = i64::try_from(b.hlc.wall_ms).unwrap_or(i64::MAX);
        let by_hlc = hlc_ms.saturating_sub(now_ms);
        let mut found = None;
        if by_wall > CLOCK_SKEW_TOLERANCE_MS {
            found = Some(by_wall);
        }
        if b.hlc.beyond_bound(now_ms.max(0) as u64) {
            found = Some(found.map_or(by_hlc, |f: i64| f.max(by_hlc)));
        }
        if let Some(f) = found {
            let slot = out.entry((c.device(), c.report())).or_insert(f);
            *slot = (*slot).max(f);
        }
    }
    out
}

#[derive(Deserialize)]
struct PullQuery {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

async fn pull(
    State(s): State<AppState>,
    Device(d): Device,
    q: std::result::Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PullResponse>> {
    let Query(q) = q.map_err(|_| {
        StationError::BadRequest("bad_query", "after and limit must be integers".into())
    })?;
    let limit = q.limit.unwrap_or(500).clamp(1, MAX_PULL_LIMIT);
    let page = s.storage.pull(&d, q.after.max(0), limit).await?;
    Ok(Json(PullResponse {
        changes: page.changes.iter().map(WireChange::from_change).collect(),
        next: page.next,
        more: page.more,
    }))
}

fn report_id(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id)
        .map_err(|_| StationError::BadRequest("bad_id", "report id must be a UUID".into()))
}

async fn report_changes(
    State(s): State<AppState>,
    Device(d): Device,
    Path(id): Path<String>,
) -> Result<Json<ReportChangesResponse>> {
    let changes = s.storage.report_changes(&d, report_id(&id)?).await?;
    Ok(Json(ReportChangesResponse {
        changes: changes.iter().map(WireChange::from_change).collect(),
    }))
}

async fn report(
    State(s): State<AppState>,
    Device(d): Device,
    Path(id): Path<String>,
) -> Result<Response> {
    let json = s.storage.report_json(&d, report_id(&id)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

async fn receipts(
    State(s): State<AppState>,
    Device(d): Device,
    Path(id): Path<String>,
) -> Result<Json<ReceiptsResponse>> {
    Ok(Json(s.storage.receipts(&d, report_id(&id)?).await?))
}

/// The unit's 30-day internal reviews: due, overdue, done (supervisors).
async fn reviews(
    State(s): State<AppState>,
    Device(d): Device,
) -> Result<Json<Vec<crate::oversight::ReviewItem>>> {
    if d.role() != Role::Supervisor {
        return Err(StationError::Forbidden("reviews are for supervisors"));
    }
    let reports = parse_reports(s.storage.visible_reports(&d).await?)?;
    Ok(Json(crate::oversight::reviews(&reports, s.clock.now())))
}

async fn public_counts(s: &AppState) -> Result<crate::oversight::Counts> {
    let reports = parse_reports(s.storage.all_reports().await?)?;
    Ok(crate::oversight::public_counts(&reports))
}

/// The public record: counts only, small ones suppressed. No sign-in.
async fn public_page(State(s): State<AppState>) -> Result<Response> {
    let html = crate::oversight::counts_html(&public_counts(&s).await?)?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

async fn public_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        crate::oversight::PUBLIC_CSS,
    )
        .into_response()
}

async fn public_csv(State(s): State<AppState>) -> Result<Response> {
    let csv = crate::oversight::counts_csv(&public_counts(&s).await?);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"fieldreport-public-counts.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

/// The evidence package of one report, as a tar archive of the bag.
async fn export(
    State(s): State<AppState>,
    Device(d): Device,
    Path(id): Path<String>,
) -> Result<Response> {
    let report = report_id(&id)?;
    if d.role() != Role::Supervisor {
        return Err(StationError::Forbidden(
            "evidence packages are for supervisors",
        ));
    }
    let path = crate::export::export_tar(&s.storage, &d, report, &s.station_id).await?;
    let file = tokio::fs::File::open(&path).await?;
    let len = file.metadata().await?.len();
    // The open handle keeps the bytes readable; nothing else needs the file.
    let _ = tokio::fs::remove_file(&path).await;
    tracing::info!(%report, device = %d.record.device_id, bytes = len, "evidence package exported");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"fieldreport-{report}.tar\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

async fn media_status(
    State(s): State<AppState>,
    _d: Device,
    Path(sha): Path<String>,
) -> Result<Json<MediaStatus>> {
    Ok(Json(s.storage.media_status(&sha).await?))
}

#[derive(Deserialize)]
struct ChunkQuery {
    offset: u64,
    total: u64,
}

async fn media_put(
    State(s): State<AppState>,
    _d: Device,
    Path(sha): Path<String>,
    q: std::result::Result<Query<ChunkQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<MediaStatus>> {
    let Query(q) = q.map_err(|_| {
        StationError::BadRequest("bad_query", "offset and total are required integers".into())
    })?;
    Ok(Json(
        s.storage
            .media_append(&sha, q.offset, q.total, &body)
            .await?,
    ))
}

async fn media_get(
    State(s): State<AppState>,
    Device(d): Device,
    Path(sha): Path<String>,
) -> Result<Response> {
    let path = s.storage.media_path(&d, &sha).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| StationError::NotFound)?;
    let len = file.metadata().await?.len();
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn events(
    State(s): State<AppState>,
    Device(d): Device,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    if d.role() != Role::Supervisor {
        return Err(StationError::Forbidden(
            "the event stream is for supervisors",
        ));
    }
    Ok(unit_event_stream(
        &s,
        d.unit().to_string(),
        Default::default(),
    ))
}
