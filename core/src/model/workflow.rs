//! The report lifecycle and who may do what, shared by the phone and the
//! station so both always agree.
//!
//! Lifecycle: draft → submitted → (returned → submitted)* → approved →
//! referred → closed, or approved → closed. A transition is an operation
//! setting `lifecycle.state`; the state is not that register's value but
//! the result of replaying every such operation in one deterministic order
//! (HLC, device, seq). A step that does not fit the state reached so far
//! (say an approval concurrent with a return) is kept in the history and
//! marked not applied. So concurrent lifecycle changes never show as a
//! conflict and every replica with the same changes reaches the same state.
//!
//! Who: [`authorize`] checks each received change against its author's
//! enrolled person, statically (without the report's state), so it gives
//! the same answer wherever and whenever it runs:
//! - officers of the report's unit write the report's fields and entries,
//!   and submit;
//! - supervisors of the report's unit return, approve, refer, close and
//!   record the internal review; of the report's own fields they may only
//!   add addenda.
//!
//! The state-dependent rules (edit only before approval, approve only a
//! submitted report, …) are enforced where a change is authored
//! (`Store`), and after the fact in the materialised report: amendments
//! after submission and edits concurrent with an approval are listed as
//! such, never dropped.

use serde::{Deserialize, Serialize};

use super::enums::{LifecycleState, Role};
use super::schema::{self, Access, ADDENDA_COLLECTION, LIFECYCLE_FIELD};
use crate::crdt::{ChangeBody, ChangeId, Hlc, Target};
use crate::error::{Error, Result};
use crate::evidence::Person;
use crate::model::value::Value;

/// Whether `from → to` is a lifecycle transition (regardless of who).
pub fn transition_allowed(from: LifecycleState, to: LifecycleState) -> bool {
    use LifecycleState::*;
    matches!(
        (from, to),
        (Draft, Submitted)
            | (Returned, Submitted)
            | (Submitted, Returned)
            | (Submitted, Approved)
            | (Approved, Referred)
            | (Approved, Closed)
            | (Referred, Closed)
    )
}

/// Whether a transition to `to` is a supervisor's.
pub fn by_supervisor(to: LifecycleState) -> bool {
    use LifecycleState::*;
    matches!(to, Returned | Approved | Referred | Closed)
}

/// Fields are locked from approval on; only addenda may be added.
pub fn locked(state: LifecycleState) -> bool {
    use LifecycleState::*;
    matches!(state, Approved | Referred | Closed)
}

/// One lifecycle operation, in replay order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleStep {
    pub to: LifecycleState,
    pub change: ChangeId,
    pub clock_ms: u64,
    pub clock_counter: u32,
    pub wall_clock_ms: i64,
    /// False when it did not fit the state reached before it (kept anyway).
    pub applied: bool,
}

/// An edit of the report's own content made after its first submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Amendment {
    pub path: String,
    pub change: ChangeId,
    pub wall_clock_ms: i64,
    /// Made concurrently with or after the approval that locked the fields.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub after_lock: bool,
}

/// The result of the replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub state: LifecycleState,
    pub steps: Vec<LifecycleStep>,
    /// HLC of the first applied submission and of the first applied approval.
    pub submitted: Option<Hlc>,
    pub locked: Option<Hlc>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            state: LifecycleState::Draft,
            steps: Vec::new(),
            submitted: None,
            locked: None,
        }
    }
}

/// Replays lifecycle operations `(hlc, change, wall clock, target state)`.
pub fn replay(mut ops: Vec<(Hlc, ChangeId, i64, LifecycleState)>) -> Lifecycle {
    ops.sort_by_key(|(hlc, id, _, _)| (*hlc, *id));
    let mut out = Lifecycle::default();
    for (hlc, change, wall, to) in ops {
        // The creation's `draft` is the start, not a step.
        if to == LifecycleState::Draft {
            continue;
        }
        let applied = transition_allowed(out.state, to);
        if applied {
            out.state = to;
            if to == LifecycleState::Submitted && out.submitted.is_none() {
                out.submitted = Some(hlc);
            }
            if to == LifecycleState::Approved && out.locked.is_none() {
                out.locked = Some(hlc);
            }
        }
        out.steps.push(LifecycleStep {
            to,
            change,
            clock_ms: hlc.wall_ms,
            clock_counter: hlc.counter,
            wall_clock_ms: wall,
            applied,
        });
    }
    out
}

/// Whether an operation's target is the report's own content (what the
/// officers write), as opposed to lifecycle and supervisor fields.
pub fn is_content(target: &Target) -> bool {
    match target {
        Target::Field(path) => {
            !path.starts_with("lifecycle.")
                && schema::report_field(path).is_ok_and(|f| f.access != Access::Supervisor)
        }
        _ => true,
    }
}

fn denied(body: &ChangeBody, reason: &'static str) -> Error {
    Error::NotPermitted {
        change: body.id().to_string(),
        reason,
    }
}

/// The unit a report belongs to: the `reporting_officer.unit` its creating
/// change sets.
pub fn unit_of_change(body: &ChangeBody) -> Option<&str> {
    body.ops
        .iter()
        .find_map(|op| match (&op.target, &op.action) {
            (Target::Field(p), crate::crdt::Action::Set(Value::Text(u)))
                if p == "reporting_officer.unit" =>
            {
                Some(u.as_str())
            }
            _ => None,
        })
}

/// Checks that `author` may have made `body`, on a report of `report_unit`
/// (the creating change's unit; the caller passes the author's own unit
/// when it has not seen the creation yet). Static: the same answer on every
/// replica, whatever else it holds.
pub fn authorize(body: &ChangeBody, author: &Person, report_unit: &str) -> Result<()> {
    // The first change of a device to a report may create it.
    let first = body.prev.is_none();
    if author.unit != report_unit {
        return Err(denied(body, "author is not of the report's unit"));
    }
    let supervisor = author.role == Role::Supervisor;
    for op in &body.ops {
        match &op.target {
            Target::Field(path) if path == LIFECYCLE_FIELD => {
                let to = match &op.action {
                    crate::crdt::Action::Set(Value::Text(t)) => LifecycleState::parse(t),
                    _ => None,
                };
                let Some(to) = to else {
                    return Err(denied(body, "malformed lifecycle operation"));
                };
                if to == LifecycleState::Draft && (supervisor || !first) {
                    return Err(denied(body, "only the creating officer starts a draft"));
                }
                if by_supervisor(to) != supervisor && to != LifecycleState::Draft {
                    return Err(denied(
                        body,
                        if supervisor {
                            "supervisors do not submit reports"
                        } else {
                            "only a supervisor of the unit returns, approves, refers or closes"
                        },
                    ));
                }
            }
            Target::Field(path) if path.starts_with("reporting_officer.") => {
                // Written once, by the creating officer, with his or her own unit.
                if supervisor || !first {
                    return Err(denied(body, "reporting officer is set at creation only"));
                }
                if path == "reporting_officer.unit"
                    && !matches!(&op.action, crate::crdt::Action::Set(Value::Text(u)) if *u == author.unit)
                {
                    return Err(denied(
                        body,
                        "reporting officer unit differs from the author's",
                    ));
                }
            }
            t if !is_content(t) => {
                if !supervisor {
                    return Err(denied(
                        body,
                        "only a supervisor of the unit writes this field",
                    ));
                }
            }
            Target::Entry { collection, .. } | Target::EntryField { collection, .. }
                if supervisor && collection == ADDENDA_COLLECTION => {}
            _ => {
                if supervisor {
                    return Err(denied(
                        body,
                        "supervisors do not edit the report's fields (addenda only)",
                    ));
                }
            }
        }
    }
    Ok(())
}
