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
