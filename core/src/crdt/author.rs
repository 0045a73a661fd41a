//! Turning a user's edits into operations against the current state: checks
//! the schema and who may write what, and fills `pred` with what the author
//! sees now.

use std::collections::HashSet;

use uuid::Uuid;

use super::change::{Action, Operation, Target};
use super::doc::State;
use crate::error::{Error, Result};
use crate::model::schema::{self, Access};
use crate::model::value::Value;

/// One edit of a user action. Several edits made together become one change.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Set (or clear, with `Value::Null`) a report field. Setting a field in
    /// conflict resolves the conflict.
    SetField {
        path: String,
        value: Value,
    },
    /// Add an entry with its first field values.
    AddEntry {
        collection: String,
        entry: Uuid,
        fields: Vec<(String, Value)>,
    },
    SetEntryField {
        collection: String,
        entry: Uuid,
        field: String,
        value: Value,
    },
    RemoveEntry {
        collection: String,
        entry: Uuid,
    },
    /// Keep an entry that was removed (or removed concurrently with an edit).
    RestoreEntry {
        collection: String,
        entry: Uuid,
    },
}

/// Who is writing: the app (user fields only) or the core itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    User,
    System,
}

fn check_access(path: &str, access: Access, writer: Writer) -> Result<()> {
    if access != Access::User && writer == Writer::User {
        return Err(Error::ReadOnlyField(path.to_string()));
    }
    Ok(())
}

pub(crate) fn build_ops(state: &State, edits: &[Edit], writer: Writer) -> Result<Vec<Operation>> {
    let mut ops = Vec::new();
    let mut touched: HashSet<Target> = HashSet::new();
    let mut push = |op: Operation, ops: &mut Vec<Operation>| -> Result<()> {
        if !touched.insert(op.target.clone()) {
            return Err(Error::InvalidValue {
                path: op.target.path(),
                reason: "edited twice in one change",
            });
        }
        ops.push(op);
        Ok(())
    };
    for edit in edits {
        match edit {
            Edit::SetField { path, value } => {
                let spec = schema::report_field(path)?;
                check_access(path, spec.access, writer)?;
                schema::validate(path, spec, value)?;
                let target = Target::Field(path.clone());
                let pred = state.pred_for(&target);
                push(op(target, Action::Set(value.clone()), pred), &mut ops)?;
            }
            Edit::AddEntry {
                collection,
                entry,
                fields,
            } => {
                let spec = schema::collection(collection)?;
                if spec.name == schema::MEDIA_COLLECTION && writer == Writer::User {
                    return Err(Error::ReadOnlyField(collection.clone()));
                }
                if state.entry(collection, *entry).is_some() {
                    return Err(Error::EntryExists {
                        collection: collection.clone(),
                        entry: *entry,
                    });
                }
                let target = Target::Entry {
                    collection: collection.clone(),
                    entry: *entry,
                };
                push(op(target, Action::Add, Vec::new()), &mut ops)?;
                for (field, value) in fields {
                    let target =
                        entry_field(state, collection, *entry, field, value, writer, true)?;
                    push(op(target, Action::Set(value.clone()), Vec::new()), &mut ops)?;
                }
            }
            Edit::SetEntryField {
                collection,
                entry,
                field,
                value,
            } => {
                let target = entry_field(state, collection, *entry, field, value, writer, false)?;
                let pred = state.pred_for(&target);
                push(op(target, Action::Set(value.clone()), pred), &mut ops)?;
            }
            Edit::RemoveEntry { collection, entry } => {
                schema::collection(collection)?;
                let e = state
                    .entry(collection, *entry)
                    .filter(|e| !e.removed)
                    .ok_or_else(|| not_found(collection, *entry))?;
                let target = Target::Entry {
                    collection: collection.clone(),
                    entry: *entry,
                };
                push(op(target, Action::Remove, e.removal_pred()), &mut ops)?;
            }
            Edit::RestoreEntry { collection, entry } => {
                schema::collection(collection)?;
                let e = state
                    .entry(collection, *entry)
                    .filter(|e| e.removed || e.removal_conflict)
                    .ok_or_else(|| not_found(collection, *entry))?;
                let target = Target::Entry {
                    collection: collection.clone(),
                    entry: *entry,
                };
                push(op(target, Action::Add, e.existence_live.clone()), &mut ops)?;
            }
        }
    }
    if ops.is_empty() {
        return Err(Error::InvalidValue {
            path: String::new(),
            reason: "no edits",
        });
    }
    Ok(ops)
}

fn op(target: Target, action: Action, pred: Vec<OpId>) -> Operation {
    Operation {
        target,
        action,
        pred,
    }
}

use super::change::OpId;

fn not_found(collection: &str, entry: Uuid) -> Error {
    Error::EntryNotFound {
        collection: collection.to_string(),
        entry,
    }
}

fn entry_field(
    state: &State,
    collection: &str,
    entry: Uuid,
    field: &str,
    value: &Value,
    writer: Writer,
    new_entry: bool,
) -> Result<Target> {
    let spec = schema::entry_field(collection, field)?;
    let path = format!("{collection}.{field}");
    check_access(&path, spec.access, writer)?;
    schema::validate(&path, spec, value)?;
    if !new_entry && state.entry(collection, entry).is_none_or(|e| e.removed) {
        return Err(not_found(collection, entry));
    }
    Ok(Target::EntryField {
        collection: collection.to_string(),
        entry,
        field: field.to_string(),
    })
}
