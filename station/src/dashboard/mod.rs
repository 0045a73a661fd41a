//! The supervisor dashboard: plain server-rendered pages with a little
//! JavaScript, served by the station under `/dashboard`.
//!
//! - sign-in with star number and password (`users`), a session cookie
//!   (`HttpOnly`, `Secure`, `SameSite=Strict`) that ends after 30 minutes idle;
//! - the inbox of the unit's reports, updating live from the station's
//!   event stream (`/dashboard/events`, Server-Sent Events);
//! - a report page with its fields, kept conflicts, lifecycle history,
//!   amendments and photos, and the return / approve / refer / close and
//!   review actions, signed by the account's own device (`users::act`);
//! - the 30-day review lists and the evidence package download.

pub mod users;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use fieldreport_core::model::LifecycleState;
use fieldreport_core::Report;
use futures_util::Stream;
use serde::Deserialize;
use uuid::Uuid;

use crate::api::{parse_reports, AppState};
use crate::error::{Result, StationError};
use crate::oversight::{self, ReviewStatus};
use crate::storage::Enrolled;
use users::Account;

/// Sessions end after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const COOKIE: &str = "fr_session";

struct Session {
    star_number: String,
    /// Station clock, ms.
    last_seen: i64,
}

pub struct Dashboard {
    sessions: Mutex<HashMap<String, Session>>,
    /// `IDLE_TIMEOUT`, or `FIELDREPORT_DASHBOARD_IDLE_SECONDS` when set
    /// (shorter for kiosks; the tests use it to see a session end).
    idle_timeout: Duration,
    stores: users::Stores,
    /// Failed sign-ins per star number (also unknown ones, so a locked-out
    /// answer does not reveal which exist), and the last TOTP step used
    /// per account, so a code works once.
    attempts: Mutex<HashMap<String, Attempts>>,
}

impl Default for Dashboard {
    fn default() -> Self {
        let idle_timeout = std::env::var("FIELDREPORT_DASHBOARD_IDLE_SECONDS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(IDLE_TIMEOUT);
        Dashboard {
            sessions: Mutex::default(),
            idle_timeout,
            stores: users::Stores::default(),
            attempts: Mutex::default(),
        }
    }
}

#[derive(Default)]
struct Attempts {
    failures: u32,
    /// Station clock, ms.
    locked_until: Option<i64>,
    last_totp_step: u64,
}

/// Failed sign-ins in a row that lock an account (CJIS 5.5.3).
pub const MAX_FAILURES: u32 = 5;
/// How long a locked account stays locked.
pub const LOCKOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// Star numbers tracked at most; beyond it, the oldest unlocked go.
const MAX_TRACKED: usize = 10_000;

impl Dashboard {
    fn idle_ms(&self) -> i64 {
        i64::try_from(self.idle_timeout.as_millis()).unwrap_or(i64::MAX)
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attempts>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn locked(&self, star: &str, now: i64) -> bool {
        self.attempts()
            .get(star)
            .and_then(|a| a.locked_until)
            .is_some_and(|t| now < t)
    }

    /// Counts a failure; true when it locks the account.
    fn fail(&self, star: &str, now: i64) -> bool {
        let mut all = self.attempts();
        if all.len() >= MAX_TRACKED && !all.contains_key(star) {
            all.retain(|_, a| a.locked_until.is_some_and(|t| t > now));
        }
        let a = all.entry(star.to_string()).or_default();
        if a.locked_until.is_some_and(|t| now >= t) {
            // A lock that ran out starts a fresh count.
            a.failures = 0;
            a.locked_until = None;
        }
        a.failures += 1;
        if a.failures >= MAX_FAILURES {
            a.locked_until = Some(now.saturating_add(LOCKOUT.as_millis() as i64));
            return true;
        }
        false
    }

    fn succeeded(&self, star: &str) {
        if let Some(a) = self.attempts().get_mut(star) {
            a.failures = 0;
            a.locked_until = None;
        }
    }

    /// Marks a TOTP step used; false if it (or a later one) already was.
    fn use_totp_step(&self, star: &str, step: u64) -> bool {
        let mut all = self.attempts();
        let a = all.entry(star.to_string()).or_default();
        if step <= a.last_totp_step {
            return false;
        }
        a.last_totp_step = step;
        true
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(inbox_page))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/inbox", get(inbox_fragment))
        .route("/dashboard/events", get(events))
        .route("/dashboard/reviews", get(reviews_page))
        .route("/dashboard/reports/{id}", get(report_page))
        .route("/dashboard/reports/{id}/export", get(export))
        .route("/dashboard/reports/{id}/{action}", post(act))
        .route("/dashboard/media/{sha}", get(media))
}

/// The signed-in supervisor of a request: account and storage identity.
struct Supervisor {
    account: Account,
    who: Enrolled,
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

async fn supervisor(s: &AppState, headers: &HeaderMap) -> Option<Supervisor> {
    let token = cookie(headers)?;
    let star = {
        let mut sessions = s
            .dashboard
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = s.clock.now_ms();
        let idle = s.dashboard.idle_ms();
        sessions.retain(|_, v| now.saturating_sub(v.last_seen) < idle);
        let session = sessions.get_mut(&token)?;
        session.last_seen = now;
        session.star_number.clone()
    };
    let dir = users::dashboard_dir(s.storage.as_ref());
    let account = users::load(&dir)
        .ok()?
        .into_iter()
        .find(|a| a.star_number == star)?;
    let who = s.storage.authenticate(&account.credential).await.ok()??;
    Some(Supervisor { account, who })
}

/// The account device behind a request's session, for the audit log
/// (without touching the session's idle clock).
/// and whether that session has just ended for being idle (the request is
/// then refused).
pub fn session_actor(s: &AppState, headers: &HeaderMap) -> Option<(String, bool)> {
    let token = cookie(headers)?;
    let (star, idle) = {
        let sessions = s
            .dashboard
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(&token)?;
        (
            session.star_number.clone(),
            s.clock.now_ms().saturating_sub(session.last_seen) >= s.dashboard.idle_ms(),
        )
    };
    users::load(&users::dashboard_dir(s.storage.as_ref()))
        .ok()?
        .into_iter()
        .find(|a| a.star_number == star)
        .map(|a| (a.device_id.to_string(), idle))
}

async fn audit_sign_in(s: &AppState, account: Option<&Account>, outcome: &str) {
    let entry = crate::storage::AuditEntry {
        id: 0,
        at_ms: s.clock.now_ms(),
        actor: account
            .map(|a| a.device_id.to_string())
            .unwrap_or_else(|| "unknown account".into()),
        action: "POST /dashboard/login".into(),
        target: "/dashboard/login".into(),
        outcome: outcome.into(),
    };
    if let Err(e) = s.storage.audit(entry).await {
        tracing::error!(error = %e, "audit log write failed");
    }
}

/// Pages answer a missing session with the sign-in page.
async fn require(s: &AppState, headers: &HeaderMap) -> std::result::Result<Supervisor, Response> {
    supervisor(s, headers)
        .await
        .ok_or_else(|| Redirect::to("/dashboard/login").into_response())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "
*{box-sizing:border-box}body{font-family:system-ui,-apple-system,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#17324d;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1.2rem;align-items:center}
header a,header button{color:#fff;text-decoration:none;background:none;border:0;font:inherit;cursor:pointer;padding:0}
header strong{margin-right:auto}main{max-width:70rem;margin:0 auto;padding:1rem}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #dde1e6;padding:.45rem .5rem;text-align:left;vertical-align:top}
.badge{display:inline-block;padding:.1rem .45rem;border-radius:.6rem;font-size:.85em;background:#e4e8ee}
.submitted{background:#fff1c2}.returned{background:#ffd9d2}.approved{background:#d7f2dc}.referred{background:#dbe7ff}.closed{background:#e4e8ee}
.overdue{color:#a3140b;font-weight:600}.new{animation:flash 3s}@keyframes flash{from{background:#fff1c2}to{background:#fff}}
section{background:#fff;border:1px solid #dde1e6;border-radius:.4rem;padding:.8rem 1rem;margin:1rem 0}
dl{display:grid;grid-template-columns:minmax(8rem,14rem) 1fr;gap:.3rem 1rem;margin:0}dt{color:#56606b}dd{margin:0;word-break:break-word}
form.action{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin:.5rem 0}
label{display:flex;flex-direction:column;font-size:.9em;gap:.2rem}input,textarea,button{font:inherit;padding:.4rem .5rem}
button{background:#17324d;color:#fff;border:0;border-radius:.3rem;cursor:pointer}.error{color:#a3140b}
img.photo{max-width:14rem;max-height:14rem;border:1px solid #dde1e6;margin:.3rem}.scroll{overflow-x:auto}
@media (max-width:40rem){dl{grid-template-columns:1fr}dt{font-weight:600}td,th{padding:.35rem .3rem}}
";

fn page(title: &str, signed_in: Option<&Supervisor>, body: &str) -> Html<String> {
    let nav = match signed_in {
        Some(sup) => format!(
            "<a href=\"/dashboard\">Inbox</a><a href=\"/dashboard/reviews\">Reviews</a>\
             <a href=\"/public\">Public record</a><span>{} · {}</span>\
             <form method=post action=\"/dashboard/logout\"><button>Sign out</button></form>",
            esc(&sup.account.name),
            esc(&sup.account.unit)
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{} · FieldReport</title><style>{STYLE}</style></head><body>\
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
    let dir = users::dashboard_dir(s.storage.as_ref());
    let account = users::load(&dir)?
        .into_iter()
        .find(|a| a.star_number == star);
    let refused = |status: StatusCode, message: &str| {
        (status, page("Sign in", None, &login_form(message))).into_response()
    };
    // Locked: refused before any check, so guessing gets nowhere.
    if s.dashboard.locked(&star, s.clock.now_ms()) {
        audit_sign_in(&s, account.as_ref(), "refused: locked out").await;
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
        users::password_matches(&hash.unwrap_or_else(dummy_hash), &password)
    })
    .await
    .unwrap_or(false);
    let code: String = f.code.chars().filter(|c| !c.is_whitespace()).collect();
    let totp_step = account
        .as_ref()
        .and_then(|a| users::totp(&a.totp_secret))
        .and_then(|t| {
            let now = u64::try_from(s.clock.now_ms() / 1000).ok()?;
            // The step the code belongs to (drift of one step allowed).
            [now, now.saturating_sub(30), now + 30]
                .into_iter()
                .find(|t2| t.generate(*t2) == code)
                .map(|t2| t2 / 30)
        });
    let outcome = match (&account, password_ok, totp_step) {
        (None, _, _) => Err("refused: unknown account"),
        (Some(_), false, _) => Err("refused: wrong password"),
        (Some(a), true, _) if a.totp_secret.is_empty() => Err("refused: no second factor set up"),
        (Some(_), true, None) => Err("refused: wrong second factor"),
        (Some(_), true, Some(step)) if !s.dashboard.use_totp_step(&star, step) => {
            Err("refused: second factor code already used")
        }
        (Some(_), true, Some(_)) => Ok(()),
    };
    if let Err(why) = outcome {
        let locked_now = s.dashboard.fail(&star, s.clock.now_ms());
        audit_sign_in(&s, account.as_ref(), why).await;
        if locked_now {
            audit_sign_in(&s, account.as_ref(), "locked out for 10 minutes").await;
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
    s.dashboard.succeeded(&star);
    let mut token = [0u8; 32];
    getrandom::fill(&mut token).map_err(|_| StationError::Internal("no randomness".into()))?;
    let token = hex::encode(token);
    s.dashboard
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            token.clone(),
            Session {
                star_number: account.star_number.clone(),
                last_seen: s.clock.now_ms(),
            },
        );
    tracing::info!("dashboard sign-in");
    audit_sign_in(&s, Some(&account), "signed in").await;
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
            users::hash_password(&hex::encode(pw)).unwrap_or_default()
        })
        .clone()
}

async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(t) = cookie(&headers) {
        s.dashboard
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/dashboard; Max-Age=0"),
        )],
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

async fn inbox_page(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let sup = match require(&s, &headers).await {
        Ok(sup) => sup,
        Err(r) => return Ok(r),
    };
    let rows = inbox_rows(&s, &sup).await?;
    let body = format!(
        "<h1>Inbox</h1><p id=live aria-live=polite>Updates live as officers sync.</p>\
         <div class=scroll><table><thead><tr><th>Report</th><th>State</th><th>Officer</th>\
         <th>Updated</th><th>Conflicts</th><th>Review</th></tr></thead>\
         <tbody id=inbox>{rows}</tbody></table></div>\
         <script>
         const inbox = document.getElementById('inbox');
         const live = document.getElementById('live');
         async function refresh(changed) {{
           const r = await fetch('/dashboard/inbox', {{credentials: 'same-origin'}});
           if (!r.ok) return;
           inbox.innerHTML = await r.text();
           if (changed) {{
             const row = inbox.querySelector('[data-report=\"' + changed + '\"]');
             if (row) row.classList.add('new');
             live.textContent = 'Report ' + changed.slice(0, 8) + ' updated just now.';
           }}
         }}
         const es = new EventSource('/dashboard/events');
         es.addEventListener('report', e => refresh(JSON.parse(e.data).report_id));
         es.addEventListener('lagged', () => refresh(null));
         // Catch up on anything that changed between rendering and connecting.
         es.addEventListener('open', () => refresh(null));
         </script>"
    );
    Ok(page("Inbox", Some(&sup), &body).into_response())
}

async fn inbox_fragment(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let Some(sup) = supervisor(&s, &headers).await else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
    Ok(Html(inbox_rows(&s, &sup).await?).into_response())
}

async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> std::result::Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>, StatusCode>
{
    let sup = supervisor(&s, &headers)
        .await
        .ok_or(StatusCode::UNAUTHORIZED)?;
    Ok(crate::api::unit_event_stream(&s, sup.account.unit))
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

fn actions(r: &Report) -> String {
    use LifecycleState::*;
    let id = r.id;
    let mut out = String::new();
    match r.lifecycle {
        Submitted => out.push_str(&format!(
            "<form method=post action=\"/dashboard/reports/{id}/return\" class=action>\
             <label>Comment for the officer<textarea name=comment rows=2 required></textarea></label>\
             <button>Return to officer</button></form>\
             <form method=post action=\"/dashboard/reports/{id}/approve\" class=action>\
             <button>Approve</button></form>"
        )),
        Approved => out.push_str(&format!(
            "<form method=post action=\"/dashboard/reports/{id}/refer\" class=action>\
             <label>Referral date<input type=date name=date required></label>\
             <label>State's Attorney reference<input name=reference required></label>\
             <label>Felony matters (one per line)<textarea name=felonies rows=2 required></textarea></label>\
             <button>Refer to the State's Attorney</button></form>"
        )),
        _ => {}
    }
    if matches!(r.lifecycle, Approved | Referred) {
        out.push_str(&format!(
            "<form method=post action=\"/dashboard/reports/{id}/close\" class=action><button>Close</button></form>"
        ));
    }
    if r.lifecycle != Draft {
        out.push_str(&format!(
            "<h3>Internal review</h3><form method=post action=\"/dashboard/reports/{id}/review\" class=action>\
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let sup = match require(&s, &headers).await {
        Ok(sup) => sup,
        Err(r) => return Ok(r),
    };
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
        actions = actions(&r),
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
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response> {
    let sup = match require(&s, &headers).await {
        Ok(sup) => sup,
        Err(r) => return Ok(r),
    };
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
    match users::act(
        &s.storage,
        &s.dashboard.stores,
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

async fn reviews_page(State(s): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let sup = match require(&s, &headers).await {
        Ok(sup) => sup,
        Err(r) => return Ok(r),
    };
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
    headers: HeaderMap,
    Path(sha): Path<String>,
) -> Result<Response> {
    let Some(sup) = supervisor(&s, &headers).await else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
    let path = s.storage.media_path(&sup.who, &sha).await?;
    let bytes = tokio::fs::read(path).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

async fn export(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let Some(sup) = supervisor(&s, &headers).await else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_for_ten_minutes_then_count_afresh() {
        let d = Dashboard::default();
        let t0: i64 = 1_800_000_000_000;
        let lockout = LOCKOUT.as_millis() as i64;
        for i in 1..MAX_FAILURES {
            assert!(!d.fail("1234", t0), "failure {i} locked");
            assert!(!d.locked("1234", t0));
        }
        assert!(d.fail("1234", t0), "the fifth failure locks");
        assert!(d.locked("1234", t0));
        assert!(d.locked("1234", t0 + lockout - 1000));
        assert!(!d.locked("other", t0), "other accounts are not locked");
        assert!(
            !d.locked("1234", t0 + lockout),
            "the lock ends after 10 minutes"
        );
        // After the lock: a fresh count, not an instant relock.
        assert!(!d.fail("1234", t0 + lockout));
        assert!(!d.locked("1234", t0 + lockout));
        // A success resets the count.
        d.succeeded("1234");
        for _ in 1..MAX_FAILURES {
            assert!(!d.fail("1234", t0 + lockout));
        }
        // A code's step works once, and not an older one after it.
        assert!(d.use_totp_step("1234", 100));
        assert!(!d.use_totp_step("1234", 100));
        assert!(!d.use_totp_step("1234", 99));
        assert!(d.use_totp_step("1234", 101));
    }
}
