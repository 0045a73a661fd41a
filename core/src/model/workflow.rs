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

/// A change whose clock reads before `crdt::hlc::CLOCK_FLOOR_MS`: its
/// device's clock was unset or reset. Its clock is kept as signed; replay
/// gives it the latest effective clock of what its author had seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockUnset {
    pub change: ChangeId,
    /// Its hybrid logical clock, as signed.
    pub clock_ms: u64,
    /// Its device's wall clock as read, as signed.
    pub wall_clock_ms: i64,
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

/// The person secret a creation reveals, which opens the digest of its
/// author's person on phones that hold the author's record without names
/// (`DeviceRecord::is_person`). Set by the creation only, if at all.
pub const REPORTING_OFFICER_PROOF: &str = "reporting_officer.proof";

/// The text a change sets `field` to, if it does.
fn text_set<'a>(body: &'a ChangeBody, field: &str) -> Option<&'a str> {
    body.ops
        .iter()
        .find_map(|op| match (&op.target, &op.action) {
            (Target::Field(p), crate::crdt::Action::Set(Value::Text(v))) if p == field => {
                Some(v.as_str())
            }
            _ => None,
        })
}

/// The (name, star number, unit) a creation change names as its
/// reporting officer, when it sets all three as text.
fn named_officer(body: &ChangeBody) -> Option<(&str, &str, &str)> {
    let [name, star, unit] = REPORTING_OFFICER_FIELDS.map(|f| text_set(body, f));
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
/// when the phone holds the record without them, from their digest, which
/// the creation's `reporting_officer.proof` opens
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
        // A derived report id belongs to one change: its creation. Nobody
        // else can create it, whatever order replicas receive things in.
        if is_derived_report_id(body.report) {
            let derived = text_set(body, CREATION_NONCE).map(|n| report_id_for(body.id(), n));
            if derived != Some(body.report) {
                return Err(denied(
                    body,
                    "the report id is not derived from this creation",
                ));
            }
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
        let proof = text_set(body, REPORTING_OFFICER_PROOF);
        let is_author = named_officer(body)
            .is_some_and(|(name, star, unit)| author_record.is_person(name, star, unit, proof));
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
                let known = REPORTING_OFFICER_FIELDS.contains(&path.as_str())
                    || path == REPORTING_OFFICER_PROOF;
                if !known || count != 1 {
                    return Err(denied(
                        body,
                        "the reporting officer differs from the author's directory record",
                    ));
                }
            }
            Target::Field(path) if path == CREATION_NONCE => {
                let count = body
                    .ops
                    .iter()
                    .filter(|o| matches!(&o.target, Target::Field(p) if p == path))
                    .count();
                if !creation || count != 1 {
                    return Err(denied(
                        body,
                        "the creation nonce is set by the creation only",
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

/// The random nonce a creation sets ([`CREATION_NONCE`]), hashed into the
/// report's id so nobody can compute a device's future report ids (to
/// write to them before they exist) or tell a report's creator from its id.
pub const CREATION_NONCE: &str = "creation.nonce";

/// The id of the report that the creation change `creation` makes: a
/// version-8 UUID from the SHA-256 of the change's id (device, seq) and
/// its nonce. A device's seq numbers are never reused, so each derived id
/// has exactly one possible creation, which [`authorize`] checks
/// statically: a second officer cannot re-create a report to name himself
/// its reporting officer, in whatever order replicas receive the two.
pub fn report_id_for(creation: ChangeId, nonce: &str) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"fieldreport report id v2\0");
    h.update(creation.device.as_bytes());
    h.update(creation.seq.to_be_bytes());
    h.update(nonce.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes)
}

/// Whether `report` is an id [`report_id_for`] makes (version 8). Reports
/// created before derived ids have random (version 4) ids.
pub fn is_derived_report_id(report: uuid::Uuid) -> bool {
    report.get_version_num() == 8
}

/// Legacy reports only (a random id, made before derived ids): such a
/// report has one creation change. `creations` are the creation changes
/// the receiving replica holds for the report once the batch is in (see
/// `State::creations`); a received creation beside another one is refused.
/// This depends on arrival order (docs/workflow.md); derived ids need no
/// such rule, their creation is fixed by [`authorize`]. Checked wherever
/// [`authorize`] is on receipt (phones and the station).
pub fn authorize_one_creation(body: &ChangeBody, creations: &[ChangeId]) -> Result<()> {
    if is_derived_report_id(body.report) {
        return Ok(());
    }
    if is_creation(body) && creations.iter().any(|c| *c != body.id()) {
        return Err(denied(
            body,
            "the report was already created by another change",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::{Action, Operation};
    use crate::evidence::Person;
    use proptest::prelude::*;

    fn officer(star: &str) -> DeviceRecord {
        let person = Person {
            name: format!("Officer {star}"),
            star_number: star.into(),
            unit: "D9".into(),
            role: Role::Officer,
        };
        DeviceRecord::new(
            uuid::Uuid::from_u128(star.parse().unwrap()),
            [7; 32],
            person,
        )
    }

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn creation_by(author: &DeviceRecord, seq: u64, report: uuid::Uuid) -> ChangeBody {
        let p = &author.person;
        let set = |path: &str, v: &str| Operation {
            target: Target::Field(path.into()),
            action: Action::Set(Value::Text(v.into())),
            pred: vec![],
        };
        ChangeBody {
            format: 1,
            report,
            device: author.device_id,
            seq,
            hlc: Hlc::default(),
            wall_clock_ms: 0,
            prev: None,
            ops: vec![
                set(LIFECYCLE_FIELD, "draft"),
                set("reporting_officer.name", &p.name),
                set("reporting_officer.star_number", &p.star_number),
                set("reporting_officer.unit", &p.unit),
                set(CREATION_NONCE, NONCE),
            ],
        }
    }

    proptest! {
        /// Exactly one change can create a derived report id: the one it
        /// derives from. Another officer's creation of it, or the same
        /// officer's with another seq, is refused, statically.
        #[test]
        fn only_its_own_creation_creates_a_derived_report(
            seq in 1u64..u64::MAX, other_seq in 1u64..u64::MAX,
        ) {
            let a = officer("101");
            let b = officer("102");
            let r = report_id_for(ChangeId { device: a.device_id, seq }, NONCE);
            prop_assert!(is_derived_report_id(r));
            prop_assert!(authorize(&creation_by(&a, seq, r), &a, "D9").is_ok());
            prop_assert!(authorize(&creation_by(&b, other_seq, r), &b, "D9").is_err());
            if other_seq != seq {
                prop_assert!(authorize(&creation_by(&a, other_seq, r), &a, "D9").is_err());
                prop_assert_ne!(r, report_id_for(ChangeId { device: a.device_id, seq: other_seq }, NONCE));
            }
            prop_assert_ne!(r, report_id_for(ChangeId { device: b.device_id, seq }, NONCE));
            // Another nonce, another id: nobody computes a device's next ids.
            prop_assert_ne!(r, report_id_for(ChangeId { device: a.device_id, seq }, "another"));
            let mut no_nonce = creation_by(&a, seq, r);
            no_nonce.ops.pop();
            prop_assert!(authorize(&no_nonce, &a, "D9").is_err());
            // The arrival-order rule stays out of derived reports' way.
            let forged = ChangeId { device: b.device_id, seq: other_seq };
            prop_assert!(authorize_one_creation(&creation_by(&a, seq, r), &[forged]).is_ok());
        }
    }

    /// A report with a random (pre-derivation) id keeps the legacy rule: a
    /// second creation beside the one held is refused.
    #[test]
    fn a_legacy_report_keeps_the_one_creation_rule() {
        let a = officer("101");
        let b = officer("102");
        let r = uuid::Uuid::from_u128(0x1234_5678_9abc_4def_8123_4567_89ab_cdef);
        assert!(!is_derived_report_id(r));
        let genuine = creation_by(&a, 3, r);
        let forged = creation_by(&b, 9, r);
        assert!(authorize(&forged, &b, "D9").is_ok(), "statically fine");
        assert!(authorize_one_creation(&forged, &[genuine.id()]).is_err());
        assert!(authorize_one_creation(&genuine, &[genuine.id()]).is_ok());
    }
}
