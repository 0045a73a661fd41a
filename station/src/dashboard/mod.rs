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

use askama::Template;
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
    match page(&RefusedPage {
        chrome: Chrome::signed_out("Refused"),
    }) {
        Ok(html) => (StatusCode::FORBIDDEN, html).into_response(),
        Err(e) => e.into_response(),
    }
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
                match login_form(Some(ACCESS_ENDED)) {
                    Ok(html) => html.into_response(),
                    Err(e) => return Err(e.into_response()),
                }
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

/// A page's template, rendered (askama escapes every value in it).
fn page(t: &impl Template) -> Result<Html<String>> {
    t.render().map(Html).map_err(|e| {
        tracing::error!(error = %e, "a dashboard page did not render");
        StationError::Internal("dashboard page".into())
    })
}

/// The signed-in supervisor, as the page chrome shows them.
struct SignedIn {
    name: String,
    unit: String,
    /// The session's CSRF token, for the sign-out form.
    csrf: String,
}

/// What every page's chrome shows (`templates/dashboard/layout.html`):
/// its title, and when signed in, the navigation, the supervisor's name
/// and unit, and the sign-out form.
struct Chrome {
    title: String,
    user: Option<SignedIn>,
}

impl Chrome {
    fn signed_out(title: &str) -> Self {
        Chrome {
            title: title.to_string(),
            user: None,
        }
    }

    fn signed_in(title: &str, sup: &Supervisor) -> Self {
        Chrome {
            title: title.to_string(),
            user: Some(SignedIn {
                name: sup.name().to_string(),
                unit: sup.unit().to_string(),
                csrf: sup.csrf.clone(),
            }),
        }
    }
}

/// A POST refused by the guard.
#[derive(Template)]
#[template(path = "dashboard/refused.html")]
struct RefusedPage {
    chrome: Chrome,
}

/// The sign-in page, with what went wrong, if anything.
#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage<'a> {
    chrome: Chrome,
    error: Option<&'a str>,
}

async fn login_page() -> Result<Html<String>> {
    login_form(None)
}

fn login_form(error: Option<&str>) -> Result<Html<String>> {
    page(&LoginPage {
        chrome: Chrome::signed_out("Sign in"),
        error,
    })
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
    let refused = |status: StatusCode, message: &str| -> Result<Response> {
        Ok((status, login_form(Some(message))?).into_response())
    };
    // Locked: refused before any check, so guessing gets nowhere.
    if s.sessions.locked(&star, s.clock.now_ms()) {
        audit_sign_in(&s, device, "refused: locked out").await;
        tracing::warn!("dashboard sign-in refused: locked out");
        return refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts. Try again in 10 minutes.",
        );
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
        return refused(
            StatusCode::UNAUTHORIZED,
            "Star number, password or code not recognised.",
        );
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
        return refused(StatusCode::UNAUTHORIZED, ACCESS_ENDED);
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

fn short_time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| {
        t.with_timezone(&chrono_tz::America::Chicago)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    })
    .unwrap_or_else(|| "—".into())
}

/// A hybrid logical clock (milliseconds), as [`short_time`] shows it.
fn clock_time(ms: u64) -> String {
    short_time(chrono::DateTime::from_timestamp_millis(
        ms.min(i64::MAX as u64) as i64,
    ))
}

/// The first 8 characters of an id, as the pages show it.
fn short_id(id: Uuid) -> String {
    id.to_string()[..8].to_string()
}

/// One report of the inbox.
struct InboxRow {
    id: String,
    short: String,
    lifecycle: &'static str,
    officer: String,
    updated: String,
    /// Conflicts kept, to settle.
    conflicts: usize,
    review: ReviewStatus,
    /// When the review is due.
    due: String,
}

/// The inbox page; its rows are `templates/dashboard/inbox_rows.html`,
/// the same as [`InboxRows`].
#[derive(Template)]
#[template(path = "dashboard/inbox.html")]
struct InboxPage {
    chrome: Chrome,
    rows: Vec<InboxRow>,
}

/// The inbox's rows alone (`/dashboard/inbox`, which `app.js` fetches on
/// each event).
#[derive(Template)]
#[template(path = "dashboard/inbox_rows.html")]
struct InboxRows {
    rows: Vec<InboxRow>,
}

async fn inbox_rows(s: &AppState, sup: &Supervisor) -> Result<Vec<InboxRow>> {
    let reports = parse_reports(s.storage.visible_reports(&sup.who).await?)?;
    let now = s.clock.now();
    Ok(reports
        .iter()
        .map(|r| InboxRow {
            id: r.id.to_string(),
            short: short_id(r.id),
            lifecycle: r.lifecycle.as_str(),
            officer: r
                .reporting_officer
                .name
                .clone()
                .unwrap_or_else(|| "—".into()),
            updated: short_time(r.updated_at),
            conflicts: r.conflicts.len(),
            review: oversight::review_status(r, now),
            due: short_time(r.review.due),
        })
        .collect())
}

async fn inbox_page(State(s): State<AppState>, PageUser(sup): PageUser) -> Result<Response> {
    let rows = inbox_rows(&s, &sup).await?;
    Ok(page(&InboxPage {
        chrome: Chrome::signed_in("Inbox", &sup),
        rows,
    })?
    .into_response())
}

async fn inbox_fragment(State(s): State<AppState>, DataUser(sup): DataUser) -> Result<Response> {
    let rows = inbox_rows(&s, &sup).await?;
    Ok(page(&InboxRows { rows })?.into_response())
}

async fn events(
    State(s): State<AppState>,
    DataUser(sup): DataUser,
) -> Sse<impl Stream<Item = std::result::Result<Event, Infallible>>> {
    // The stream closes when the session ends (sign-out, idle, or a
    // refused request once the account's access has ended).
    crate::events::unit_event_stream(&s, sup.unit().to_string(), sup.ended.clone())
}

/// One JSON value of a report's fields (whatever the schema holds), by
/// its own template so that objects and arrays can hold more of them
/// (askama's macros and includes cannot recurse): objects as definition
/// lists, their keys with `_` read as a space; arrays as a `div` an item;
/// null and empty arrays as "—". Every key and string is escaped; the
/// children's output, itself this template's, is the only `|safe`.
#[derive(Template)]
#[template(
    ext = "html",
    source = "
{%- match self.shape() -%}
{%- when Shape::Text(text) -%}
{{ text }}
{%- when Shape::List(items) -%}
{%- for item in items %}<div>{{ item.render()?|safe }}</div>{% endfor -%}
{%- when Shape::Map(entries) -%}
<dl>{% for (key, value) in entries %}<dt>{{ key }}</dt><dd>{{ value.render()?|safe }}</dd>{% endfor %}</dl>
{%- endmatch -%}"
)]
struct ValueNode<'a> {
    v: &'a serde_json::Value,
}

/// What a [`ValueNode`] shows.
enum Shape<'a> {
    Text(String),
    List(Vec<ValueNode<'a>>),
    /// Labels and values.
    Map(Vec<(String, ValueNode<'a>)>),
}

impl<'a> ValueNode<'a> {
    fn shape(&self) -> Shape<'a> {
        use serde_json::Value as J;
        let v: &'a J = self.v;
        match v {
            J::Null => Shape::Text("—".into()),
            J::String(s) => Shape::Text(s.clone()),
            J::Bool(b) => Shape::Text(if *b { "yes" } else { "no" }.into()),
            J::Number(n) => Shape::Text(n.to_string()),
            J::Array(items) if items.is_empty() => Shape::Text("—".into()),
            J::Array(items) => Shape::List(items.iter().map(|v| ValueNode { v }).collect()),
            J::Object(map) => Shape::Map(
                map.iter()
                    .map(|(k, v)| (k.replace('_', " "), ValueNode { v }))
                    .collect(),
            ),
        }
    }
}

/// The actions a report's state allows.
struct Actions {
    /// Submitted: return to the officer, or approve.
    submitted: bool,
    /// Approved: refer to the State's Attorney.
    approved: bool,
    close: bool,
    /// The internal review (any state but draft).
    review: bool,
}

impl Actions {
    fn of(l: LifecycleState) -> Self {
        use LifecycleState::*;
        Actions {
            submitted: l == Submitted,
            approved: l == Approved,
            close: matches!(l, Approved | Referred),
            review: l != Draft,
        }
    }

    fn none(&self) -> bool {
        !(self.submitted || self.approved || self.close || self.review)
    }
}

/// A conflict kept: the field and the concurrent values.
struct ConflictRow {
    path: String,
    values: Vec<KeptValue>,
}

struct KeptValue {
    /// As JSON.
    value: String,
    device: String,
    seq: u64,
}

struct PhotoRow {
    sha: String,
    short: String,
    size: i64,
    captured: String,
}

struct HistoryRow {
    to: &'static str,
    device: String,
    seq: u64,
    time: String,
    applied: bool,
}

struct AmendmentRow {
    path: String,
    device: String,
    seq: u64,
    after_lock: bool,
}

/// Clocks flagged: changes whose clock was never set or ran ahead of what
/// was made after them (the report's own flags), and devices the station
/// found skewed.
#[derive(Default)]
struct Clocks {
    unset: Vec<ClockUnsetRow>,
    ahead: Vec<ClockAheadRow>,
    skew: Vec<ClockSkewRow>,
}

impl Clocks {
    fn is_empty(&self) -> bool {
        self.unset.is_empty() && self.ahead.is_empty() && self.skew.is_empty()
    }
}

struct ClockUnsetRow {
    device: String,
    seq: u64,
    clock: String,
}

struct ClockAheadRow {
    device: String,
    seq: u64,
    clock: String,
    followed_device: String,
    followed_seq: u64,
    followed_clock: String,
}

struct ClockSkewRow {
    device: String,
    seconds: i64,
}

/// The report page.
#[derive(Template)]
#[template(path = "dashboard/report.html")]
struct ReportPage<'a> {
    chrome: Chrome,
    /// The session's CSRF token, for the action forms.
    csrf: String,
    id: String,
    short: String,
    lifecycle: &'static str,
    /// The core's refusal of the last action.
    error: Option<&'a str>,
    actions: Actions,
    conflicts: Vec<ConflictRow>,
    /// The report's own fields.
    fields: ValueNode<'a>,
    photos: Vec<PhotoRow>,
    history: Vec<HistoryRow>,
    amendments: Vec<AmendmentRow>,
    clocks: Clocks,
}

async fn report_page(
    State(s): State<AppState>,
    PageUser(sup): PageUser,
    Path(id): Path<String>,
) -> Result<Response> {
    render_report(&s, &sup, &id, None).await
}

async fn render_report(
    s: &AppState,
    sup: &Supervisor,
    id: &str,
    error: Option<&str>,
) -> Result<Response> {
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
    let conflicts = r
        .conflicts
        .iter()
        .map(|c| ConflictRow {
            path: c.path.clone(),
            values: c
                .values
                .iter()
                .map(|v| KeptValue {
                    value: serde_json::to_string(&v.value).unwrap_or_default(),
                    device: short_id(v.device),
                    seq: v.seq,
                })
                .collect(),
        })
        .collect();
    let history = r
        .lifecycle_history
        .iter()
        .map(|h| HistoryRow {
            to: h.to.as_str(),
            device: short_id(h.change.device),
            seq: h.change.seq,
            time: short_time(chrono::DateTime::from_timestamp_millis(h.wall_clock_ms)),
            applied: h.applied,
        })
        .collect();
    let amendments = r
        .amendments
        .iter()
        .map(|a| AmendmentRow {
            path: a.path.clone(),
            device: short_id(a.change.device),
            seq: a.change.seq,
            after_lock: a.after_lock,
        })
        .collect();
    let receipts = s.storage.receipts(&sup.who, id).await?;
    let clocks = Clocks {
        unset: r
            .clock_unset
            .iter()
            .map(|f| ClockUnsetRow {
                device: short_id(f.change.device),
                seq: f.change.seq,
                clock: clock_time(f.clock_ms),
            })
            .collect(),
        ahead: r
            .clock_ahead
            .iter()
            .map(|f| ClockAheadRow {
                device: short_id(f.change.device),
                seq: f.change.seq,
                clock: clock_time(f.clock_ms),
                followed_device: short_id(f.followed_by.device),
                followed_seq: f.followed_by.seq,
                followed_clock: clock_time(f.followed_clock_ms),
            })
            .collect(),
        skew: receipts
            .clock_skew
            .iter()
            .map(|k| ClockSkewRow {
                device: short_id(k.device),
                seconds: k.skew_ms / 1000,
            })
            .collect(),
    };
    let photos = r
        .media
        .iter()
        .filter_map(|m| m.fields.sha256.as_ref().map(|sha| (m, sha)))
        .map(|(m, sha)| PhotoRow {
            sha: sha.clone(),
            short: sha[..12.min(sha.len())].to_string(),
            size: m.fields.size.unwrap_or(0),
            captured: short_time(m.fields.captured_at),
        })
        .collect();
    let short = short_id(id);
    Ok(page(&ReportPage {
        chrome: Chrome::signed_in(&["Report ", &short].concat(), sup),
        csrf: sup.csrf.clone(),
        id: id.to_string(),
        short,
        lifecycle: r.lifecycle.as_str(),
        error,
        actions: Actions::of(r.lifecycle),
        conflicts,
        fields: ValueNode { v: &fields },
        photos,
        history,
        amendments,
        clocks,
    })?
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
            let mut resp = render_report(&s, &sup, &id, Some(&e.to_string())).await?;
            *resp.status_mut() = StatusCode::CONFLICT;
            Ok(resp)
        }
        Err(e) => Err(e),
    }
}

/// One list of the reviews page.
struct ReviewSection {
    title: &'static str,
    rows: Vec<ReviewRow>,
}

struct ReviewRow {
    id: String,
    short: String,
    lifecycle: &'static str,
    due: String,
    /// When the review was done.
    done: Option<String>,
}

/// The 30-day review lists.
#[derive(Template)]
#[template(path = "dashboard/reviews.html")]
struct ReviewsPage {
    chrome: Chrome,
    sections: Vec<ReviewSection>,
}

async fn reviews_page(State(s): State<AppState>, PageUser(sup): PageUser) -> Result<Response> {
    let reports = parse_reports(s.storage.visible_reports(&sup.who).await?)?;
    let items = oversight::reviews(&reports, s.clock.now());
    let sections = [
        (ReviewStatus::Overdue, "Overdue"),
        (ReviewStatus::Due, "Due"),
        (ReviewStatus::DoneLate, "Done late"),
        (ReviewStatus::Done, "Done"),
    ]
    .into_iter()
    .map(|(status, title)| ReviewSection {
        title,
        rows: items
            .iter()
            .filter(|i| i.status == status)
            .map(|i| ReviewRow {
                id: i.report_id.to_string(),
                short: short_id(i.report_id),
                lifecycle: i.lifecycle.as_str(),
                due: short_time(i.due),
                done: i.completed_at.map(|t| short_time(Some(t))),
            })
            .collect(),
    })
    .collect();
    Ok(page(&ReviewsPage {
        chrome: Chrome::signed_in("Reviews", &sup),
        sections,
    })?
    .into_response())
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
    let path = crate::export::export_tar(&s.storage, &s.attestors, &sup.who, report, &s.station_id)
        .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "<script>alert(\"x\" + 'y')</script> & more";
    /// As askama escapes it (numeric character references).
    const ESCAPED: &str =
        "&#60;script&#62;alert(&#34;x&#34; + &#39;y&#39;)&#60;/script&#62; &#38; more";

    fn hostile_chrome(title: &str) -> Chrome {
        Chrome {
            title: title.into(),
            user: Some(SignedIn {
                name: ["Sgt ", HOSTILE].concat(),
                unit: ["D9", HOSTILE].concat(),
                csrf: "0123abcd".into(),
            }),
        }
    }

    /// Only the page's own script tag, no other markup from the data.
    fn no_injected_markup(html: &str) {
        assert!(!html.contains("<script>"), "{html}");
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(!html.contains("alert(\"x\""), "{html}");
        assert!(!html.contains("'y'"), "{html}");
    }

    #[test]
    fn values_render_as_nested_lists() {
        let v = serde_json::json!({
            "a_b": [1, true, null, "t"],
            "c": {"d_e": false},
            "f": [],
            "g": null,
        });
        assert_eq!(
            ValueNode { v: &v }.render().unwrap(),
            "<dl><dt>a b</dt><dd><div>1</div><div>yes</div><div>—</div><div>t</div></dd>\
             <dt>c</dt><dd><dl><dt>d e</dt><dd>no</dd></dl></dd><dt>f</dt><dd>—</dd>\
             <dt>g</dt><dd>—</dd></dl>"
        );
        assert_eq!(
            ValueNode {
                v: &serde_json::json!(HOSTILE)
            }
            .render()
            .unwrap(),
            ESCAPED
        );
    }

    #[test]
    fn the_report_page_escapes_every_value() {
        let fields = serde_json::json!({
            HOSTILE: HOSTILE,
            "narrative": HOSTILE,
            "nested": [[HOSTILE], {"inner_key": [HOSTILE]}],
        });
        let view = ReportPage {
            chrome: hostile_chrome(HOSTILE),
            csrf: "0123abcd".into(),
            id: "00000000-0000-0000-0000-000000000000".into(),
            short: "00000000".into(),
            lifecycle: LifecycleState::Submitted.as_str(),
            error: Some(HOSTILE),
            actions: Actions::of(LifecycleState::Submitted),
            conflicts: vec![ConflictRow {
                path: HOSTILE.into(),
                values: vec![KeptValue {
                    value: serde_json::to_string(HOSTILE).unwrap(),
                    device: "abcdef01".into(),
                    seq: 3,
                }],
            }],
            fields: ValueNode { v: &fields },
            photos: vec![],
            history: vec![],
            amendments: vec![AmendmentRow {
                path: HOSTILE.into(),
                device: "abcdef01".into(),
                seq: 4,
                after_lock: false,
            }],
            clocks: Clocks::default(),
        };
        let html = view.render().unwrap();
        no_injected_markup(&html);
        // The field key (`_` read as a space), its value, the nested
        // array's and object's strings, the error, the signed-in name and
        // unit, the title, the conflict and the amendment.
        assert!(html.contains(&format!("<dt>{ESCAPED}</dt><dd>{ESCAPED}</dd>")));
        assert!(html.contains(&format!("<dt>narrative</dt><dd>{ESCAPED}</dd>")));
        assert!(html.contains(&format!(
            "<dt>nested</dt><dd><div><div>{ESCAPED}</div></div><div><dl><dt>inner key</dt>\
             <dd><div>{ESCAPED}</div></dd></dl></div></dd>"
        )));
        assert!(html.contains(&format!("<p class=error role=alert>{ESCAPED}</p>")));
        assert!(html.contains(&format!("<span>Sgt {ESCAPED} · D9{ESCAPED}</span>")));
        assert!(html.contains(&format!("<title>{ESCAPED} · FieldReport</title>")));
        assert!(html.contains(&format!("<tr><td>{ESCAPED}</td><td>&#34;")));
        assert!(html.contains(&format!(
            "<tr><td>{ESCAPED}</td><td>abcdef01:4</td><td>after submission</td></tr>"
        )));
        // Every form carries the token (under the name the guard reads);
        // the actions of a submitted report.
        assert!(html.contains(&["name=", CSRF_FIELD, " value="].concat()));
        assert_eq!(
            html.matches("<input type=hidden name=csrf value=\"0123abcd\">")
                .count(),
            4,
            "sign out, return, approve, review: {html}"
        );
        assert!(html.contains("<h1>Report <code>00000000</code> <span class=\"badge submitted\">submitted</span></h1>"));
        assert!(html.contains("Return to officer") && !html.contains("No action in this state."));
        assert!(html.contains("<tr><td>No clock flagged.</td></tr>"));
        assert!(html.contains("<section><h2>Photos</h2><p>None.</p></section>"));
    }

    #[test]
    fn an_inbox_row_escapes_the_officer_name() {
        let row = || InboxRow {
            id: "11111111-2222-3333-4444-555555555555".into(),
            short: "11111111".into(),
            lifecycle: LifecycleState::Submitted.as_str(),
            officer: HOSTILE.into(),
            updated: "2026-11-24 12:00 CST".into(),
            conflicts: 2,
            review: ReviewStatus::Overdue,
            due: "—".into(),
        };
        let rows = InboxRows { rows: vec![row()] }.render().unwrap();
        assert_eq!(
            rows,
            format!(
                "<tr data-report=\"11111111-2222-3333-4444-555555555555\"><td>\
                 <a href=\"/dashboard/reports/11111111-2222-3333-4444-555555555555\">11111111</a></td>\
                 <td><span class=\"badge submitted\">submitted</span></td><td>{ESCAPED}</td>\
                 <td>2026-11-24 12:00 CST</td><td>2 to settle</td>\
                 <td><span class=overdue>overdue</span></td></tr>"
            )
        );
        assert_eq!(
            InboxRows { rows: vec![] }.render().unwrap(),
            "<tr><td colspan=6>No reports from the unit yet.</td></tr>"
        );
        // The page holds the same rows, under a hostile signed-in name.
        let html = InboxPage {
            chrome: hostile_chrome("Inbox"),
            rows: vec![row()],
        }
        .render()
        .unwrap();
        no_injected_markup(&html);
        assert!(
            html.contains(&format!("<tbody id=inbox>{rows}</tbody>")),
            "{html}"
        );
    }

    #[test]
    fn sign_in_and_refusal_pages() {
        let html = LoginPage {
            chrome: Chrome::signed_out("Sign in"),
            error: Some(HOSTILE),
        }
        .render()
        .unwrap();
        no_injected_markup(&html);
        assert!(html.contains(&format!("<p class=error role=alert>{ESCAPED}</p>")));
        assert!(!html.contains("Sign out") && !html.contains("name=csrf"));
        let html = LoginPage {
            chrome: Chrome::signed_out("Sign in"),
            error: None,
        }
        .render()
        .unwrap();
        assert!(!html.contains("role=alert") && html.contains("name=code"));
        let html = RefusedPage {
            chrome: Chrome::signed_out("Refused"),
        }
        .render()
        .unwrap();
        assert!(html.contains(
            "<p class=error role=alert>This form did not come from this dashboard's own page"
        ));
    }
}
