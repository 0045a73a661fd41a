//! One report as a set of changes, and its materialisation.
//!
//! The state is a pure function of the set of changes: the order in which
//! they arrived never matters, so merge is commutative, associative and
//! idempotent by construction (inserting a change twice is a no-op).
//!
//! Registers: the live values of a target are its `Set` operations that no
//! other operation on the same target names in `pred`. Several live values
//! that differ are a conflict; all are kept, and the one with the highest
//! (HLC, device, seq, index) is displayed until a person resolves it.
//!
//! Entries: existence is a register of `Add` / `Remove` operations. An entry
//! whose live existence ops are all removals is removed only if every live
//! field value of the entry was seen by a removal; an edit the removal did
//! not see keeps the entry and flags it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use uuid::Uuid;

use super::change::{Action, Change, ChangeId, Hash, OpId, Operation, Target};
use super::hlc::Hlc;
use crate::model::schema::{ADDENDA_COLLECTION, LIFECYCLE_FIELD};
use crate::model::value::Value;
use crate::model::workflow::{self, Amendment, Lifecycle};
use crate::model::LifecycleState;

/// A live value of a register, with who wrote it and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub op: OpId,
    pub hlc: Hlc,
    pub wall_clock_ms: i64,
    pub value: Value,
}

/// A register's live values, the displayed one first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Register {
    pub live: Vec<Candidate>,
}

impl Register {
    pub fn value(&self) -> Option<&Value> {
        self.live.first().map(|c| &c.value)
    }

    pub fn is_conflict(&self) -> bool {
        match self.live.split_first() {
            Some((first, rest)) => rest.iter().any(|c| !c.value.same_as(&first.value)),
            None => false,
        }
    }

    pub fn live_ids(&self) -> Vec<OpId> {
        self.live.iter().map(|c| c.op).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EntryState {
    pub id: Uuid,
    /// HLC of the earliest operation on the entry (orders entries).
    pub created: Hlc,
    pub fields: BTreeMap<String, Register>,
    pub removed: bool,
    /// Kept because an edit or a re-add was concurrent with a removal.
    pub removal_conflict: bool,
    /// Live existence operations (named by the next add/remove).
    pub existence_live: Vec<OpId>,
}

impl EntryState {
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).and_then(Register::value)
    }

    /// Everything a removal made now would have seen.
    pub fn removal_pred(&self) -> Vec<OpId> {
        let mut pred = self.existence_live.clone();
        for r in self.fields.values() {
            pred.extend(r.live_ids());
        }
        pred.sort();
        pred.dedup();
        pred
    }
}

/// The materialised state of one report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub fields: BTreeMap<String, Register>,
    /// Per collection, entries ordered by (created, id); removed ones kept.
    pub collections: BTreeMap<String, Vec<EntryState>>,
    pub created: Option<(Hlc, Uuid)>,
    pub updated: Option<Hlc>,
    /// The lifecycle replayed from every transition (not the register).
    pub lifecycle: Lifecycle,
    /// Content edits after the first submission, in (HLC, change) order.
    pub amendments: Vec<Amendment>,
}

impl State {
    pub fn field(&self, path: &str) -> Option<&Value> {
        self.fields.get(path).and_then(Register::value)
    }

    pub fn entry(&self, collection: &str, id: Uuid) -> Option<&EntryState> {
        self.collections
            .get(collection)
            .and_then(|es| es.iter().find(|e| e.id == id))
    }

    /// The register a target names, if it has one.
    pub fn register(&self, target: &Target) -> Option<&Register> {
        match target {
            Target::Field(p) => self.fields.get(p),
            Target::EntryField {
                collection,
                entry,
                field,
            } => self.entry(collection, *entry)?.fields.get(field),
            Target::Entry { .. } => None,
        }
    }

    /// The ops a new operation on `target` must name in `pred`.
    pub fn pred_for(&self, target: &Target) -> Vec<OpId> {
        match target {
            Target::Entry { collection, entry } => self
                .entry(collection, *entry)
                .map(|e| e.existence_live.clone())
                .unwrap_or_default(),
            other => self
                .register(other)
                .map(Register::live_ids)
                .unwrap_or_default(),
        }
    }

    pub fn conflict_count(&self) -> usize {
        // Lifecycle transitions are replayed, never a conflict.
        let fields = self
            .fields
            .iter()
            .filter(|(p, r)| p.as_str() != LIFECYCLE_FIELD && r.is_conflict())
            .count();
        let entries: usize = self
            .collections
            .values()
            .flatten()
            .filter(|e| !e.removed)
            .map(|e| {
                e.fields.values().filter(|r| r.is_conflict()).count()
                    + usize::from(e.removal_conflict)
            })
            .sum();
        fields + entries
    }
}

/// One report's changes. Cheap to clone (changes are shared).
#[derive(Debug, Clone, Default)]
pub struct ReportDoc {
    changes: BTreeMap<ChangeId, Arc<Change>>,
}

impl ReportDoc {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a change; false if it was already there. The caller has verified
    /// it (signature, chain) and that it belongs to this report.
    pub fn insert(&mut self, change: Arc<Change>) -> bool {
        use std::collections::btree_map::Entry;
        match self.changes.entry(change.id()) {
            Entry::Vacant(v) => {
                v.insert(change);
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn changes(&self) -> impl Iterator<Item = &Arc<Change>> {
        self.changes.values()
    }

    pub fn get(&self, id: &ChangeId) -> Option<&Arc<Change>> {
        self.changes.get(id)
    }

    /// Hash of the newest change by `device` (the next change's `prev`).
    pub fn chain_head(&self, device: Uuid) -> Option<Hash> {
        self.changes
            .range(
                ChangeId { device, seq: 0 }..=ChangeId {
                    device,
                    seq: u64::MAX,
                },
            )
            .next_back()
            .map(|(_, c)| *c.hash())
    }

    pub fn materialise(&self) -> State {
        materialise(self.changes.values().map(|c| c.as_ref()))
    }
}

/// Per entry while materialising: existence ops, field registers, earliest HLC.
struct EntryAcc<'a> {
    created: Hlc,
    /// Live existence ops: (id, is an add, what it named).
    existence: Vec<(OpId, bool, &'a [OpId])>,
    fields: BTreeMap<String, Register>,
}

struct OpRef<'a> {
    id: OpId,
    hlc: Hlc,
    wall: i64,
    op: &'a Operation,
}

/// The state of a set of changes (all of one report).
pub fn materialise<'a, I>(changes: I) -> State
where
    I: IntoIterator<Item = &'a Change>,
    I::IntoIter: Clone,
{
    let changes = changes.into_iter();
    let again = changes.clone();
    let mut by_target: BTreeMap<&Target, Vec<OpRef<'a>>> = BTreeMap::new();
    let mut state = State::default();
    let mut transitions = Vec::new();
    for change in changes {
        let b = change.body();
        let key = (b.hlc, b.device);
        if state.created.is_none_or(|c| key < c) {
            state.created = Some(key);
        }
        if state.updated.is_none_or(|u| b.hlc > u) {
            state.updated = Some(b.hlc);
        }
        for (i, op) in b.ops.iter().enumerate() {
            if let (Target::Field(p), Action::Set(Value::Text(t))) = (&op.target, &op.action) {
                if p == LIFECYCLE_FIELD {
                    if let Some(to) = LifecycleState::parse(t) {
                        transitions.push((b.hlc, b.id(), b.wall_clock_ms, to));
                    }
                }
            }
            by_target.entry(&op.target).or_default().push(OpRef {
                id: OpId {
                    device: b.device,
                    seq: b.seq,
                    index: i as u32,
                },
                hlc: b.hlc,
                wall: b.wall_clock_ms,
                op,
            });
        }
    }

    let mut entries: BTreeMap<(&str, Uuid), EntryAcc> = BTreeMap::new();

    for (target, ops) in &by_target {
        let named: HashSet<OpId> = ops.iter().flat_map(|o| o.op.pred.iter().copied()).collect();
        let live = ops.iter().filter(|o| !named.contains(&o.id));
        match target {
            Target::Field(path) => {
                state.fields.insert(path.clone(), register(live));
            }
            Target::EntryField {
                collection,
                entry,
                field,
            } => {
                let acc = entry_acc(&mut entries, collection, *entry, ops);
                acc.fields.insert(field.clone(), register(live));
            }
            Target::Entry { collection, entry } => {
                let acc = entry_acc(&mut entries, collection, *entry, ops);
                acc.existence = live
                    .map(|o| (o.id, o.op.action == Action::Add, o.op.pred.as_slice()))
                    .collect();
            }
        }
    }

    for ((collection, id), acc) in entries {
        let adds = acc.existence.iter().filter(|e| e.1).count();
        let removes = acc.existence.len() - adds;
        let (removed, removal_conflict) = if adds > 0 {
            (false, removes > 0)
        } else if removes > 0 {
            let seen: BTreeSet<OpId> = acc
                .existence
                .iter()
                .flat_map(|e| e.2.iter().copied())
                .collect();
            let unseen_edit = acc
                .fields
                .values()
                .flat_map(|r| r.live.iter())
                .any(|c| !seen.contains(&c.op));
            (!unseen_edit, unseen_edit)
        } else {
            (false, false)
        };
        let mut existence_live: Vec<OpId> = acc.existence.iter().map(|e| e.0).collect();
        existence_live.sort();
        state
            .collections
            .entry(collection.to_string())
            .or_default()
            .push(EntryState {
                id,
                created: acc.created,
                fields: acc.fields,
                removed,
                removal_conflict,
                existence_live,
            });
    }
    for entries in state.collections.values_mut() {
        entries.sort_by_key(|e| (e.created, e.id));
    }
    state.lifecycle = workflow::replay(transitions);
    // Drafts (most edits) skip this second pass.
    if let Some(submitted) = state.lifecycle.submitted {
        let mut content: Vec<(Hlc, ChangeId, i64, &Target)> = Vec::new();
        for change in again {
            let b = change.body();
            if b.hlc <= submitted {
                continue;
            }
            for op in &b.ops {
                let addendum = matches!(
                    &op.target,
                    Target::Entry { collection, .. } | Target::EntryField { collection, .. }
                        if collection == ADDENDA_COLLECTION
                );
                // Addenda are how a report grows after approval, not amendments.
                if !addendum && workflow::is_content(&op.target) {
                    content.push((b.hlc, b.id(), b.wall_clock_ms, &op.target));
                }
            }
        }
        content.sort_by_key(|c| (c.0, c.1));
        state.amendments = content
            .into_iter()
            .map(|(hlc, change, wall, target)| Amendment {
                path: target.path(),
                change,
                wall_clock_ms: wall,
                after_lock: state.lifecycle.locked.is_some_and(|l| hlc > l),
            })
            .collect();
    }
    state
}

fn entry_acc<'m, 'a>(
    entries: &'m mut BTreeMap<(&'a str, Uuid), EntryAcc<'a>>,
    collection: &'a str,
    entry: Uuid,
    ops: &[OpRef<'a>],
) -> &'m mut EntryAcc<'a> {
    let first = ops.iter().map(|o| o.hlc).min().unwrap_or_default();
    let acc = entries
        .entry((collection, entry))
        .or_insert_with(|| EntryAcc {
            created: first,
            existence: Vec::new(),
            fields: BTreeMap::new(),
        });
    acc.created = acc.created.min(first);
    acc
}

fn register<'a, 'b: 'a>(live: impl Iterator<Item = &'a OpRef<'b>>) -> Register {
    let mut live: Vec<Candidate> = live
        .filter_map(|o| match &o.op.action {
            Action::Set(v) => Some(Candidate {
                op: o.id,
                hlc: o.hlc,
                wall_clock_ms: o.wall,
                value: v.clone(),
            }),
            _ => None,
        })
        .collect();
    // Displayed value first: highest clock, then device id, then op id.
    live.sort_by_key(|c| std::cmp::Reverse((c.hlc, c.op)));
    Register { live }
}
