//! The audit log's request side: one entry per request (who, what route,
//! which path, the outcome), written after the response is made. Whatever
//! authenticates a request notes its actor in the request's
//! [`AuditActor`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use crate::state::AppState;
use crate::storage::AuditEntry;

/// Who made a request, for the audit log: filled in by whatever
/// authenticates it (the `Device` extractor, the dashboard session, the
/// enrollment), read by [`audit_layer`] once the response is made.
#[derive(Clone, Default)]
pub struct AuditActor(Arc<std::sync::Mutex<AuditNote>>);

#[derive(Clone, Default)]
struct AuditNote {
    who: Option<String>,
    why: Option<&'static str>,
    /// The matched route (`None`: no route matched the path).
    route: Option<String>,
}

impl AuditActor {
    fn with<T>(&self, f: impl FnOnce(&mut AuditNote) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
    pub fn set(&self, who: String) {
        self.with(|n| n.who = Some(who));
    }
    /// Why a request was refused (no personal data: a fixed phrase).
    pub fn note(&self, why: &'static str) {
        self.with(|n| n.why = Some(why));
    }
    fn get(&self) -> AuditNote {
        self.with(|n| n.clone())
    }
}

/// Tells the audit layer which route matched (it runs before routing).
pub async fn note_route(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let (Some(actor), Some(path)) = (
        req.extensions().get::<AuditActor>(),
        req.extensions().get::<axum::extract::MatchedPath>(),
    ) {
        let route = path.as_str().to_string();
        actor.with(|n| n.route = Some(route));
    }
    next.run(req).await
}

/// Appends one audit entry per request: time, who (a device id, or
/// `anonymous`), the route, the path (ids and hashes only) and the status.
/// Sign-ins are recorded by their handler, which knows the account.
pub async fn audit_layer(
    State(s): State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let actor = AuditActor::default();
    req.extensions_mut().insert(actor.clone());
    let method = req.method().clone();
    let target = req.uri().path().chars().take(200).collect::<String>();
    if target.starts_with("/dashboard") {
        if let Some((who, idle)) = s.sessions.actor(req.headers(), s.clock.now_ms()) {
            actor.set(who);
            if idle {
                actor.note("session ended: idle");
            }
        }
    }
    let resp = next.run(req).await;
    let AuditNote {
        who,
        why: note,
        route,
    } = actor.get();
    // A path no route serves is whatever the client typed (it could be a
    // name): only its first segment's safe characters and a hash are kept.
    let (route, target) = match route {
        Some(r) => (r, target),
        None => ("unrouted".to_string(), unrouted_target(&target)),
    };
    // Sign-ins are written by their handler; one refused before it (from
    // another origin) is written here.
    if route == "/dashboard/login" && method == axum::http::Method::POST && note.is_none() {
        return resp;
    }
    let status = resp.status().as_u16().to_string();
    let entry = AuditEntry {
        id: 0,
        at_ms: s.clock.now_ms(),
        actor: who.unwrap_or_else(|| "anonymous".into()),
        action: format!("{method} {route}"),
        target,
        outcome: match note {
            Some(n) => format!("{status} {n}"),
            None => status,
        },
    };
    if let Err(e) = s.storage.audit(entry).await {
        tracing::error!(error = %e, "audit log write failed");
    }
    resp
}

/// `/first-segment… sha256:0123456789abcdef` for a path no route serves.
fn unrouted_target(path: &str) -> String {
    use sha2::Digest;
    let first: String = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(24)
        .collect();
    let hash = hex::encode(sha2::Sha256::digest(path.as_bytes()));
    format!("/{first}… sha256:{}", &hash[..16])
}
