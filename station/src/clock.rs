//! The station's one source of "now". Everything that judges time (code
//! and credential expiry, receipt times, audit times, clock-skew flags,
//! dashboard sessions and lock-outs, review due dates) asks the clock its
//! storage was opened with, so tests pass a fixed or shifted one instead of
//! depending on the day they run.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::StationError;

/// Shifts the system clock of a station by this many milliseconds. A test
/// hook (the suite runs once with the station a year ahead to prove no test
/// depends on the real date), honoured only by builds with the
/// `test-clock` feature (the test crate turns it on); a station started
/// shifted logs a warning and `serve` writes an audit entry. Other builds
/// refuse to start while it is set, rather than ignore it silently.
pub const OFFSET_ENV: &str = "FIELDREPORT_CLOCK_OFFSET_MS";

/// The largest shift accepted (ten years either way).
const MAX_OFFSET_MS: i64 = 10 * 366 * 86_400_000;

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    fn now(&self) -> DateTime<Utc> {
        // Every i64 of milliseconds chrono cannot hold is beyond year
        // 262,000 either way; clamp rather than invent a time.
        DateTime::from_timestamp_millis(self.now_ms()).unwrap_or(if self.now_ms() < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
    }
}

/// The machine's clock, shifted by a fixed offset (zero unless
/// [`OFFSET_ENV`] says otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock {
    pub offset_ms: i64,
}

impl SystemClock {
    /// The system clock with the offset [`OFFSET_ENV`] names, if any. A
    /// value that is not a whole number of milliseconds within ten years,
    /// or any value in a build without the `test-clock` feature, is an
    /// error: a station never runs at a time nobody meant.
    pub fn from_env() -> Result<SystemClock, StationError> {
        let Ok(raw) = std::env::var(OFFSET_ENV) else {
            return Ok(SystemClock::default());
        };
        if !cfg!(feature = "test-clock") {
            return Err(StationError::Unavailable(format!(
                "{OFFSET_ENV} is set, but this build has no test clock: unset it"
            )));
        }
        let offset_ms = raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|o| o.abs() <= MAX_OFFSET_MS)
            .ok_or_else(|| {
                StationError::Unavailable(format!(
                    "{OFFSET_ENV} must be whole milliseconds within ten years"
                ))
            })?;
        if offset_ms != 0 {
            tracing::warn!(offset_ms, "station clock shifted by {OFFSET_ENV}");
        }
        Ok(SystemClock { offset_ms })
    }

    pub fn shared() -> Result<Arc<dyn Clock>, StationError> {
        Ok(Arc::new(SystemClock::from_env()?))
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis().saturating_add(self.offset_ms)
    }
}

/// A clock that stands still until told to move (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(ms)))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1_500);
        c.set(10);
        assert_eq!(c.now().timestamp_millis(), 10);
    }

    #[test]
    fn system_clock_offset_shifts_now() {
        let base = SystemClock::default().now_ms();
        let ahead = SystemClock {
            offset_ms: 365 * 86_400_000,
        }
        .now_ms();
        let shift = ahead - base;
        assert!(
            (365 * 86_400_000..365 * 86_400_000 + 5_000).contains(&shift),
            "{shift}"
        );
    }
}
