//! Hybrid logical clock: wall-clock milliseconds plus a counter. It never
//! goes backwards, even when the phone's clock does, and it moves past every
//! timestamp the device has seen from others, so causal order is kept, up
//! to a bound: a peer's clock never moves this device's clock more than
//! [`MAX_CLOCK_AHEAD_MS`] ahead of its own wall clock. One phone set to the
//! year 2100 (or a crafted change) therefore cannot drag every replica into
//! the future; the changes made after seeing it carry earlier clocks than
//! it, and the merge orders them by what they name (`pred`, device chains)
//! before clocks (`crdt::doc`) and flags the far-ahead change.

use serde::{Deserialize, Serialize};

/// How far ahead of this device's own wall clock a peer's clock may move
/// it. Clock skews of a few days (a phone set by hand, no network time)
/// are honoured in full; anything further is not followed.
pub const MAX_CLOCK_AHEAD_MS: u64 = 7 * 24 * 3600 * 1000;

/// 2026-01-01T00:00:00Z, before any FieldReport change was made: a clock
/// earlier than this is a device clock that was never set or was reset
/// (a phone whose battery ran flat reads 1970 or its build date). Such a
/// clock is behind, never the clock of a change it was made after: replay
/// does not let it lower or flag others (`crdt::doc::Causal`).
pub const CLOCK_FLOOR_MS: u64 = 1_767_225_600_000;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub counter: u32,
}

impl Hlc {
    /// The next timestamp for a local event at wall time `now_ms`.
    pub fn tick(self, now_ms: u64) -> Hlc {
        if now_ms > self.wall_ms {
            Hlc {
                wall_ms: now_ms,
                counter: 0,
            }
        } else if self.counter == u32::MAX {
            Hlc {
                wall_ms: self.wall_ms + 1,
                counter: 0,
            }
        } else {
            Hlc {
                wall_ms: self.wall_ms,
                counter: self.counter + 1,
            }
        }
    }

    /// Moves the clock past a timestamp received from a peer, when this
    /// device's wall clock reads `now_ms` — unless that timestamp is beyond
    /// the bound, more than [`MAX_CLOCK_AHEAD_MS`] ahead of `now_ms`: such a
    /// clock is not followed at all (the change is still accepted; the
    /// merge orders what comes after it by causality and flags it).
    pub fn observe(self, remote: Hlc, now_ms: u64) -> Hlc {
        if remote.beyond_bound(now_ms) {
            self
        } else {
            self.max(remote)
        }
    }

    /// Whether this timestamp is more than [`MAX_CLOCK_AHEAD_MS`] ahead of
    /// a wall clock reading `now_ms` (counters aside: a device that
    /// followed a peer to the bound ticks on it).
    pub fn beyond_bound(self, now_ms: u64) -> bool {
        self.wall_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards_when_wall_clock_does() {
        let mut c = Hlc::default();
        let mut seen = Vec::new();
        for now in [1000, 1005, 900, 900, 1005, 2000, 10] {
            c = c.tick(now);
            seen.push(c);
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(
            seen[2],
            Hlc {
                wall_ms: 1005,
                counter: 1
            }
        );
    }

    #[test]
    fn observe_moves_past_remote() {
        let local = Hlc {
            wall_ms: 10,
            counter: 3,
        };
        let remote = Hlc {
            wall_ms: 50,
            counter: 7,
        };
        let after = local.observe(remote, 20).tick(20);
        assert!(after > remote);
    }

    #[test]
    fn observe_follows_a_peer_up_to_the_bound_only() {
        let now = 1_800_000_000_000u64;
        let local = Hlc {
            wall_ms: now,
            counter: 0,
        };
        // Up to the bound (whatever the counter): followed exactly.
        let near = Hlc {
            wall_ms: now + MAX_CLOCK_AHEAD_MS,
            counter: 7,
        };
        assert!(!near.beyond_bound(now));
        assert_eq!(local.observe(near, now), near);
        assert!(local.observe(near, now).tick(now) > near);
        // 80 years ahead: not followed.
        let far = Hlc {
            wall_ms: now + 80 * 365 * 24 * 3600 * 1000,
            counter: 9,
        };
        assert!(far.beyond_bound(now));
        assert_eq!(local.observe(far, now), local);
        // One millisecond past the bound is past it.
        let just = Hlc {
            wall_ms: now + MAX_CLOCK_AHEAD_MS + 1,
            counter: 0,
        };
        assert!(just.beyond_bound(now));
        assert_eq!(local.observe(just, now), local);
        // Never backwards.
        let later = Hlc {
            wall_ms: now + 5,
            counter: 0,
        };
        assert_eq!(later.observe(local, now), later);
        // No overflow near the end of time.
        assert!(!Hlc {
            wall_ms: u64::MAX,
            counter: 0
        }
        .beyond_bound(u64::MAX - 1));
    }

    #[test]
    fn counter_overflow_bumps_wall() {
        let c = Hlc {
            wall_ms: 5,
            counter: u32::MAX,
        }
        .tick(1);
        assert_eq!(
            c,
            Hlc {
                wall_ms: 6,
                counter: 0
            }
        );
    }
}
