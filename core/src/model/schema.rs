//! The shape of a report: which field paths and collections exist, what kind
//! of value each accepts, and the size limits (documented in
//! `docs/limits.md`). Both the phone and the station validate every
//! operation against this table, so they always agree on what is valid.

use super::enums::*;
use super::value::Value;
use crate::error::Error;

/// Short identifying text: names, badge and star numbers, ids, plates.
pub const SHORT_TEXT_MAX: usize = 512;
/// Descriptions, outcomes, statements.
pub const LONG_TEXT_MAX: usize = 8 * 1024;
/// The narrative.
pub const NARRATIVE_MAX: usize = 64 * 1024;
/// Items in a list value (units present, camera ids, plates).
pub const LIST_MAX_ITEMS: usize = 64;
/// Bytes per list item.
pub const LIST_ITEM_MAX: usize = 128;
/// Times must fall in [2000-01-01, 2100-01-01) UTC.
pub const TIME_MIN_MS: i64 = 946_684_800_000;
pub const TIME_MAX_MS: i64 = 4_102_444_800_000;

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Text(usize),
    Bool,
    Time,
    Float { min: f64, max: f64 },
    Int { min: i64, max: i64 },
    Enum(&'static [&'static str]),
    EnumList(&'static [&'static str]),
    TextList,
    TimeZone,
    Sha256Hex,
}

impl Kind {
    fn expected(&self) -> &'static str {
        match self {
            Kind::Text(_) => "text",
            Kind::Bool => "bool",
            Kind::Time => "time (ms since epoch)",
            Kind::Float { .. } => "float",
            Kind::Int { .. } => "int",
            Kind::Enum(_) => "text (one of the listed values)",
            Kind::EnumList(_) => "list (of the listed values)",
            Kind::TextList => "list of text",
            Kind::TimeZone => "text (IANA time zone)",
            Kind::Sha256Hex => "text (sha256 hex)",
        }
    }
}

/// Who may write a field through the editing API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The user edits it.
    User,
    /// Set by the core itself (enrollment data, lifecycle, media facts).
    System,
    /// Written by a supervisor of the report's unit through the core's
    /// supervisor actions (return comment, review, referral).
    Supervisor,
}

#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub access: Access,
}

const fn user(name: &'static str, kind: Kind) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        access: Access::User,
    }
}

const fn system(name: &'static str, kind: Kind) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        access: Access::System,
    }
}

const fn supervisor(name: &'static str, kind: Kind) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        access: Access::Supervisor,
    }
}

const SHORT: Kind = Kind::Text(SHORT_TEXT_MAX);
const LONG: Kind = Kind::Text(LONG_TEXT_MAX);

pub const LIFECYCLE_FIELD: &str = "lifecycle.state";

/// Scalar fields of a report (each one a multi-value register).
pub const REPORT_FIELDS: &[FieldSpec] = &[
    user("occurred.start", Kind::Time),
    user("occurred.end", Kind::Time),
    user("occurred.time_zone", Kind::TimeZone),
    user(
        "location.latitude",
        Kind::Float {
            min: -90.0,
            max: 90.0,
        },
    ),
    user(
        "location.longitude",
        Kind::Float {
            min: -180.0,
            max: 180.0,
        },
    ),
    user(
        "location.accuracy_m",
        Kind::Float {
            min: 0.0,
            max: 100_000.0,
        },
    ),
    user("location.address", SHORT),
    user("location.district", SHORT),
    user("location.beat", SHORT),
    user("involvement.kind", Kind::Enum(InvolvementKind::ALL)),
    user("involvement.event_number", SHORT),
    user("involvement.caller_was_federal_agent", Kind::Bool),
    user("involvement.description", LONG),
    // The report responds to an allegation of illegal force (public count).
    user("involvement.illegal_force_alleged", Kind::Bool),
    system("reporting_officer.name", SHORT),
    system("reporting_officer.star_number", SHORT),
    system("reporting_officer.unit", SHORT),
    // The creating device's person secret (`DeviceRecord::person_secret`).
    system("reporting_officer.proof", SHORT),
    // The creation's random nonce, hashed into the report id.
    system("creation.nonce", SHORT),
    user("cpd_units", Kind::TextList),
    user("federal_agencies", Kind::EnumList(FederalAgency::ALL)),
    user("federal_agency_other", SHORT),
    user("supervisory_federal_officer.name", SHORT),
    user("supervisory_federal_officer.badge_number", SHORT),
    user(
        "supervisory_federal_officer.agency",
        Kind::Enum(FederalAgency::ALL),
    ),
    user("supervisory_federal_officer.identified_how", LONG),
    user(
        "supervisory_federal_officer.refused_identification",
        Kind::Bool,
    ),
    user("medical_aid.ems_summoned_at", Kind::Time),
    user("medical_aid.ems_arrived_at", Kind::Time),
    user("medical_aid.outcome", LONG),
    user("body_camera.recording", Kind::Bool),
    user("body_camera.camera_ids", Kind::TextList),
    user("body_camera.started_at", Kind::Time),
    user("body_camera.ended_at", Kind::Time),
    user("body_camera.preservation_requested_at", Kind::Time),
    user("body_camera.preservation_request_id", SHORT),
    user("narrative", Kind::Text(NARRATIVE_MAX)),
    system(LIFECYCLE_FIELD, Kind::Enum(LifecycleState::ALL)),
    // Supervisor actions (docs/workflow.md).
    supervisor(RETURN_COMMENT_FIELD, LONG),
    supervisor("referral.date", Kind::Time),
    supervisor("referral.reference", SHORT),
    supervisor("referral.felonies", Kind::TextList),
    supervisor("review.findings", LONG),
    supervisor("review.cpd_conduct", LONG),
    supervisor("review.dispatch_knew", Kind::Bool),
    supervisor("review.completed_at", Kind::Time),
];

pub const RETURN_COMMENT_FIELD: &str = "lifecycle.comment";
/// The only collection a locked (approved, referred, closed) report takes
/// new entries in.
pub const ADDENDA_COLLECTION: &str = "addenda";

#[derive(Debug, Clone, Copy)]
pub struct CollectionSpec {
    pub name: &'static str,
    pub fields: &'static [FieldSpec],
}

pub const MEDIA_COLLECTION: &str = "media";

pub const COLLECTIONS: &[CollectionSpec] = &[
    CollectionSpec {
        name: "agents",
        fields: &[
            user("name", SHORT),
            user("badge_number", SHORT),
            user("agency", Kind::Enum(FederalAgency::ALL)),
            user("identifiable", Kind::Enum(Identifiability::ALL)),
            user("vehicle_plates", Kind::TextList),
            user("description", LONG),
        ],
    },
    CollectionSpec {
        name: "force",
        fields: &[
            user("type", Kind::Enum(ForceType::ALL)),
            user("by_whom", SHORT),
            user("against_whom", SHORT),
            user("at", Kind::Time),
            user("description", LONG),
        ],
    },
    CollectionSpec {
        name: "injuries",
        fields: &[
            user("role", Kind::Enum(PersonRole::ALL)),
            user("description", LONG),
            user("severity", Kind::Enum(InjurySeverity::ALL)),
        ],
    },
    CollectionSpec {
        name: "violations",
        fields: &[
            user("citation", SHORT),
            user("description", LONG),
            user("felony", Kind::Bool),
        ],
    },
    CollectionSpec {
        name: "videos",
        fields: &[
            user("source", SHORT),
            user("custodian", SHORT),
            user("description", LONG),
        ],
    },
    CollectionSpec {
        name: "witnesses",
        fields: &[
            user("name", SHORT),
            user("contact", SHORT),
            user("statement", LONG),
        ],
    },
    CollectionSpec {
        name: MEDIA_COLLECTION,
        fields: &[
            system("sha256", Kind::Sha256Hex),
            system(
                "size",
                Kind::Int {
                    min: 0,
                    max: i64::MAX,
                },
            ),
            system("mime_type", SHORT),
            system("file_name", SHORT),
            system("captured_at", Kind::Time),
            system(
                "latitude",
                Kind::Float {
                    min: -90.0,
                    max: 90.0,
                },
            ),
            system(
                "longitude",
                Kind::Float {
                    min: -180.0,
                    max: 180.0,
                },
            ),
            user("caption", LONG),
        ],
    },
    CollectionSpec {
        name: ADDENDA_COLLECTION,
        fields: &[user("text", Kind::Text(NARRATIVE_MAX))],
    },
];

pub fn report_field(path: &str) -> Result<&'static FieldSpec, Error> {
    REPORT_FIELDS
        .iter()
        .find(|f| f.name == path)
        .ok_or_else(|| Error::UnknownField(clip(path)))
}

pub fn collection(name: &str) -> Result<&'static CollectionSpec, Error> {
    COLLECTIONS
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| Error::UnknownCollection(clip(name)))
}

pub fn entry_field(coll: &str, field: &str) -> Result<&'static FieldSpec, Error> {
    collection(coll)?
        .fields
        .iter()
        .find(|f| f.name == field)
        .ok_or_else(|| Error::UnknownField(format!("{}.{}", clip(coll), clip(field))))
}

/// Field names come from callers and peers; keep them short in errors.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a value against a field's kind. `Null` (clearing) is always valid.
pub fn validate(path: &str, spec: &FieldSpec, value: &Value) -> Result<(), Error> {
    let wrong = || Error::WrongType {
        path: path.to_string(),
        expected: spec.kind.expected(),
    };
    let invalid = |reason: &'static str| Error::InvalidValue {
        path: path.to_string(),
        reason,
    };
    if matches!(value, Value::Null) {
        return Ok(());
    }
    match (spec.kind, value) {
        (Kind::Text(max), Value::Text(s)) => {
            if s.len() > max {
                return Err(Error::TooLong {
                    path: path.to_string(),
                    max,
                });
            }
        }
        (Kind::Bool, Value::Bool(_)) => {}
        (Kind::Time, Value::Time(t)) => {
            if !(TIME_MIN_MS..TIME_MAX_MS).contains(t) {
                return Err(invalid("time outside 2000..2100"));
            }
        }
        (Kind::Float { min, max }, Value::Float(f)) => {
            if !f.is_finite() {
                return Err(invalid("not a finite number"));
            }
            if *f < min || *f > max {
                return Err(invalid("number out of range"));
            }
        }
        (Kind::Int { min, max }, Value::Int(i)) => {
            if *i < min || *i > max {
                return Err(invalid("number out of range"));
            }
        }
        (Kind::Enum(allowed), Value::Text(s)) => {
            if !allowed.contains(&s.as_str()) {
                return Err(invalid("not one of the allowed values"));
            }
        }
        (Kind::EnumList(allowed), Value::List(items)) => {
            if items.len() > allowed.len() {
                return Err(invalid("too many items"));
            }
            for (i, item) in items.iter().enumerate() {
                if !allowed.contains(&item.as_str()) {
                    return Err(invalid("not one of the allowed values"));
                }
                if items[..i].contains(item) {
                    return Err(invalid("duplicate item"));
                }
            }
        }
        (Kind::TextList, Value::List(items)) => {
            if items.len() > LIST_MAX_ITEMS {
                return Err(invalid("too many items"));
            }
            if items.iter().any(|s| s.len() > LIST_ITEM_MAX) {
                return Err(Error::TooLong {
                    path: path.to_string(),
                    max: LIST_ITEM_MAX,
                });
            }
        }
        (Kind::TimeZone, Value::Text(s)) => {
            if s.parse::<chrono_tz::Tz>().is_err() {
                return Err(invalid("unknown IANA time zone"));
            }
        }
        (Kind::Sha256Hex, Value::Text(s)) => {
            if s.len() != 64
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(invalid("not a lowercase sha256 hex digest"));
            }
        }
        _ => return Err(wrong()),
    }
    Ok(())
}
