//! The operation log and its merge: hybrid logical clock, signed changes of
//! operations, multi-value registers and observed-remove collections, and
//! materialisation of a report from its set of changes.

pub mod author;
pub mod change;
pub mod doc;
pub mod hlc;

pub use author::Edit;
pub use change::{Action, Change, ChangeBody, ChangeId, Hash, OpId, Operation, Target};
pub use doc::{Candidate, EntryState, Register, ReportDoc, State};
pub use hlc::Hlc;
