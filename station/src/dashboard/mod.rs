//! The supervisor dashboard: plain server-rendered pages with a little
//! JavaScript, served by the station under `/dashboard`.
//!
//! - sign-in with star number, password and TOTP code (`crate::accounts`), a session
//!   cookie (`HttpOnly`, `Secure`, `SameSite=Strict`) that ends after 30
//!   minutes idle, or at once when the account's signing device is revoked
//!   or its credential expires;
//! - the inbox of the unit's reports, updating live from the station's
//!   event stream (`/dashboard/events`, Server-Sent Events);
//! - a report page with its fields, kept conflicts, lifecycle history,
//!   amendments and photos, and the return / approve / refer / close and
//!   review actions, signed by the account's own device (`accounts::act`);
//! - the 30-day review lists and the evidence package download.
//!
//! Every response carries a Content-Security-Policy allowing only the
//! dashboard's own script and style files (`/dashboard/app.js`,
//! `/dashboard/app.css`; nothing inline) and no framing, `nosniff`, and
//! `Cache-Control: no-store` (reports and photos stay out of a shared
//! station PC's cache). Every POST must come from the dashboard's own
//! origin (`Origin`, `Sec-Fetch-Site`), and with a session, carry its
//! CSRF token; refusals are 403 and audited.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Form, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use fieldreport_core::model::LifecycleState;
use fieldreport_core::Report;
use futures_util::Stream;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::AuditActor;
use crate::error::{Result, StationError};
use crate::oversight::{self, ReviewStatus};
use crate::sessions::{cookie, Session, COOKIE};
use crate::state::AppState;
use crate::storage::parse_reports;
use crate::storage::{DashboardAccount, Enrolled};

/// The hidden form field carrying a session's CSRF token.
const CSRF_FIELD: &str = "csrf";
/// Largest form body a dashboard POST may have.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The dashboard's Content-Security-Policy: its own script, style, images
/// and fetches only, nothing inline, forms only to itself, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The dashboard's routes. `state` is for the guard every route goes
/// through ([`guard`]: same-origin POSTs carrying the session's CSRF token).
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(inbox_page))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/app.css", get(app_css))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/inbox", get(inbox_fragment))
        .route("/dashboard/events", get(events))
        .route("/dashboard/reviews", get(reviews_page))
        .route("/dashboard/reports/{id}", get(report_page))
        .route("/dashboard/reports/{id}/export", get(export))
        .route("/dashboard/reports/{id}/{action}", post(act))
        .route("/dashboard/media/{sha}", get(media))
        .route_layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Adds the browser-facing security headers: `nosniff` on every response
/// of the station, and on the dashboard's the Content-Security-Policy, no
/// framing, same-origin referrers and, unless the handler chose
/// otherwise (its static files), `Cache-Control: no-store`.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let dashboard = req.uri().path().starts_with("/dashboard");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if dashboard {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        // Not `no-referrer`: with it browsers send `Origin: null` on the
        // dashboard's own POSTs, which the guard refuses.
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        if !h.contains_key(header::CACHE_CONTROL) {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
    resp
}

/// Whether a request comes from the dashboard's own origin: a browser's
/// `Sec-Fetch-Site` says `same-origin` (or `none`, the user's own
/// navigation), and its `Origin` names this station (the host and port of
/// the request). A client that sends neither (not a browser) passes; the
/// CSRF token still applies to it.
fn same_origin(h: &HeaderMap) -> bool {
    if let Some(site) = h.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return false;
        }
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        h.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        page(
            "Refused",
            None,
            "<section><h1>Refused</h1><p class=error role=alert>This form did not come from \
             this dashboard's own page, so nothing was done. \
             <a href=\"/dashboard\">Back to the dashboard</a>.</p></section>",
        ),
    )
        .into_response()
}

fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Every dashboard POST: refused (403, audited) when it comes from
/// another origin, or when it belongs to a live session but lacks that
/// session's CSRF token. The sign-in form has no session yet: its origin
/// is checked. A POST without a live session goes on to its handler, which
/// treats it as signed out.
async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let actor = req
        .extensions()
        .get::<AuditActor>()
        .cloned()
        .unwrap_or_default();
    if !same_origin(req.headers()) {
        actor.note("cross-origin request");
        tracing::warn!("dashboard POST from another origin refused");
        return forbidden();
    }
    if req.uri().path() == "/dashboard/login" {
        return next.run(req).await;
    }
    let Some(expected) = s.sessions.csrf(req.headers(), s.clock.now_ms()) else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return StationError::TooLarge(format!(
            "a dashboard form is at most {MAX_FORM_BYTES} bytes"
        ))
        .into_response();
    };
    let given = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned());
    match given {
        None => {
            actor.note("no CSRF token");
            tracing::warn!("dashboard POST without its CSRF token refused");
            return forbidden();
        }
        Some(t) if !ct_eq(&t, &expected) => {
            actor.note("wrong CSRF token");
            tracing::warn!("dashboard POST with a wrong CSRF token refused");
            return forbidden();
        }
        Some(_) => {}
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
        .into_response()
}

/// The signed-in supervisor of a request: account, its live signing
/// device, and the session's CSRF token.
struct Supervisor {
    account: DashboardAccount,
    who: Enrolled,
    csrf: String,
    /// Cancelled when the session ends.
    ended: CancellationToken,
}

impl Supervisor {
    fn name(&self) -> &str {
        &self.who.record.person.name
    }
    fn unit(&self) -> &str {
        self.who.unit()
    }
}

/// Why a request has no supervisor.
enum Refusal {
    /// No session, or one that ended.
    NoSession,
    /// The session was live, but its account may no longer act: the
    /// session ends now (the reason goes to the audit log).
    Ended(&'static str),
    Failed(StationError),
}

/// Why a device may not act now, as the API words it.
fn device_refusal(who: Option<&Enrolled>, now: i64) -> Option<&'static str> {
    match who {
        None => Some("unknown device"),
        Some(d) if d.revoked => Some("device revoked"),
        Some(d) if d.credential_expires_at.is_some_and(|t| t <= now) => Some("credential expired"),
        Some(_) => None,
    }
}

/// The request's supervisor: a live session whose account's signing
/// device is still enrolled, not revoked and its credential not expired
/// (checked on every request, so `revoke` and `credential` take effect at
/// once on open sessions too).
async fn supervisor(s: &AppState, headers: &HeaderMap) -> std::result::Result<Supervisor, Refusal> {
    let token = cookie(headers).ok_or(Refusal::NoSession)?;
    let (star, device, csrf, ended) = {
        let mut sessions = s.sessions.sessions();
        let now = s.clock.now_ms();
        let idle = s.sessions.idle_ms();
        sessions.retain(|_, v| {
            let live = now.saturating_sub(v.last_seen) < idle;
            if !live {
                v.ended.cancel();
            }
            live
        });
        let session = sessions.get_mut(&token).ok_or(Refusal::NoSession)?;
        session.last_seen = now;
        (
            session.star_number.clone(),
            session.device_id,
            session.csrf.clone(),
            session.ended.clone(),
        )
    };
    let account = match s.storage.dashboard_account(&star).await {
        Ok(Some(a)) if a.device_id == device => a,
        Ok(_) => {
            s.sessions.end_session(&token);
            return Err(Refusal::NoSession);
        }
        Err(e) => return Err(Refusal::Failed(e)),
    };
    let who = s.storage.device(device).await.map_err(Refusal::Failed)?;
    if let Some(why) = device_refusal(who.as_ref(), s.clock.now_ms()) {
        s.sessions.end_session(&token);
        tracing::warn!(%device, why, "dashboard session ended");
        return Err(Refusal::Ended(why));
    }
    let who = who.ok_or(Refusal::NoSession)?;
    Ok(Supervisor {
        account,
        who,
        csrf,
        ended,
    })
}

/// The supervisor of a page (or form) request: without one, the sign-in
/// page (a redirect to it, or a 401 page saying the account's access has
/// ended).
struct PageUser(Supervisor);
/// The supervisor of a data request (inbox rows, events, photos,
/// packages): without one, 401.
struct DataUser(Supervisor);

async fn request_supervisor(
    parts: &Parts,
    s: &AppState,
    page_answer: bool,
) -> std::result::Result<Supervisor, Response> {
    match supervisor(s, &parts.headers).await {
        Ok(sup) => Ok(sup),
        Err(Refusal::Failed(e)) => Err(e.into_response()),
        Err(Refusal::NoSession) if page_answer => {
            Err(Redirect::to("/dashboard/login").into_response())
        }
        Err(Refusal::NoSession) => Err(StatusCode::UNAUTHORIZED.into_response()),
        Err(Refusal::Ended(why)) => {
            if let Some(actor) = parts.extensions.get::<AuditActor>() {
                actor.note(why);
            }
            let body = if page_answer {
                page("Sign in", None, &login_form(ACCESS_ENDED)).into_response()
            } else {
                ().into_response()
            };
            Err((
                StatusCode::UNAUTHORIZED,
                [(header::SET_COOKIE, clear_cookie())],
                body,
            )
                .into_response())
        }
    }
}

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState,
    ) -> std::result::Result<Self, Response> {
        request_supervisor(parts, s, true).await.map(PageUser)
    }
}

impl FromRequestParts<AppState> for DataUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState,
    ) -> std::result::Result<Self, Response> {
        request_supervisor(parts, s, false).await.map(DataUser)
    }
}

const ACCESS_ENDED: &str =
    "This account's access has ended (its device was revoked or its credential expired). \
     Ask the station's administrator.";

fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/dashboard; Max-Age=0")
}

async fn audit_sign_in(s: &AppState, device: Option<Uuid>, outcome: &str) {
    let entry = crate::storage::AuditEntry {
        id: 0,
        at_ms: s.clock.now_ms(),
        actor: device
            .map(|d| d.to_string())
            .unwrap_or_else(|| "unknown account".into()),
        action: "POST /dashboard/login".into(),
        target: "/dashboard/login".into(),
        outcome: outcome.into(),
    };
    if let Err(e) = s.storage.audit(entry).await {
        tracing::error!(error = %e, "audit log write failed");
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The hidden field carrying the session's CSRF token, for every form.
fn csrf_input(sup: &Supervisor) -> String {
    format!(
        "<input type=hidden name={CSRF_FIELD} value=\"{}\">",
        esc(&sup.csrf)
    )
}

fn page(title: &str, signed_in: Option<&Supervisor>, body: &str) -> Html<String> {
    let nav = match signed_in {
        Some(sup) => format!(
            "<a href=\"/dashboard\">Inbox</a><a href=\"/dashboard/reviews\">Reviews</a>\
             <a href=\"/public\">Public record</a><span>{} · {}</span>\
             <form method=post action=\"/dashboard/logout\">{}<button>Sign out</button></form>",
            esc(sup.name()),
            esc(sup.unit()),
            csrf_input(sup)
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{} · FieldReport</title><link rel=stylesheet href=\"/dashboard/app.css\">\
         <script src=\"/dashboard/app.js\" defer></script></head><body>\
         <header><strong>FieldReport supervisor</strong>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    ))
}

async fn login_page() -> Html<String> {
    page("Sign in", None, &login_form(""))
}

fn login_form(error: &str) -> String {
    format!(
        "<section><h1>Sign in</h1>{}<form method=post action=\"/dashboard/login\" class=action>\
         <label>Star number<input name=star autocomplete=username required></label>\
         <label>Password<input name=password type=password autocomplete=current-password required></label>\
         <label>Code from your authenticator app<input name=code inputmode=numeric autocomplete=one-time-code pattern=\"[0-9 ]{{6,7}}\" required></label>\
         <button>Sign in</button></form></section>",
        if error.is_empty() {
            String::new()
        } else {
            format!("<p class=error role=alert>{}</p>", esc(error))
        }
    )
}

#[derive(Deserialize)]
struct LoginForm {
    star: String,
    password: String,
    #[serde(default)]
    code: String,
}

async fn login(State(s): State<AppState>, Form(f): Form<LoginForm>) -> Result<Response> {
    let star = f.star.trim().to_string();
    let account = s.storage.dashboard_account(&star).await?;
    let device = account.as_ref().map(|a| a.device_id);
    let refused = |status: StatusCode, message: &str| {
        (status, page("Sign in", None, &login_form(message))).into_response()
    };
    // Locked: refused before any check, so guessing gets nowhere.
    if s.sessions.locked(&star, s.clock.now_ms()) {
        audit_sign_in(&s, device, "refused: locked out").await;
        tracing::warn!("dashboard sign-in refused: locked out");
        return Ok(refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts. Try again in 10 minutes.",
        ));
    }
    // Verify against a real hash either way, so timing does not reveal
    // whether the account exists.
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    let password = f.password;
    let password_ok = tokio::task::spawn_blocking(move || {
        crate::accounts::password_matches(&hash.unwrap_or_else(dummy_hash), &password)
    })
    .await
    .unwrap_or(false);
    let code: String = f.code.chars().filter(|c| !c.is_whitespace()).collect();
    let factor = account
        .as_ref()
        .map(|a| crate::accounts::second_factor(&s.station_key, a));
    let totp_step = match &factor {
        Some(Ok(Some(t))) => u64::try_from(s.clock.now_ms() / 1000).ok().and_then(|now| {
            // The step the code belongs to (drift of one step allowed).
            [now, now.saturating_sub(30), now + 30]
                .into_iter()
                .find(|t2| t.generate(*t2) == code)
                .map(|t2| t2 / 30)
        }),
        _ => None,
    };
    let outcome = match (&account, password_ok, &factor, totp_step) {
        (None, _, _, _) => Err("refused: unknown account"),
        (Some(_), false, _, _) => Err("refused: wrong password"),
        (Some(_), true, Some(Err(e)), _) => {
            tracing::error!(error = %e, "a dashboard account's second factor does not open with this station key");
            Err("refused: second factor does not open with the station key")
        }
        (Some(_), true, Some(Ok(None)), _) => Err("refused: no second factor set up"),
        (Some(_), true, _, None) => Err("refused: wrong second factor"),
        (Some(_), true, _, Some(step)) if !s.sessions.use_totp_step(&star, step) => {
            Err("refused: second factor code already used")
        }
        (Some(_), true, _, Some(_)) => Ok(()),
    };
    if let Err(why) = outcome {
        let locked_now = s.sessions.fail(&star, s.clock.now_ms());
        audit_sign_in(&s, device, why).await;
        if locked_now {
            audit_sign_in(&s, device, "locked out for 10 minutes").await;
        }
        tracing::warn!("dashboard sign-in refused");
        return Ok(refused(
            StatusCode::UNAUTHORIZED,
            "Star number, password or code not recognised.",
        ));
    }
    let Some(account) = account else {
        return Err(StationError::Internal("sign-in".into()));
    };
    s.sessions.succeeded(&star);
    // Both factors are right, but the account's device may not act.
    let who = s.storage.device(account.device_id).await?;
    if let Some(why) = device_refusal(who.as_ref(), s.clock.now_ms()) {
        audit_sign_in(&s, device, &format!("401 {why}")).await;
        tracing::warn!(device = %account.device_id, why, "dashboard sign-in refused");
        return Ok(refused(StatusCode::UNAUTHORIZED, ACCESS_ENDED));
    }
    let token = crate::storage::common::random_token(32)?;
    let csrf = crate::storage::common::random_token(32)?;
    s.sessions.sessions().insert(
        token.clone(),
        Session {
            star_number: account.star_number.clone(),
            device_id: account.device_id,
            csrf,
            last_seen: s.clock.now_ms(),
            ended: CancellationToken::new(),
        },
    );
    tracing::info!("dashboard sign-in");
    audit_sign_in(&s, device, "signed in").await;
    Ok((
        [(
            header::SET_COOKIE,
            format!("{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/dashboard"),
        )],
        Redirect::to("/dashboard"),
    )
        .into_response())
}

/// An Argon2 hash of a random password, verified when the star number is
/// unknown (made once per process).
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let mut pw = [0u8; 16];
            let _ = getrandom::fill(&mut pw);
            crate::accounts::hash_password(&hex::encode(pw)).unwrap_or_default()
        })
        .clone()
}

async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(t) = cookie(&headers) {
        s.sessions.end_session(&t);
    }
    (
        [(header::SET_COOKIE, clear_cookie())],
        Redirect::to("/dashboard/login"),
    )
        .into_response()
}

fn lifecycle_badge(l: LifecycleState) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", l.as_str())
}

fn short_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| {
        t.with_timezone(&chrono_tz::America::Chicago)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    })
    .unwrap_or_else(|| "—".into())
}

async fn inbox_rows(s: &AppState, sup: &Supervisor) -> Result<String> {
    let reports = parse_reports(s.storage.visible_reports(&sup.who).await?)?;
    let now = s.clock.now();
    if reports.is_empty() {
        return Ok("<tr><td colspan=6>No reports from the unit yet.</td></tr>".into());
    }
    let mut rows = String::new();
    for r in &reports {
        let review = match oversight::review_status(r, now) {
            ReviewStatus::Overdue => "<span class=overdue>overdue</span>".to_string(),
            ReviewStatus::Due => format!("due {}", short_time(r.review.due)),
            ReviewStatus::Done => "done".into(),
            ReviewStatus::DoneLate => "done late".into(),
        };
        rows.push_str(&format!(
            "<tr data-report=\"{id}\"><td><a href=\"/dashboard/reports/{id}\">{short}</a></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            lifecycle_badge(r.lifecycle),
            esc(r.reporting_officer.name.as_deref().unwrap_or("—")),
            short_time(r.updated_at),
            if r.conflicts.is_empty() {
                "—".to_string()
            } else {
                format!("{} to settle", r.conflicts.len())
            },
            review,
            id = r.id,
            short = &r.id.to_string()[..8],
        ));
    }
    Ok(rows)
}

async fn inbox_page(State(s): State<AppState>, PageUser(sup): PageUser) -> Result<Response> {
    let rows = inbox_rows(&s, &sup).await?;
    let body = format!(
        "<h1>Inbox</h1><p id=live aria-live=polite>Updates live as officers sync.</p>\
         <div class=scroll><table><thead><tr><th>Report</th><th>State</th><th>Officer</th>\
         <th>Updated</th><th>Conflicts</th><th>Review</th></tr></thead>\
         <tbody id=inbox>{rows}</tbody></table></div>"
    );
    Ok(page("Inbox", Some(&sup), &body).into_response())
}

async fn inbox_fragment(State(s): State<AppState>, DataUser(sup): DataUser) -> Result<Response> {
    Ok(Html(inbox_rows(&s, &sup).await?).into_response())
}

async fn events(
    State(s): State<AppState>,
    DataUser(sup): DataUser,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    // The stream closes when the session ends (sign-out, idle, or a
    // refused request once the account's access has ended).
    crate::events::unit_event_stream(&s, sup.unit().to_string(), sup.ended.clone())
}

/// Renders a JSON value as nested definition lists (the report's fields,
/// whatever the schema holds).
fn render_value(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "—".into(),
        J::String(s) => esc(s),
        J::Bool(b) => if *b { "yes" } else { "no" }.into(),
        J::Number(n) => n.to_string(),
        J::Array(items) if items.is_empty() => "—".into(),
        J::Array(items) => items
            .iter()
            .map(|i| format!("<div>{}</div>", render_value(i)))
            .collect(),
        J::Object(map) => {
            let mut out = String::from("<dl>");
            for (k, v) in map {
                out.push_str(&format!(
                    "<dt>{}</dt><dd>{}</dd>",
                    esc(&k.replace('_', " ")),
                    render_value(v)
                ));
            }
            out.push_str("</dl>");
            out
        }
    }
}

fn actions(r: &Report, sup: &Supervisor) -> String {
    use LifecycleState::*;
    let id = r.id;
    let csrf = csrf_input(sup);
    let mut out = String::new();
    match r.lifecycle {
        Submitted => out.push_str(&format!(
            "<form method=post action=\"/dashboard/reports/{id}/return\" class=action>{csrf}\
             <label>Comment for the officer<textarea name=comment rows=2 required></textarea></label>\
             <button>Return to officer</button></form>\
             <form method=post action=\"/dashboard/reports/{id}/approve\" class=action>{csrf}\
             <button>Approve</button></form>"
        )),
        Approved => out.push_str(&format!(
            "<form method=post action=\"/dashboard/reports/{id}/refer\" class=action>{csrf}\
             <label>Referral date<input type=date name=date required></label>\
             <label>State's Attorney reference<input name=reference required></label>\
             <label>Felony matters (one per line)<textarea name=felonies rows=2 required></textarea></label>\
             <button>Refer to the State's Attorney</button></form>"
        )),
        _ => {}
    }
    if matches!(r.lifecycle, Approved | Referred) {
        out.push_str(&format!(
            "<form method=post action=\"/dashboard/reports/{id}/close\" class=action>{csrf}<button>Close</button></form>"
        ));
    }
    if r.lifecycle != Draft {
        out.push_str(&format!(
            "<h3>Internal review</h3><form method=post action=\"/dashboard/reports/{id}/review\" class=action>{csrf}\
             <label>Findings<textarea name=findings rows=2 required></textarea></label>\
             <label>CPD's own conduct<textarea name=cpd_conduct rows=2 required></textarea></label>\
             <label>Dispatch knew it involved immigration enforcement\
             <select name=dispatch_knew><option value=no>no</option><option value=yes>yes</option></select></label>\
             <button>Record review</button></form>"
        ));
    }
    if out.is_empty() {
        out.push_str("<p>No action in this state.</p>");
    }
    out
}

async fn report_page(
    State(s): State<AppState>,
    PageUser(sup): PageUser,
    Path(id): Path<String>,
) -> Result<Response> {
    render_report(&s, &sup, &id, "").await
}

async fn render_report(s: &AppState, sup: &Supervisor, id: &str, error: &str) -> Result<Response> {
    let id = Uuid::parse_str(id)
        .map_err(|_| StationError::BadRequest("bad_id", "report id must be a UUID".into()))?;
    let json = s.storage.report_json(&sup.who, id).await?;
    let r: Report = serde_json::from_str(&json)
        .map_err(|_| StationError::Internal("stored report does not parse".into()))?;
    let mut fields: serde_json::Value = serde_json::from_str(&json)
        .map_err(|_| StationError::Internal("stored report does not parse".into()))?;
    if let Some(m) = fields.as_object_mut() {
        for k in [
            "conflicts",
            "lifecycle_history",
            "amendments",
            "clock_ahead",
            "clock_unset",
            "media",
            "id",
            "lifecycle",
        ] {
            m.remove(k);
        }
    }
    let conflicts = if r.conflicts.is_empty() {
        "<p>None.</p>".to_string()
    } else {
        let mut t = String::from(
            "<div class=scroll><table><thead><tr><th>Field</th><th>Values kept (device:seq)</th></tr></thead><tbody>",
        );
        for c in &r.conflicts {
            let vals: Vec<String> = c
                .values
                .iter()
                .map(|v| {
                    format!(
                        "{} <small>({}:{})</small>",
                        esc(&serde_json::to_string(&v.value).unwrap_or_default()),
                        &v.device.to_string()[..8],
                        v.seq
                    )
                })
                .collect();
            t.push_str(&format!(
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&c.path),
                vals.join("<br>")
            ));
        }
        t.push_str("</tbody></table></div>");
        t
    };
    let history: String = r
        .lifecycle_history
        .iter()
        .map(|h| {
            format!(
                "<tr><td>{}</td><td>{}:{}</td><td>{}</td><td>{}</td></tr>",
                h.to.as_str(),
                &h.change.device.to_string()[..8],
                h.change.seq,
                short_time(chrono::DateTime::from_timestamp_millis(h.wall_clock_ms)),
                if h.applied {
                    "applied"
                } else {
                    "not applied (concurrent)"
                }
            )
        })
        .collect();
    let amendments: String = r
        .amendments
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{}</td><td>{}:{}</td><td>{}</td></tr>",
                esc(&a.path),
                &a.change.device.to_string()[..8],
                a.change.seq,
                if a.after_lock {
                    "after approval"
                } else {
                    "after submission"
                }
            )
        })
        .collect();
    // Clocks: changes whose clock ran ahead of what was made after them
    // (the report's own flag), and devices the station found skewed.
    let receipts = s.storage.receipts(&sup.who, id).await?;
    let mut clocks = String::new();
    for f in &r.clock_unset {
        clocks.push_str(&format!(
            "<tr><td>{}:{}</td><td>clock {} was never set (before 2026); ordered after what its author had seen</td></tr>",
            &f.change.device.to_string()[..8],
            f.change.seq,
            esc(&short_time(chrono::DateTime::from_timestamp_millis(
                f.clock_ms.min(i64::MAX as u64) as i64
            ))),
        ));
    }
    for f in &r.clock_ahead {
        clocks.push_str(&format!(
            "<tr><td>{}:{}</td><td>clock {} is later than that of {}:{} made after it ({})</td></tr>",
            &f.change.device.to_string()[..8],
            f.change.seq,
            esc(&short_time(chrono::DateTime::from_timestamp_millis(
                f.clock_ms.min(i64::MAX as u64) as i64
            ))),
            &f.followed_by.device.to_string()[..8],
            f.followed_by.seq,
            esc(&short_time(chrono::DateTime::from_timestamp_millis(
                f.followed_clock_ms.min(i64::MAX as u64) as i64
            ))),
        ));
    }
    for k in &receipts.clock_skew {
        clocks.push_str(&format!(
            "<tr><td>device {}</td><td>clock off by {} s when it pushed (station's receipt)</td></tr>",
            &k.device.to_string()[..8],
            k.skew_ms / 1000
        ));
    }
    let photos: String = r
        .media
        .iter()
        .filter_map(|m| m.fields.sha256.as_ref().map(|sha| (m, sha)))
        .map(|(m, sha)| {
            format!(
                "<figure><img class=photo src=\"/dashboard/media/{sha}\" alt=\"photo {short}\">\
                 <figcaption><code>{short}…</code> {} bytes, {}</figcaption></figure>",
                m.fields.size.unwrap_or(0),
                short_time(m.fields.captured_at),
                short = &sha[..12.min(sha.len())]
            )
        })
        .collect();
    let body = format!(
        "<h1>Report <code>{short}</code> {badge}</h1>{err}\
         <section><h2>Actions</h2>{actions}\
         <p><a href=\"/dashboard/reports/{id}/export\">Download the evidence package</a> (BagIt, tar)</p></section>\
         <section><h2>Conflicts kept</h2>{conflicts}</section>\
         <section><h2>Report</h2>{fields}</section>\
         <section><h2>Photos</h2>{photos}</section>\
         <section><h2>Lifecycle</h2><div class=scroll><table><thead><tr><th>To</th><th>Change</th><th>Device time</th><th></th></tr></thead>\
         <tbody>{history}</tbody></table></div>\
         <h3>Amendments</h3><div class=scroll><table><tbody>{amend}</tbody></table></div>\
         <h3>Clocks</h3><div class=scroll><table><tbody>{clocks}</tbody></table></div></section>",
        short = &id.to_string()[..8],
        badge = lifecycle_badge(r.lifecycle),
        err = if error.is_empty() {
            String::new()
        } else {
            format!("<p class=error role=alert>{}</p>", esc(error))
        },
        actions = actions(&r, sup),
        fields = render_value(&fields),
        photos = if photos.is_empty() { "<p>None.</p>".into() } else { photos },
        amend = if amendments.is_empty() {
            "<tr><td>None.</td></tr>".to_string()
        } else {
            amendments
        },
        clocks = if clocks.is_empty() {
            "<tr><td>No clock flagged.</td></tr>".to_string()
        } else {
            clocks
        },
    );
    Ok(page(
        &format!("Report {}", &id.to_string()[..8]),
        Some(sup),
        &body,
    )
    .into_response())
}

#[derive(Deserialize, Default)]
struct ActionForm {
    #[serde(default)]
    comment: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    felonies: String,
    #[serde(default)]
    findings: String,
    #[serde(default)]
    cpd_conduct: String,
    #[serde(default)]
    dispatch_knew: String,
}

async fn act(
    State(s): State<AppState>,
    PageUser(sup): PageUser,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response> {
    let report = Uuid::parse_str(&id)
        .map_err(|_| StationError::BadRequest("bad_id", "report id must be a UUID".into()))?;
    type Action = Box<dyn FnOnce(&fieldreport_core::Store) -> fieldreport_core::Result<()> + Send>;
    let run: Action = match action.as_str() {
        "return" => Box::new(move |st| st.return_report(report, &f.comment).map(drop)),
        "approve" => Box::new(move |st| st.approve(report).map(drop)),
        "close" => Box::new(move |st| st.close(report).map(drop)),
        "refer" => {
            let date = chrono::NaiveDate::parse_from_str(&f.date, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(12, 0, 0))
                .map(|d| d.and_utc().timestamp_millis())
                .ok_or_else(|| {
                    StationError::BadRequest("bad_date", "the referral date is YYYY-MM-DD".into())
                })?;
            let felonies: Vec<String> = f
                .felonies
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            Box::new(move |st| st.refer(report, date, &f.reference, felonies).map(drop))
        }
        "review" => {
            let knew = f.dispatch_knew == "yes";
            Box::new(move |st| {
                st.record_review(report, &f.findings, &f.cpd_conduct, knew)
                    .map(drop)
            })
        }
        _ => return Err(StationError::NotFound),
    };
    match crate::accounts::act(
        &s.storage,
        &s.signing_stores,
        &s.station_key,
        &sup.who,
        &sup.account,
        report,
        run,
    )
    .await
    {
        Ok(outcome) => {
            tracing::info!(action = %action, "dashboard action");
            if s.local_events {
                for ev in outcome.events {
                    let _ = s.events.send(ev);
                }
            }
            Ok(Redirect::to(&format!("/dashboard/reports/{report}")).into_response())
        }
        Err(StationError::Core(e)) => {
            // The core's refusal, shown on the report (names no data).
            let mut resp = render_report(&s, &sup, &id, &e.to_string()).await?;
            *resp.status_mut() = StatusCode::CONFLICT;
            Ok(resp)
        }
        Err(e) => Err(e),
    }
}

async fn reviews_page(State(s): State<AppState>, PageUser(sup): PageUser) -> Result<Response> {
    let reports = parse_reports(s.storage.visible_reports(&sup.who).await?)?;
    let items = oversight::reviews(&reports, s.clock.now());
    let mut body = String::from("<h1>Internal reviews (30 days)</h1>");
    for (status, title) in [
        (ReviewStatus::Overdue, "Overdue"),
        (ReviewStatus::Due, "Due"),
        (ReviewStatus::DoneLate, "Done late"),
        (ReviewStatus::Done, "Done"),
    ] {
        let rows: String = items
            .iter()
            .filter(|i| i.status == status)
            .map(|i| {
                format!(
                    "<tr><td><a href=\"/dashboard/reports/{id}\">{short}</a></td><td>{}</td><td>due {}</td><td>{}</td></tr>",
                    lifecycle_badge(i.lifecycle),
                    short_time(i.due),
                    i.completed_at.map(|t| format!("done {}", short_time(Some(t)))).unwrap_or_default(),
                    id = i.report_id,
                    short = &i.report_id.to_string()[..8],
                )
            })
            .collect();
        body.push_str(&format!(
            "<section><h2>{title}</h2>{}</section>",
            if rows.is_empty() {
                "<p>None.</p>".to_string()
            } else {
                format!("<div class=scroll><table><tbody>{rows}</tbody></table></div>")
            }
        ));
    }
    Ok(page("Reviews", Some(&sup), &body).into_response())
}

async fn media(
    State(s): State<AppState>,
    DataUser(sup): DataUser,
    Path(sha): Path<String>,
) -> Result<Response> {
    let path = s.storage.media_path(&sup.who, &sha).await?;
    let bytes = tokio::fs::read(path).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            // Not kept in the browser's cache: a station PC is shared,
            // and a photo is evidence.
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

async fn export(
    State(s): State<AppState>,
    DataUser(sup): DataUser,
    Path(id): Path<String>,
) -> Result<Response> {
    let report = Uuid::parse_str(&id)
        .map_err(|_| StationError::BadRequest("bad_id", "report id must be a UUID".into()))?;
    let path = crate::export::export_tar(&s.storage, &sup.who, report, &s.station_id).await?;
    let bytes = tokio::fs::read(&path).await?;
    let _ = tokio::fs::remove_file(&path).await;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"report-{report}.tar\""),
            ),
        ],
        bytes,
    )
        .into_response())
}
