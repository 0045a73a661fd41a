//! The HTTP API (`/v1`, JSON). Devices authenticate with the bearer
//! credential issued at enrollment. Every refused request gets a JSON error
//! body; refused pushes are kept for audit.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use fieldreport_core::sync::wire::*;
use fieldreport_core::{Change, Role};
use futures_util::stream::Stream;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
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

/// The API's routes with their OpenAPI operations (`utoipa`): each
/// handler's `#[utoipa::path]` sits beside its code, so the description
/// served at `/v1/openapi.json` is made from the same types and cannot
/// name a route the router lacks.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi))
        .routes(routes!(enroll))
        .routes(routes!(devices))
        .routes(routes!(push, pull).layer(DefaultBodyLimit::max(MAX_PUSH_BYTES)))
        .routes(routes!(report_changes))
        .routes(routes!(report))
        .routes(routes!(export))
        .routes(routes!(receipts))
        .routes(routes!(media_status))
        .routes(routes!(media_put, media_get).layer(DefaultBodyLimit::max(MAX_CHUNK_BYTES)))
        .routes(routes!(events))
        .routes(routes!(reviews))
        .routes(routes!(public_page))
        .routes(routes!(public_csv))
        .routes(routes!(public_css))
        .routes(routes!(log_checkpoint))
        .routes(routes!(log_attested))
        .routes(routes!(log_timestamp))
        .routes(routes!(log_key))
        .routes(routes!(log_consistency))
        .routes(routes!(log_inclusion))
        .routes(routes!(log_restores))
        .routes(routes!(log_alarm).layer(DefaultBodyLimit::max(MAX_ALARM_BYTES)))
}

/// The OpenAPI 3.1 description of the API, as served.
pub fn openapi_json() -> &'static str {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let mut api = api_routes().into_openapi();
        // After the routes: a modifier of `ApiDoc` runs before they exist.
        ServerErrors.modify(&mut api);
        api.to_pretty_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI description does not serialise");
            "{}".into()
        })
    });
    DOC.as_str()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FieldReport station API",
        version = "1",
        description = "Devices enroll with a one-time code, then authenticate with `Authorization: Bearer <credential>`. Changes travel as canonical bytes + Ed25519 signature (base64). Every error response has a JSON body {error, message}."
    ),
    modifiers(&DeviceAuth),
    security(("device" = []))
)]
struct ApiDoc;

/// The bearer credential a device gets at enrollment.
struct DeviceAuth;

impl Modify for DeviceAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "device",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What any operation may answer besides its own statuses: an internal
/// error (500), and the database out of reach for now (503, retry).
struct ServerErrors;

impl Modify for ServerErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in api.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                responses
                    .entry("500".into())
                    .or_insert_with(|| error("internal error"));
                responses
                    .entry("503".into())
                    .or_insert_with(|| error("the database is out of reach for now: retry"));
            }
        }
    }
}

/// A body of raw bytes in the description (media chunks, archives).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
struct Binary(#[allow(dead_code)] Vec<u8>);

pub fn router(state: AppState) -> Router {
    let (api, _) = api_routes().split_for_parts();
    api.merge(crate::dashboard::routes(state.clone()))
        // Matched routes name themselves to the audit entry; the audit
        // layer wraps everything, unknown paths (the fallback) included.
        .route_layer(axum::middleware::from_fn(crate::audit::note_route))
        .fallback(|| async { StationError::NotFound })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody {
                    error: "method_not_allowed".into(),
                    message: "this path does not take that method".into(),
                }),
            )
        })
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

#[utoipa::path(get, path = "/v1/openapi.json", security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}

/// A request body, or our JSON error when it is over the route's limit or
/// cannot be read (axum's own refusal would be plain text).
fn read_body(body: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StationError::TooLarge("request body over this endpoint's limit".into())
        } else {
            StationError::BadRequest("unreadable_body", "request body could not be read".into())
        }
    })
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

#[utoipa::path(post, path = "/v1/enroll", security(()),
    request_body = EnrollRequest,
    responses((status = 200, description = "enrolled", body = EnrollResponse), (status = 400, description = "refused", body = ErrorBody), (status = 409, description = "refused", body = ErrorBody), (status = 413, description = "body over 2 MiB", body = ErrorBody), (status = 422, description = "`invalid_code`, `code_used`, `code_expired`, `bad_key` (64 hex characters that are no usable Ed25519 key)", body = ErrorBody)))]
async fn enroll(
    State(s): State<AppState>,
    axum::Extension(actor): axum::Extension<AuditActor>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<EnrollResponse>> {
    let req: EnrollRequest = parse(&read_body(body)?)?;
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

#[utoipa::path(get, path = "/v1/devices",
    description = "Directory of enrolled devices: every key, role and unit; names and star numbers only of the caller and of authors of changes it may see (others have empty ones and a person_digest). Only the caller's own record carries its person_secret",
    responses((status = 200, description = "devices", body = DevicesResponse), (status = 401, description = "refused", body = ErrorBody)))]
async fn devices(State(s): State<AppState>, Device(d): Device) -> Result<Json<DevicesResponse>> {
    Ok(Json(DevicesResponse {
        devices: s.storage.directory(&d).await?,
    }))
}

#[utoipa::path(post, path = "/v1/changes",
    description = "Push a batch of signed changes (at most 1000; idempotent; accepted whole or refused whole). Optional header x-fieldreport-device-time: the device clock (ms, an integer; anything else refuses the push with 400 `bad_header`); a clock more than 2 minutes off is flagged on the reports (see receipts), never refused",
    params(("x-fieldreport-device-time" = Option<i64>, Header, description = "the device's wall clock (ms since the epoch) when it sent the push")),
    request_body = PushRequest,
    responses((status = 200, description = "stored", body = PushResponse), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 403, description = "`not_permitted`: a change its author may not make (lifecycle or supervisor field by the wrong role or unit); `device_revoked`: a new change signed by a revoked device, whoever pushes it (changes accepted before the revocation stay valid and re-sending them counts as duplicates)", body = ErrorBody), (status = 409, description = "refused", body = ErrorBody), (status = 413, description = "refused", body = ErrorBody), (status = 422, description = "a change that does not verify or does not fit the report schema", body = ErrorBody), (status = 507, description = "`storage_full`: the station's disk is full; nothing was stored, retry later", body = ErrorBody)))]
async fn push(
    State(s): State<AppState>,
    axum::Extension(actor): axum::Extension<AuditActor>,
    Device(d): Device,
    headers: axum::http::HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<PushResponse>> {
    let body = read_body(body)?;
    let device = d.record.device_id;
    let result = async {
        // Read before anything is stored: a malformed header refuses the
        // whole push.
        let device_time = match headers.get(DEVICE_TIME_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .ok_or_else(|| {
                        StationError::BadRequest(
                            "bad_header",
                            format!("{DEVICE_TIME_HEADER} must be an integer (ms)"),
                        )
                    })?,
            ),
        };
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
                log: outcome.log,
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PullQuery {
    /// The `next` of the previous page (0 for the start).
    #[serde(default)]
    #[param(minimum = 0)]
    after: i64,
    /// Changes per page (default 500).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct ReportPath {
    /// The report's id.
    id: Uuid,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct MediaPath {
    /// The media's SHA-256, lowercase hex.
    #[param(pattern = "^[0-9a-f]{64}$")]
    sha: String,
}

#[utoipa::path(get, path = "/v1/changes",
    description = "Pull visible changes after a cursor, in station log order",
    params(PullQuery),
    responses((status = 200, description = "a page", body = PullResponse), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody)))]
async fn pull(
    State(s): State<AppState>,
    Device(d): Device,
    q: std::result::Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PullResponse>> {
    let Query(q) = q.map_err(|_| {
        StationError::BadRequest("bad_query", "after and limit must be integers".into())
    })?;
    let limit = q.limit.unwrap_or(500);
    if q.after < 0 || !(1..=MAX_PULL_LIMIT).contains(&limit) {
        return Err(StationError::BadRequest(
            "bad_query",
            format!("after must be at least 0 and limit from 1 to {MAX_PULL_LIMIT}"),
        ));
    }
    let page = s.storage.pull(&d, q.after, limit).await?;
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

#[utoipa::path(get, path = "/v1/reports/{id}/changes",
    description = "Every change of one visible report",
    params(ReportPath),
    responses((status = 200, description = "changes", body = ReportChangesResponse), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 404, description = "refused", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/v1/reports/{id}",
    description = "The materialised report (JSON), if visible",
    params(ReportPath),
    responses((status = 200, description = "report", content_type = "application/json", body = Object), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 404, description = "refused", body = ErrorBody)))]
async fn report(
    State(s): State<AppState>,
    Device(d): Device,
    Path(id): Path<String>,
) -> Result<Response> {
    let json = s.storage.report_json(&d, report_id(&id)?).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[utoipa::path(get, path = "/v1/reports/{id}/receipts",
    description = "When the station received each change of the report (its own clock) beside the device clock that made it, and the device clocks found skewed (more than 2 minutes off at push time by the header, or shown ahead by the pushed changes themselves: a wall clock more than 2 minutes past receipt, or a hybrid logical clock more than 7 days ahead), if visible",
    params(ReportPath),
    responses((status = 200, description = "receipts", body = ReceiptsResponse), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 404, description = "refused", body = ErrorBody)))]
async fn receipts(
    State(s): State<AppState>,
    Device(d): Device,
    Path(id): Path<String>,
) -> Result<Json<ReceiptsResponse>> {
    Ok(Json(s.storage.receipts(&d, report_id(&id)?).await?))
}

/// The unit's 30-day internal reviews: due, overdue, done (supervisors).
#[utoipa::path(get, path = "/v1/reviews",
    description = "The 30-day internal reviews of the supervisor's unit (submitted reports and later): overdue first, then due, done late, done",
    responses((status = 200, description = "reviews", body = Vec<crate::oversight::ReviewItem>), (status = 401, description = "refused", body = ErrorBody), (status = 403, description = "refused", body = ErrorBody)))]
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
#[utoipa::path(get, path = "/public", security(()),
    description = "The public record (no sign-in): counts by month and police district, counts from 1 to 4 suppressed, nothing personal",
    responses((status = 200, description = "HTML page", content_type = "text/html", body = String)))]
async fn public_page(State(s): State<AppState>) -> Result<Response> {
    let log = s
        .storage
        .checkpoint()
        .await?
        .map(|note| (note, s.storage.log_verifier().encode()));
    let html = crate::oversight::counts_html(&public_counts(&s).await?, log)?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

#[utoipa::path(get, path = "/public/public.css", security(()),
    description = "The public page's stylesheet",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String)))]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CheckpointQuery {
    /// A tree size the log signed a checkpoint of; the newest when left out.
    #[param(minimum = 1)]
    size: Option<u64>,
}

#[utoipa::path(get, path = "/v1/log/checkpoint", security(()),
    description = "The log's newest checkpoint, or the one of `size`: a C2SP signed note (tlog-checkpoint text: origin, tree size, base64 root; a blank line; the log key's Ed25519 signature line), byte for byte as stored (what a time-stamp covers). See docs/log.md",
    params(CheckpointQuery),
    responses((status = 200, description = "signed note", content_type = "text/plain", body = String), (status = 400, description = "`bad_query`", body = ErrorBody), (status = 404, description = "the log is empty, or has no checkpoint of that size", body = ErrorBody)))]
async fn log_checkpoint(
    State(s): State<AppState>,
    q: std::result::Result<Query<CheckpointQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let note = match size_query(q)?.size {
        Some(size) => s.storage.checkpoint_of(size).await?,
        None => s.storage.checkpoint().await?,
    }
    .ok_or(StationError::NotFound)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AttestedQuery {
    /// A tree size the log has a checkpoint of.
    #[param(minimum = 1)]
    size: u64,
}

fn size_query<T>(
    q: std::result::Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T> {
    q.map(|Query(q)| q)
        .map_err(|_| StationError::BadRequest("bad_query", "size must be a tree size".into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CosignedQuery {
    /// A tree size the log has a checkpoint of. Left out: the newest
    /// checkpoint at least `witnesses` witnesses cosigned.
    #[param(minimum = 1)]
    size: Option<u64>,
    /// Without `size`: how many witnesses must have cosigned (default 1).
    #[param(minimum = 1)]
    witnesses: Option<u32>,
}

#[utoipa::path(get, path = "/v1/log/cosigned", security(()),
    description = "The checkpoint of `size` (or the newest one that `witnesses` witnesses cosigned) with every witness cosignature the station holds of it appended (C2SP tlog-cosignature lines after the log's signature): a phone or verifier checks the ones of the witnesses it trusts. See docs/log.md",
    params(CosignedQuery),
    responses((status = 200, description = "signed note", content_type = "text/plain", body = String), (status = 400, description = "`bad_query`", body = ErrorBody), (status = 404, description = "no checkpoint of that size, or none cosigned by that many witnesses yet", body = ErrorBody)))]
async fn log_attested(
    State(s): State<AppState>,
    q: std::result::Result<Query<CosignedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let q = size_query(q)?;
    let size = match q.size {
        Some(size) => size,
        None => s
            .storage
            .newest_cosigned(q.witnesses.unwrap_or(1))
            .await?
            .ok_or(StationError::NotFound)?,
    };
    let note = s
        .storage
        .checkpoint_of(size)
        .await?
        .ok_or(StationError::NotFound)?;
    let lines = crate::attest::cosignature_lines(&s.storage.attestations(size).await?);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        crate::attest::cosigned_note(&note, &lines),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/log/timestamp", security(()),
    description = "The RFC 3161 time-stamp response (DER) over the checkpoint of `size`, exactly as `/v1/log/checkpoint?size=` serves it; check it with `openssl ts -verify -data checkpoint.txt -in this.tsr -CAfile <the authority's CA>`",
    params(AttestedQuery),
    responses((status = 200, description = "the DER TimeStampResp (what an authority answers as application/timestamp-reply)", content_type = "application/octet-stream", body = Binary), (status = 400, description = "`bad_query`", body = ErrorBody), (status = 404, description = "no time-stamp of that checkpoint (yet)", body = ErrorBody)))]
async fn log_timestamp(
    State(s): State<AppState>,
    q: std::result::Result<Query<AttestedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let q = size_query(q)?;
    let tsr = crate::attest::timestamp_of(&s.storage.attestations(q.size).await?)
        .ok_or(StationError::NotFound)?;
    // As the description says: a stored file, not an authority's answer.
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], tsr).into_response())
}

#[utoipa::path(get, path = "/v1/log/key", security(()),
    description = "The log's verifier key in C2SP signed-note form (name+key id+base64 key): compare it with the one the department publishes",
    responses((status = 200, description = "verifier key", content_type = "text/plain", body = String)))]
async fn log_key(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", s.storage.log_verifier().encode()),
    )
        .into_response()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConsistencyQuery {
    /// A tree size the caller holds a checkpoint of (0 for none).
    #[param(minimum = 0)]
    old: u64,
    /// A larger tree size the log has a checkpoint of.
    #[param(minimum = 0)]
    new: u64,
}

#[utoipa::path(get, path = "/v1/log/consistency", security(()),
    description = "The RFC 6962 consistency proof that the tree of `old` is a prefix of the tree of `new` (both sizes of checkpoints the log signed)",
    params(ConsistencyQuery),
    responses((status = 200, description = "proof", body = ConsistencyResponse), (status = 400, description = "`bad_query`: old above new, or not integers", body = ErrorBody), (status = 404, description = "a size the log has no checkpoint of", body = ErrorBody)))]
async fn log_consistency(
    State(s): State<AppState>,
    q: std::result::Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConsistencyResponse>> {
    let Query(q) = q.map_err(|_| {
        StationError::BadRequest("bad_query", "old and new must be tree sizes".into())
    })?;
    Ok(Json(s.storage.consistency(q.old, q.new).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InclusionQuery {
    /// The leaf's index.
    #[param(minimum = 0)]
    index: u64,
    /// A tree size the log has a checkpoint of, above `index`.
    #[param(minimum = 1)]
    size: u64,
}

#[utoipa::path(get, path = "/v1/log/inclusion",
    description = "A log leaf (base64) with its RFC 6962 inclusion proof in the tree of `size`. For enrolled devices, and a change's leaf only to those who may see its report (it names the author and the report); 404 otherwise",
    params(InclusionQuery),
    responses((status = 200, description = "leaf and proof", body = InclusionResponse), (status = 400, description = "`bad_query`: not integers", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 404, description = "a size the log has no checkpoint of, or no such leaf in it", body = ErrorBody)))]
async fn log_inclusion(
    State(s): State<AppState>,
    Device(d): Device,
    q: std::result::Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InclusionResponse>> {
    let Query(q) = q.map_err(|_| {
        StationError::BadRequest("bad_query", "index and size must be integers".into())
    })?;
    Ok(Json(s.storage.inclusion(&d, q.index, q.size).await?))
}

#[utoipa::path(get, path = "/v1/log/restores",
    description = "The restores of this station from a backup that its log records (restore leaves, base64, each with its inclusion proof in the newest checkpoint, which comes with them). A phone holding a larger tree than a restored station's asks for them before it refuses the station; see docs/log.md. For enrolled devices",
    responses((status = 200, description = "restore leaves and proofs", body = RestoresResponse), (status = 401, description = "refused", body = ErrorBody), (status = 404, description = "the log is empty", body = ErrorBody)))]
async fn log_restores(
    State(s): State<AppState>,
    Device(_): Device,
) -> Result<Json<RestoresResponse>> {
    Ok(Json(s.storage.restores().await?))
}

/// A log alarm is a short phrase and one checkpoint.
const MAX_ALARM_BYTES: usize = 16 * 1024;

#[utoipa::path(post, path = "/v1/log/alarm",
    description = "A device reports that the station's log is not the one it saw (a smaller tree, another history, another key): kept in the audit log, with whether the checkpoint the device holds was signed by this log key (then the station signed a tree it no longer shows). See docs/log.md",
    request_body = LogAlarm,
    responses((status = 204, description = "recorded"), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 413, description = "refused", body = ErrorBody)))]
async fn log_alarm(
    State(s): State<AppState>,
    Device(d): Device,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<StatusCode> {
    let alarm: LogAlarm = parse(&read_body(body)?)?;
    // The device's phrase is sizes and key names; kept short and on one line.
    let problem: String = alarm
        .problem
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    use fieldreport_core::tlog::SignedCheckpoint;
    let v = s.storage.log_verifier();
    let held = alarm
        .held
        .as_deref()
        .and_then(|n| SignedCheckpoint::verify(n.as_bytes(), &v).ok());
    // What the station's own log says of the tree the device holds: the
    // alarm is founded when the log signed it and no longer has it.
    let finding = match &held {
        None => "the device holds no checkpoint signed by this log key".to_string(),
        Some(cp) => {
            let ours = s
                .storage
                .checkpoint_of(cp.size)
                .await?
                .and_then(|n| SignedCheckpoint::verify(n.as_bytes(), &v).ok());
            match ours {
                Some(o) if o.root == cp.root => format!(
                    "the device's checkpoint of size {} matches this log's (not shown a rollback by this database)",
                    cp.size
                ),
                Some(_) => format!(
                    "FORK: this log key signed two trees of size {}; the device holds the other",
                    cp.size
                ),
                None => format!(
                    "ROLLBACK: this log key signed a tree of size {} that this database no longer holds",
                    cp.size
                ),
            }
        }
    };
    let outcome = format!("{problem}; {finding}");
    tracing::error!(device = %d.record.device_id, "a device reports the station's log inconsistent");
    s.storage
        .audit(AuditEntry {
            id: 0,
            at_ms: s.clock.now_ms(),
            actor: d.record.device_id.to_string(),
            action: "log alarm".into(),
            target: "/v1/log".into(),
            outcome,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/public/counts.csv", security(()),
    description = "The public record as CSV: month,district,measure,count (count is a number or `suppressed`)",
    responses((status = 200, description = "CSV", content_type = "text/csv", body = String)))]
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
#[utoipa::path(get, path = "/v1/reports/{id}/export",
    description = "The evidence package of one report: a BagIt bag (signed history, report JSON and PDF, media, device keys) as a tar archive holding the directory `fieldreport-<id>`; supervisors who may see the report only",
    params(ReportPath),
    responses((status = 200, description = "tar archive", content_type = "application/x-tar", body = Binary), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 403, description = "refused", body = ErrorBody), (status = 404, description = "refused", body = ErrorBody), (status = 409, description = "refused", body = ErrorBody)))]
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
    let path =
        crate::export::export_tar(&s.storage, &s.attestors, &d, report, &s.station_id).await?;
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

#[utoipa::path(get, path = "/v1/media/{sha}/status",
    description = "How many bytes of this media the station holds",
    params(MediaPath),
    responses((status = 200, description = "status", body = MediaStatus), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody)))]
async fn media_status(
    State(s): State<AppState>,
    _d: Device,
    Path(sha): Path<String>,
) -> Result<Json<MediaStatus>> {
    Ok(Json(s.storage.media_status(&sha).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ChunkQuery {
    /// Where this chunk starts: the `received` the station reports.
    #[param(minimum = 0)]
    offset: u64,
    /// The media's whole size in bytes (at most 4 GiB).
    #[param(minimum = 0, maximum = 4294967296.0)]
    total: u64,
}

#[utoipa::path(put, path = "/v1/media/{sha}",
    description = "Upload a chunk (at most 8 MiB) at the offset the station holds; the SHA-256 is verified when complete",
    params(MediaPath, ChunkQuery),
    request_body(content = Binary, content_type = "application/octet-stream"),
    responses((status = 200, description = "status", body = MediaStatus), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 409, description = "refused", body = ErrorBody), (status = 413, description = "refused", body = ErrorBody), (status = 422, description = "refused", body = ErrorBody), (status = 507, description = "`storage_full`: the station's disk is full; retry later", body = ErrorBody)))]
async fn media_put(
    State(s): State<AppState>,
    _d: Device,
    Path(sha): Path<String>,
    q: std::result::Result<Query<ChunkQuery>, axum::extract::rejection::QueryRejection>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<MediaStatus>> {
    let body = read_body(body)?;
    let Query(q) = q.map_err(|_| {
        StationError::BadRequest("bad_query", "offset and total are required integers".into())
    })?;
    Ok(Json(
        s.storage
            .media_append(&sha, q.offset, q.total, &body)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/media/{sha}",
    description = "Download media attached to a visible report",
    params(MediaPath),
    responses((status = 200, description = "bytes", content_type = "application/octet-stream", body = Binary), (status = 400, description = "refused", body = ErrorBody), (status = 401, description = "refused", body = ErrorBody), (status = 404, description = "refused", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/v1/events",
    description = "Server-Sent Events for supervisors: event `report` with {report_id, log_id, kind} for the unit's reports; `lagged` means pull now",
    responses((status = 200, description = "text/event-stream of `report` events", content_type = "text/event-stream", body = String), (status = 401, description = "refused", body = ErrorBody), (status = 403, description = "refused", body = ErrorBody)))]
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

#[cfg(test)]
mod tests {
    /// The served description is OpenAPI 3.1 and lists every operation the
    /// router has, with the bounds the handlers enforce.
    #[test]
    fn the_description_is_3_1_and_lists_every_operation() {
        let doc: serde_json::Value = serde_json::from_str(super::openapi_json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let mut ops: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| format!("{} {p}", m.to_uppercase()))
            })
            .collect();
        ops.sort();
        assert_eq!(
            ops,
            [
                "GET /public",
                "GET /public/counts.csv",
                "GET /public/public.css",
                "GET /v1/changes",
                "GET /v1/devices",
                "GET /v1/events",
                "GET /v1/log/checkpoint",
                "GET /v1/log/consistency",
                "GET /v1/log/cosigned",
                "GET /v1/log/inclusion",
                "GET /v1/log/key",
                "GET /v1/log/restores",
                "GET /v1/log/timestamp",
                "GET /v1/media/{sha}",
                "GET /v1/media/{sha}/status",
                "GET /v1/openapi.json",
                "GET /v1/reports/{id}",
                "GET /v1/reports/{id}/changes",
                "GET /v1/reports/{id}/export",
                "GET /v1/reports/{id}/receipts",
                "GET /v1/reviews",
                "POST /v1/changes",
                "POST /v1/enroll",
                "POST /v1/log/alarm",
                "PUT /v1/media/{sha}",
            ]
        );
        let limit = doc["paths"]["/v1/changes"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap();
        assert_eq!(limit["schema"]["maximum"], super::MAX_PULL_LIMIT);
        let total = doc["paths"]["/v1/media/{sha}"]["put"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "total")
            .unwrap();
        assert_eq!(
            total["schema"]["maximum"].as_f64(),
            Some(crate::storage::common::MAX_MEDIA_BYTES as f64)
        );
        assert_eq!(
            doc["components"]["schemas"]["PushRequest"]["properties"]["changes"]["maxItems"],
            super::MAX_PUSH_CHANGES
        );
        // Every operation may answer 500 and 503 with the error body.
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                assert!(op["responses"]["503"].is_object(), "{op}");
                assert!(op["responses"]["500"].is_object(), "{op}");
            }
        }
    }
}
