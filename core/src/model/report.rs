//! The typed report: what the app shows and what exports contain. Built
//! from the materialised CRDT state; kept conflicts are listed with every
//! candidate value, its author device and its time.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::enums::*;
use super::value::Value;
use super::workflow::{Amendment, ClockAhead, ClockUnset, LifecycleStep};
use crate::crdt::{EntryState, Register, State};

pub type Time = DateTime<Utc>;

fn time(ms: i64) -> Option<Time> {
    Utc.timestamp_millis_opt(ms).single()
}

type Getter<'a> = Box<dyn Fn(&str) -> Option<&'a Value> + 'a>;

/// Typed reads from a set of registers.
struct Fields<'a> {
    get: Getter<'a>,
}

impl<'a> Fields<'a> {
    fn of_state(s: &'a State) -> Self {
        Fields {
            get: Box::new(move |p| s.field(p)),
        }
    }
    fn of_entry(e: &'a EntryState) -> Self {
        Fields {
            get: Box::new(move |p| e.field(p)),
        }
    }
    fn text(&self, p: &str) -> Option<String> {
        (self.get)(p).and_then(Value::as_text).map(str::to_string)
    }
    fn bool(&self, p: &str) -> Option<bool> {
        (self.get)(p).and_then(Value::as_bool)
    }
    fn float(&self, p: &str) -> Option<f64> {
        (self.get)(p).and_then(Value::as_float)
    }
    fn int(&self, p: &str) -> Option<i64> {
        match (self.get)(p) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }
    fn time(&self, p: &str) -> Option<Time> {
        (self.get)(p).and_then(Value::as_time).and_then(time)
    }
    fn list(&self, p: &str) -> Vec<String> {
        (self.get)(p)
            .and_then(Value::as_list)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }
    fn parsed<T>(&self, p: &str, parse: fn(&str) -> Option<T>) -> Option<T> {
        (self.get)(p).and_then(Value::as_text).and_then(parse)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Occurrence {
    pub start: Option<Time>,
    pub end: Option<Time>,
    /// IANA name, e.g. `America/Chicago`.
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub accuracy_m: Option<f64>,
    pub address: Option<String>,
    pub district: Option<String>,
    pub beat: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Involvement {
    pub kind: Option<InvolvementKind>,
    pub event_number: Option<String>,
    pub caller_was_federal_agent: Option<bool>,
    pub description: Option<String>,
    /// The report responds to an allegation of illegal force.
    #[serde(default)]
    pub illegal_force_alleged: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportingOfficer {
    pub name: Option<String>,
    pub star_number: Option<String>,
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FederalSupervisor {
    pub name: Option<String>,
    pub badge_number: Option<String>,
    pub agency: Option<FederalAgency>,
    pub identified_how: Option<String>,
    pub refused_identification: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MedicalAid {
    pub ems_summoned_at: Option<Time>,
    pub ems_arrived_at: Option<Time>,
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BodyCamera {
    pub recording: Option<bool>,
    pub camera_ids: Vec<String>,
    pub started_at: Option<Time>,
    pub ended_at: Option<Time>,
    pub preservation_requested_at: Option<Time>,
    pub preservation_request_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub name: Option<String>,
    pub badge_number: Option<String>,
    pub agency: Option<FederalAgency>,
    pub identifiable: Option<Identifiability>,
    pub vehicle_plates: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForceUse {
    #[serde(rename = "type")]
    pub force_type: Option<ForceType>,
    pub by_whom: Option<String>,
    pub against_whom: Option<String>,
    pub at: Option<Time>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Injury {
    pub role: Option<PersonRole>,
    pub description: Option<String>,
    pub severity: Option<InjurySeverity>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LawViolation {
    pub citation: Option<String>,
    pub description: Option<String>,
    pub felony: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Video {
    pub source: Option<String>,
    pub custodian: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Witness {
    pub name: Option<String>,
    pub contact: Option<String>,
    pub statement: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Media {
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub mime_type: Option<String>,
    pub file_name: Option<String>,
    pub captured_at: Option<Time>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub caption: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Addendum {
    pub text: Option<String>,
}

/// A collection entry: its id, its fields, and whether it was kept because
/// an edit or a re-add was concurrent with its removal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<T> {
    pub id: Uuid,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub removal_conflict: bool,
    #[serde(flatten)]
    pub fields: T,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Concurrent values of one field.
    Values,
    /// An entry removed while someone else edited or re-added it.
    RemovedWhileEdited,
}

/// One candidate value of a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictValue {
    pub value: Value,
    pub device: Uuid,
    pub seq: u64,
    /// Hybrid logical clock (ms) of the change.
    pub clock_ms: u64,
    pub clock_counter: u32,
    /// The author device's wall clock when it made the change.
    pub wall_clock_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// `narrative`, `force/<uuid>/type` or, for a removal, `agents/<uuid>`.
    pub path: String,
    pub kind: ConflictKind,
    /// All live values, the displayed one first (empty for removals).
    pub values: Vec<ConflictValue>,
}

/// The current state of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: Uuid,
    pub lifecycle: LifecycleState,
    /// Device that made the report's first change.
    pub created_by_device: Option<Uuid>,
    pub created_at: Option<Time>,
    pub updated_at: Option<Time>,
    pub occurred: Occurrence,
    pub location: Location,
    pub involvement: Involvement,
    pub reporting_officer: ReportingOfficer,
    pub cpd_units: Vec<String>,
    pub federal_agencies: Vec<FederalAgency>,
    pub federal_agency_other: Option<String>,
    pub supervisory_federal_officer: FederalSupervisor,
    pub medical_aid: MedicalAid,
    pub body_camera: BodyCamera,
    pub narrative: Option<String>,
    pub agents: Vec<Entry<Agent>>,
    pub force: Vec<Entry<ForceUse>>,
    pub injuries: Vec<Entry<Injury>>,
    pub violations: Vec<Entry<LawViolation>>,
    pub videos: Vec<Entry<Video>>,
    pub witnesses: Vec<Entry<Witness>>,
    pub media: Vec<Entry<Media>>,
    pub addenda: Vec<Entry<Addendum>>,
    pub conflicts: Vec<Conflict>,
    /// Every lifecycle transition, in replay order, applied or not.
    #[serde(default)]
    pub lifecycle_history: Vec<LifecycleStep>,
    /// Content edits made after the first submission.
    #[serde(default)]
    pub amendments: Vec<Amendment>,
    /// Changes whose clock is later than that of a change made after them:
    /// their device's clock was beyond the bound ahead of the device that
    /// built on them (`docs/data-model.md`, "Clocks"). Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clock_ahead: Vec<ClockAhead>,
    /// Changes whose clock reads before 2026 (`crdt::hlc::CLOCK_FLOOR_MS`):
    /// their device's clock was unset or reset. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clock_unset: Vec<ClockUnset>,
    /// The supervisor's comment with the latest return.
    #[serde(default)]
    pub return_comment: Option<String>,
    #[serde(default)]
    pub review: Review,
    #[serde(default)]
    pub referral: Referral,
}

/// The internal review every report gets within 30 days of the incident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// Incident start + 30 days.
    pub due: Option<Time>,
    pub completed_at: Option<Time>,
    pub findings: Option<String>,
    /// CPD's own conduct at the scene.
    pub cpd_conduct: Option<String>,
    /// Whether dispatch knew the call involved immigration enforcement.
    pub dispatch_knew: Option<bool>,
}

/// Referral of felony matters to the county State's Attorney.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Referral {
    pub date: Option<Time>,
    pub reference: Option<String>,
    pub felonies: Vec<String>,
}

/// Days from the incident to the internal review's due date.
pub const REVIEW_DAYS: i64 = 30;

fn entries<T>(s: &State, coll: &str, read: impl Fn(&Fields) -> T) -> Vec<Entry<T>> {
    s.collections
        .get(coll)
        .map(|es| {
            es.iter()
                .filter(|e| !e.removed)
                .map(|e| Entry {
                    id: e.id,
                    removal_conflict: e.removal_conflict,
                    fields: read(&Fields::of_entry(e)),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn conflict_values(r: &Register) -> Vec<ConflictValue> {
    r.live
        .iter()
        .map(|c| ConflictValue {
            value: c.value.clone(),
            device: c.op.device,
            seq: c.op.seq,
            clock_ms: c.hlc.wall_ms,
            clock_counter: c.hlc.counter,
            wall_clock_ms: c.wall_clock_ms,
        })
        .collect()
}

/// All kept conflicts of a state, in path order.
pub fn conflicts(s: &State) -> Vec<Conflict> {
    let mut out = Vec::new();
    for (path, r) in &s.fields {
        if r.is_conflict() && path != super::schema::LIFECYCLE_FIELD {
            out.push(Conflict {
                path: path.clone(),
                kind: ConflictKind::Values,
                values: conflict_values(r),
            });
        }
    }
    for (coll, es) in &s.collections {
        for e in es.iter().filter(|e| !e.removed) {
            if e.removal_conflict {
                out.push(Conflict {
                    path: format!("{coll}/{}", e.id),
                    kind: ConflictKind::RemovedWhileEdited,
                    values: Vec::new(),
                });
            }
            for (field, r) in &e.fields {
                if r.is_conflict() {
                    out.push(Conflict {
                        path: format!("{coll}/{}/{field}", e.id),
                        kind: ConflictKind::Values,
                        values: conflict_values(r),
                    });
                }
            }
        }
    }
    out
}

impl Report {
    pub fn from_state(id: Uuid, s: &State) -> Report {
        let f = Fields::of_state(s);
        let hlc_time = |h: crate::crdt::Hlc| time(h.wall_ms as i64);
        Report {
            id,
            lifecycle: s.lifecycle.state,
            created_by_device: s.created.map(|(_, d)| d),
            created_at: s.created.and_then(|(h, _)| hlc_time(h)),
            updated_at: s.updated.and_then(hlc_time),
            occurred: Occurrence {
                start: f.time("occurred.start"),
                end: f.time("occurred.end"),
                time_zone: f.text("occurred.time_zone"),
            },
            location: Location {
                latitude: f.float("location.latitude"),
                longitude: f.float("location.longitude"),
                accuracy_m: f.float("location.accuracy_m"),
                address: f.text("location.address"),
                district: f.text("location.district"),
                beat: f.text("location.beat"),
            },
            involvement: Involvement {
                kind: f.parsed("involvement.kind", InvolvementKind::parse),
                event_number: f.text("involvement.event_number"),
                caller_was_federal_agent: f.bool("involvement.caller_was_federal_agent"),
                illegal_force_alleged: f.bool("involvement.illegal_force_alleged"),
                description: f.text("involvement.description"),
            },
            reporting_officer: ReportingOfficer {
                name: f.text("reporting_officer.name"),
                star_number: f.text("reporting_officer.star_number"),
                unit: f.text("reporting_officer.unit"),
            },
            cpd_units: f.list("cpd_units"),
            federal_agencies: f
                .list("federal_agencies")
                .iter()
                .filter_map(|a| FederalAgency::parse(a))
                .collect(),
            federal_agency_other: f.text("federal_agency_other"),
            supervisory_federal_officer: FederalSupervisor {
                name: f.text("supervisory_federal_officer.name"),
                badge_number: f.text("supervisory_federal_officer.badge_number"),
                agency: f.parsed("supervisory_federal_officer.agency", FederalAgency::parse),
                identified_how: f.text("supervisory_federal_officer.identified_how"),
                refused_identification: f
                    .bool("supervisory_federal_officer.refused_identification"),
            },
            medical_aid: MedicalAid {
                ems_summoned_at: f.time("medical_aid.ems_summoned_at"),
                ems_arrived_at: f.time("medical_aid.ems_arrived_at"),
                outcome: f.text("medical_aid.outcome"),
            },
            body_camera: BodyCamera {
                recording: f.bool("body_camera.recording"),
                camera_ids: f.list("body_camera.camera_ids"),
                started_at: f.time("body_camera.started_at"),
                ended_at: f.time("body_camera.ended_at"),
                preservation_requested_at: f.time("body_camera.preservation_requested_at"),
                preservation_request_id: f.text("body_camera.preservation_request_id"),
            },
            narrative: f.text("narrative"),
            agents: entries(s, "agents", |e| Agent {
                name: e.text("name"),
                badge_number: e.text("badge_number"),
                agency: e.parsed("agency", FederalAgency::parse),
                identifiable: e.parsed("identifiable", Identifiability::parse),
                vehicle_plates: e.list("vehicle_plates"),
                description: e.text("description"),
            }),
            force: entries(s, "force", |e| ForceUse {
                force_type: e.parsed("type", ForceType::parse),
                by_whom: e.text("by_whom"),
                against_whom: e.text("against_whom"),
                at: e.time("at"),
                description: e.text("description"),
            }),
            injuries: entries(s, "injuries", |e| Injury {
                role: e.parsed("role", PersonRole::parse),
                description: e.text("description"),
                severity: e.parsed("severity", InjurySeverity::parse),
            }),
            violations: entries(s, "violations", |e| LawViolation {
                citation: e.text("citation"),
                description: e.text("description"),
                felony: e.bool("felony"),
            }),
            videos: entries(s, "videos", |e| Video {
                source: e.text("source"),
                custodian: e.text("custodian"),
                description: e.text("description"),
            }),
            witnesses: entries(s, "witnesses", |e| Witness {
                name: e.text("name"),
                contact: e.text("contact"),
                statement: e.text("statement"),
            }),
            media: entries(s, "media", |e| Media {
                sha256: e.text("sha256"),
                size: e.int("size"),
                mime_type: e.text("mime_type"),
                file_name: e.text("file_name"),
                captured_at: e.time("captured_at"),
                latitude: e.float("latitude"),
                longitude: e.float("longitude"),
                caption: e.text("caption"),
            }),
            addenda: entries(s, "addenda", |e| Addendum {
                text: e.text("text"),
            }),
            conflicts: conflicts(s),
            lifecycle_history: s.lifecycle.steps.clone(),
            amendments: s.amendments.clone(),
            clock_ahead: s.clock_ahead.clone(),
            clock_unset: s.clock_unset.clone(),
            return_comment: f.text(super::schema::RETURN_COMMENT_FIELD),
            review: Review {
                due: f
                    .time("occurred.start")
                    .map(|t| t + chrono::Duration::days(REVIEW_DAYS)),
                completed_at: f.time("review.completed_at"),
                findings: f.text("review.findings"),
                cpd_conduct: f.text("review.cpd_conduct"),
                dispatch_knew: f.bool("review.dispatch_knew"),
            },
            referral: Referral {
                date: f.time("referral.date"),
                reference: f.text("referral.reference"),
                felonies: f.list("referral.felonies"),
            },
        }
    }

    /// Canonical JSON: identical on every replica holding the same changes.
    pub fn to_canonical_json(&self) -> String {
        // Plain structs, Vecs and strings: serialisation cannot fail.
        serde_json::to_string(self).expect("report serialises")
    }
}
