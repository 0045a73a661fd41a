//! The report lifecycle and who may do what, shared by the phone and the
//! station so both always agree.
//!
//! Lifecycle: draft → submitted → (returned → submitted)* → approved →
//! referred → closed, or approved → closed. A transition is an operation
//! setting `lifecycle.state`; the state is not that register's value but
//! the result of replaying every such operation in one deterministic order
//! (the report's causal replay order, `crdt::doc`: what a step's author had
//! seen first, then HLC, device, seq). A step that does not fit the state
//! reached so far
//! (say an approval concurrent with a return) is kept in the history and
//! marked not applied. So concurrent lifecycle changes never show as a
//! conflict and every replica with the same changes reaches the same state.
//!
//! Who: [`authorize`] checks each received change against its author's
//! enrolled person, statically (without the report's state), so it gives
//! the same answer wherever and whenever it runs:
//! - one officer creates the report: the creation change starts the draft
//!   and names that officer as the directory has him or her; nothing else
//!   writes `reporting_officer.*`;
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
use crate::evidence::DeviceRecord;
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

/// A change whose clock is later than the clock of a change made after it
/// (one that names it in `pred`, directly or through others, or a later
/// change of its own device): its clock was more than the bound
/// (`crdt::hlc::MAX_CLOCK_AHEAD_MS`) ahead of the device that built on it,
/// which did not follow it that far. Replay puts it before what came after
/// it all the same; its clock is kept as signed and only reported here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockAhead {
    pub change: ChangeId,
    /// Its hybrid logical clock, as signed.
    pub clock_ms: u64,
    pub clock_counter: u32,
    /// Its device's wall clock as read, as signed.
    pub wall_clock_ms: i64,
    /// The causally later change with the earliest clock, and that clock.
    pub followed_by: ChangeId,
    pub followed_clock_ms: u64,
}

/// The result of the replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub state: LifecycleState,
    pub steps: Vec<LifecycleStep>,
    /// The first applied submission and the first applied approval.
    pub submitted: Option<ChangeId>,
    pub locked: Option<ChangeId>,
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

/// Replays lifecycle operations `(hlc, change, wall clock, target state)`
/// in the order given: the report's causal replay order (`crdt::doc`:
/// causal predecessors first, then clock and change id).
pub fn replay(ops: impl IntoIterator<Item = (Hlc, ChangeId, i64, LifecycleState)>) -> Lifecycle {
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
                out.submitted = Some(change);
            }
            if to == LifecycleState::Approved && out.locked.is_none() {
                out.locked = Some(change);
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

/// The reporting officer's fields, which the report's creation change sets
/// from its author's directory record and nothing else ever writes.
pub const REPORTING_OFFICER_FIELDS: [&str; 3] = [
    "reporting_officer.name",
    "reporting_officer.star_number",
    "reporting_officer.unit",
];

/// The (name, star number, unit) a creation change names as its
/// reporting officer, when it sets all three as text.
fn named_officer(body: &ChangeBody) -> Option<(&str, &str, &str)> {
    let value = |field: &str| {
        body.ops
            .iter()
            .find_map(|op| match (&op.target, &op.action) {
                (Target::Field(p), crate::crdt::Action::Set(Value::Text(v))) if p == field => {
                    Some(v.as_str())
                }
                _ => None,
            })
    };
    let [name, star, unit] = REPORTING_OFFICER_FIELDS.map(value);
    Some((name?, star?, unit?))
}

fn is_draft_op(op: &crate::crdt::Operation) -> bool {
    matches!(
        (&op.target, &op.action),
        (Target::Field(p), crate::crdt::Action::Set(Value::Text(t)))
            if p == LIFECYCLE_FIELD && LifecycleState::parse(t) == Some(LifecycleState::Draft)
    )
}

/// Whether a change is a report's creation change: the one that starts it
/// as a `draft` (and names its reporting officer).
pub fn is_creation(body: &ChangeBody) -> bool {
    body.ops.iter().any(is_draft_op)
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
///
/// `author` is the author device's directory record: the reporting
/// officer a creation names must be its person, checked from the names or,
/// when the phone holds the record without them, from their digest
/// ([`DeviceRecord::is_person`]).
pub fn authorize(body: &ChangeBody, author_record: &DeviceRecord, report_unit: &str) -> Result<()> {
    let author = &author_record.person;
    if author.unit != report_unit {
        return Err(denied(body, "author is not of the report's unit"));
    }
    let supervisor = author.role == Role::Supervisor;
    // The creation change: an officer's first change to the report, which
    // starts the draft and names that officer as the directory has him or
    // her (name, star number, unit), all three.
    let creation = is_creation(body);
    if creation {
        if supervisor || body.prev.is_some() {
            return Err(denied(body, "only the creating officer starts a draft"));
        }
        let names_all = REPORTING_OFFICER_FIELDS.iter().all(|f| {
            body.ops
                .iter()
                .any(|op| matches!(&op.target, Target::Field(p) if p == f))
        });
        if !names_all {
            return Err(denied(
                body,
                "the creation names the reporting officer (name, star number, unit)",
            ));
        }
        let is_author = named_officer(body)
            .is_some_and(|(name, star, unit)| author_record.is_person(name, star, unit));
        if !is_author {
            return Err(denied(
                body,
                "the reporting officer differs from the author's directory record",
            ));
        }
    }
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
                // A draft op makes the change the creation, checked above.
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
                // Written once, by the creation, from the author's record.
                if !creation {
                    return Err(denied(
                        body,
                        "the reporting officer is set by the report's creation only",
                    ));
                }
                // Only the three fields, each set once (checked above).
                let count = body
                    .ops
                    .iter()
                    .filter(|o| matches!(&o.target, Target::Field(p) if p == path))
                    .count();
                if !REPORTING_OFFICER_FIELDS.contains(&path.as_str()) || count != 1 {
                    return Err(denied(
                        body,
                        "the reporting officer differs from the author's directory record",
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

/// A report has one creation change. `creations` are the creation changes
/// the receiving replica holds for the report once the batch is in (see
/// `State::creations`); a received creation beside another one is refused,
/// so a second officer cannot re-create someone else's report to name
/// himself its reporting officer. Checked wherever [`authorize`] is on
/// receipt (phones and the station).
pub fn authorize_one_creation(body: &ChangeBody, creations: &[ChangeId]) -> Result<()> {
    if is_creation(body) && creations.iter().any(|c| *c != body.id()) {
        return Err(denied(
            body,
            "the report was already created by another change",
        ));
    }
    Ok(())
}
