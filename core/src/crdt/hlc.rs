//! Hybrid logical clock: wall-clock milliseconds plus a counter. It never
//! goes backwards, even when the phone's clock does, and it moves past every
//! timestamp the device has seen from others, so causal order is kept.

use serde::{Deserialize, Serialize};

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

    /// Moves the clock past a timestamp received from a peer.
    pub fn observe(self, remote: Hlc) -> Hlc {
        self.max(remote)
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
        let after = local.observe(remote).tick(20);
        assert!(after > remote);
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
