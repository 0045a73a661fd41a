//! The typed incident report the order asks for: its vocabularies, its
//! field schema (kinds and limits), register values, and the typed view.

pub mod enums;
pub mod report;
pub mod schema;
pub mod value;
pub mod workflow;

pub use enums::*;
pub use report::{Conflict, ConflictKind, ConflictValue, Entry, Report};
pub use value::Value;

/// Media hashes that changes attach (the sync client uploads them first;
/// the station refuses a change attaching one it does not hold).
pub fn media_refs(changes: &[crate::crdt::Change]) -> Vec<String> {
    use crate::crdt::{Action, Target};
    let mut out = Vec::new();
    for c in changes {
        for op in &c.body().ops {
            if let (
                Target::EntryField {
                    collection, field, ..
                },
                Action::Set(Value::Text(h)),
            ) = (&op.target, &op.action)
            {
                if collection == schema::MEDIA_COLLECTION && field == "sha256" {
                    out.push(h.clone());
                }
            }
        }
    }
    out
}
