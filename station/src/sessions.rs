//! The dashboard's sign-in state: live sessions (cookie token, account,
//! CSRF token, idle clock) and, per star number, failed sign-ins, lockouts
//! and the last TOTP step used. HTTP handlers live in [`crate::dashboard`];
//! this module knows nothing of them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Sessions end after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The session cookie's name.
pub const COOKIE: &str = "fr_session";
/// Failed sign-ins in a row that lock an account (CJIS 5.5.3).
pub const MAX_FAILURES: u32 = 5;
/// How long a locked account stays locked.
pub const LOCKOUT: Duration = Duration::from_secs(10 * 60);
/// Star numbers whose failures are tracked at most; beyond it, a quarter
/// of the unlocked ones go, fewest failures first, then oldest: a flood of
/// made-up star numbers (one failure each) does not wipe the count of an
/// account someone is guessing at.
const MAX_TRACKED: usize = 10_000;

/// One signed-in browser.
pub struct Session {
    pub star_number: String,
    pub device_id: Uuid,
    /// Every form of the session carries it; a POST without it is refused.
    pub csrf: String,
    /// Station clock, ms.
    pub last_seen: i64,
    /// Cancelled when the session ends: its open event streams close.
    pub ended: CancellationToken,
}

#[derive(Default)]
struct Attempts {
    failures: u32,
    /// Station clock, ms.
    locked_until: Option<i64>,
    /// Station clock, ms.
    last_failure: i64,
}

pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    /// `IDLE_TIMEOUT`, or `FIELDREPORT_DASHBOARD_IDLE_SECONDS` when set
    /// (shorter for kiosks; the tests use it to see a session end).
    idle_timeout: Duration,
    /// Failed sign-ins per star number (also unknown ones, so a locked-out
    /// answer does not reveal which exist), and the last TOTP step used
    /// per account, so a code works once.
    attempts: Mutex<HashMap<String, Attempts>>,
    /// The last TOTP step used, per account (only accounts that exist and
    /// whose password matched reach it, so it stays small; never evicted,
    /// or a flood of made-up star numbers would reopen used codes).
    totp_steps: Mutex<HashMap<String, u64>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

impl Sessions {
    pub fn new() -> Self {
        let idle_timeout = std::env::var("FIELDREPORT_DASHBOARD_IDLE_SECONDS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(IDLE_TIMEOUT);
        Sessions {
            sessions: Mutex::default(),
            idle_timeout,
            attempts: Mutex::default(),
            totp_steps: Mutex::default(),
        }
    }

    pub fn idle_ms(&self) -> i64 {
        i64::try_from(self.idle_timeout.as_millis()).unwrap_or(i64::MAX)
    }

    /// The live sessions, by cookie token.
    pub fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends a session (its event streams close).
    pub fn end_session(&self, token: &str) {
        if let Some(s) = self.sessions().remove(token) {
            s.ended.cancel();
        }
    }

    fn attempts(&self) -> MutexGuard<'_, HashMap<String, Attempts>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn locked(&self, star: &str, now: i64) -> bool {
        self.attempts()
            .get(star)
            .and_then(|a| a.locked_until)
            .is_some_and(|t| now < t)
    }

    /// Counts a failure; true when it locks the account.
    pub fn fail(&self, star: &str, now: i64) -> bool {
        let mut all = self.attempts();
        if all.len() >= MAX_TRACKED && !all.contains_key(star) {
            let mut unlocked: Vec<(u32, i64, String)> = all
                .iter()
                .filter(|(_, a)| a.locked_until.is_none_or(|t| t <= now))
                .map(|(k, a)| (a.failures, a.last_failure, k.clone()))
                .collect();
            unlocked.sort();
            for (_, _, k) in unlocked.into_iter().take(MAX_TRACKED / 4) {
                all.remove(&k);
            }
        }
        let a = all.entry(star.to_string()).or_default();
        a.last_failure = now;
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

    pub fn succeeded(&self, star: &str) {
        if let Some(a) = self.attempts().get_mut(star) {
            a.failures = 0;
            a.locked_until = None;
        }
    }

    /// Marks a TOTP step used; false if it (or a later one) already was.
    pub fn use_totp_step(&self, star: &str, step: u64) -> bool {
        let mut all = self.totp_steps.lock().unwrap_or_else(|e| e.into_inner());
        let last = all.entry(star.to_string()).or_default();
        if step <= *last {
            return false;
        }
        *last = step;
        true
    }

    /// The CSRF token of the request's live session, if any (without
    /// touching its idle clock).
    pub fn csrf(&self, headers: &HeaderMap, now: i64) -> Option<String> {
        let token = cookie(headers)?;
        let sessions = self.sessions();
        let session = sessions.get(&token)?;
        (now.saturating_sub(session.last_seen) < self.idle_ms()).then(|| session.csrf.clone())
    }

    /// The account device behind a request's session, for the audit log
    /// (without touching the session's idle clock), and whether that
    /// session has just ended for being idle (the request is then refused).
    pub fn actor(&self, headers: &HeaderMap, now: i64) -> Option<(String, bool)> {
        let token = cookie(headers)?;
        let sessions = self.sessions();
        let session = sessions.get(&token)?;
        Some((
            session.device_id.to_string(),
            now.saturating_sub(session.last_seen) >= self.idle_ms(),
        ))
    }
}

/// The session token a request's cookie carries.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_for_ten_minutes_then_count_afresh() {
        let d = Sessions::new();
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

    #[test]
    fn a_flood_of_made_up_star_numbers_resets_no_lock_count_or_used_code() {
        let d = Sessions::new();
        let t0: i64 = 1_800_000_000_000;
        for _ in 1..MAX_FAILURES {
            assert!(!d.fail("1234", t0));
        }
        assert!(d.use_totp_step("1234", 100));
        // Enough unknown star numbers, each failing once and later, to
        // fill the table several times over.
        for i in 0..(MAX_TRACKED * 3) {
            d.fail(&format!("x{i}"), t0 + 1 + i as i64);
        }
        assert!(!d.use_totp_step("1234", 100), "a used code stays used");
        let kept = d.attempts().len();
        assert!(kept <= MAX_TRACKED, "the table stays bounded: {kept}");
        assert!(
            d.fail("1234", t0 + 10 * MAX_TRACKED as i64),
            "the guessed-at account's four failures were kept: the fifth locks"
        );
    }
}
