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
//!
//! Order: the lifecycle replay and amendments follow the report's causal
//! order (see [`Causal`]), so a change whose clock ran far ahead neither
//! outranks what was made after it nor drags the report's times; it is
//! flagged (`State::clock_ahead`). A clock from before FieldReport existed
//! (an unset phone clock) drags nothing back either (`State::clock_unset`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use uuid::Uuid;

use super::change::{Action, Change, ChangeId, Hash, OpId, Operation, Target};
use super::hlc::{Hlc, CLOCK_FLOOR_MS};
use crate::model::schema::{ADDENDA_COLLECTION, LIFECYCLE_FIELD};
use crate::model::value::Value;
use crate::model::workflow::{self, Amendment, ClockAhead, ClockUnset, Lifecycle};
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
    /// Effective clock of the earliest operation on the entry (orders entries).
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
    /// Content edits after the first submission, in replay order.
    pub amendments: Vec<Amendment>,
    /// The report's creation changes (one, unless a crafted history holds
    /// more; receivers refuse a second).
    pub creations: Vec<ChangeId>,
    /// Changes whose clock is later than a causally later change's, by id.
    pub clock_ahead: Vec<ClockAhead>,
    /// Changes whose clock is before [`CLOCK_FLOOR_MS`], by id.
    pub clock_unset: Vec<ClockUnset>,
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

/// Per entry while materialising: existence ops, field registers, earliest clock.
struct EntryAcc<'a> {
    created: Hlc,
    /// Live existence ops: (id, is an add, what it named).
    existence: Vec<(OpId, bool, &'a [OpId])>,
    fields: BTreeMap<String, Register>,
}

struct OpRef<'a> {
    id: OpId,
    hlc: Hlc,
    /// The change's effective clock (see [`Causal`]).
    eff: Hlc,
    wall: i64,
    op: &'a Operation,
}

/// The causal order of one report's changes (indexes into the changes,
/// sorted by change id).
///
/// A change comes after every change it names in an operation's `pred`
/// (the author had seen it) and after the earlier changes of its own
/// device (its chain). The replay order is a topological order of that
/// graph, taking among the changes whose predecessors are all placed the
/// one with the lowest (HLC, change id). On honest clocks every edge goes
/// from a lower HLC to a higher one, so this is simply (HLC, change id)
/// order; a change whose clock ran far ahead cannot outrank what was made
/// after it. (A cycle, which only crafted `pred`s can make, is broken by
/// placing the lowest remaining (HLC, change id) next.)
///
/// A change's effective clock is the lowest HLC among itself and every
/// change causally after it: its own HLC unless some later change carries
/// an earlier clock, in which case the change is flagged (clock ahead).
/// Clocks before [`CLOCK_FLOOR_MS`] (a device whose clock was unset or
/// reset) are left out of that: such a change lowers nobody's clock, flags
/// nobody, takes the latest effective clock of what it names, and is
/// itself flagged (clock unset).
pub(crate) struct Causal {
    /// Change indexes in replay order.
    pub order: Vec<usize>,
    /// Position of each change in `order`.
    pub rank: Vec<usize>,
    /// Successors (edges that go forward in `order`).
    pub succ: Vec<Vec<usize>>,
    pub eff: Vec<Hlc>,
    /// For a flagged change, the causally later change with the lowest
    /// (HLC, change id).
    pub followed_by: Vec<Option<usize>>,
    /// Changes whose clock is before [`CLOCK_FLOOR_MS`].
    pub unset: Vec<bool>,
}

impl Causal {
    pub(crate) fn of(changes: &[&Change]) -> Causal {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let n = changes.len();
        let key = |i: usize| (changes[i].body().hlc, changes[i].id());
        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut indeg = vec![0usize; n];
        let mut preds = Vec::new();
        // What replay sorts ready changes by: the HLC, or for a clock that
        // was never set (before the floor), the latest clock among what its
        // author had seen, so it does not go first among concurrent steps.
        let mut sort_clock: Vec<Hlc> = changes.iter().map(|c| c.body().hlc).collect();
        for (d, c) in changes.iter().enumerate() {
            let b = c.body();
            preds.clear();
            // The chain: sorted by id, the previous entry of the same
            // device is its previous change to this report.
            if d > 0 && changes[d - 1].device() == b.device {
                preds.push(d - 1);
            }
            for p in b.ops.iter().flat_map(|op| op.pred.iter()) {
                let id = ChangeId {
                    device: p.device,
                    seq: p.seq,
                };
                if let Ok(i) = changes.binary_search_by_key(&id, |c| c.id()) {
                    if i != d && (p.index as usize) < changes[i].body().ops.len() {
                        preds.push(i);
                    }
                }
            }
            preds.sort_unstable();
            preds.dedup();
            for &i in &preds {
                succ[i].push(d);
            }
            indeg[d] = preds.len();
            if b.hlc.wall_ms < CLOCK_FLOOR_MS {
                for &i in &preds {
                    sort_clock[d] = sort_clock[d].max(changes[i].body().hlc);
                }
            }
        }
        let order_key = |i: usize| (sort_clock[i], changes[i].id());
        let mut ready: BinaryHeap<Reverse<(Hlc, ChangeId, usize)>> = (0..n)
            .filter(|&i| indeg[i] == 0)
            .map(|i| {
                let (h, id) = order_key(i);
                Reverse((h, id, i))
            })
            .collect();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        // Only for breaking cycles: every change by (HLC, change id).
        let mut by_key: Vec<usize> = Vec::new();
        let mut next_key = 0;
        while order.len() < n {
            let i = match ready.pop() {
                Some(Reverse((_, _, i))) => i,
                None => {
                    if by_key.is_empty() {
                        by_key = (0..n).collect();
                        by_key.sort_by_key(|&i| key(i));
                    }
                    while placed[by_key[next_key]] {
                        next_key += 1;
                    }
                    by_key[next_key]
                }
            };
            if placed[i] {
                continue;
            }
            placed[i] = true;
            order.push(i);
            for &s in &succ[i] {
                if !placed[s] {
                    indeg[s] -= 1;
                    if indeg[s] == 0 {
                        let (h, id) = order_key(s);
                        ready.push(Reverse((h, id, s)));
                    }
                }
            }
        }
        let mut rank = vec![0usize; n];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        for (i, s) in succ.iter_mut().enumerate() {
            s.retain(|&d| rank[d] > rank[i]);
        }
        // A clock before the floor was never right (an unset or reset
        // device clock): it says nothing of when its change was made, so it
        // lowers no other change's clock and flags none.
        let set = |i: usize| changes[i].body().hlc.wall_ms >= CLOCK_FLOOR_MS;
        // Lowest (HLC, id) over each change and its descendants whose
        // clocks are set, latest first.
        let mut low: Vec<Option<(Hlc, ChangeId, usize)>> = vec![None; n];
        for &i in order.iter().rev() {
            let (h, id) = key(i);
            let mut m = set(i).then_some((h, id, i));
            for &d in &succ[i] {
                m = match (m, low[d]) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            low[i] = m;
        }
        // A change with an unset clock takes the latest effective clock of
        // what its author had seen (its own when it saw nothing).
        let mut eff: Vec<Hlc> = vec![Hlc::default(); n];
        let mut preds_eff: Vec<Option<Hlc>> = vec![None; n];
        for &i in &order {
            eff[i] = if set(i) {
                low[i].map_or(key(i).0, |l| l.0)
            } else {
                preds_eff[i].map_or(key(i).0, |p| p.max(key(i).0))
            };
            for &d in &succ[i] {
                preds_eff[d] = Some(preds_eff[d].map_or(eff[i], |p| p.max(eff[i])));
            }
        }
        let followed_by = (0..n)
            .map(|i| low[i].filter(|l| set(i) && l.0 < key(i).0).map(|l| l.2))
            .collect();
        let unset = (0..n).map(|i| !set(i)).collect();
        Causal {
            order,
            rank,
            succ,
            eff,
            followed_by,
            unset,
        }
    }

    /// The changes causally after `from` (not itself).
    /// The changes `to` comes causally after (its author had seen them).
    fn ancestors(&self, to: usize) -> Vec<bool> {
        let mut preds: Vec<Vec<usize>> = vec![Vec::new(); self.rank.len()];
        for (i, s) in self.succ.iter().enumerate() {
            for &d in s {
                preds[d].push(i);
            }
        }
        let mut seen = vec![false; self.rank.len()];
        let mut stack = preds[to].clone();
        while let Some(i) = stack.pop() {
            if !seen[i] {
                seen[i] = true;
                stack.extend(preds[i].iter().copied().filter(|&p| !seen[p]));
            }
        }
        seen
    }

    fn descendants(&self, from: usize) -> Vec<bool> {
        let mut seen = vec![false; self.rank.len()];
        let mut stack = self.succ[from].clone();
        while let Some(i) = stack.pop() {
            if !seen[i] {
                seen[i] = true;
                stack.extend(self.succ[i].iter().copied().filter(|&d| !seen[d]));
            }
        }
        seen
    }
}

/// The state of a set of changes (all of one report).
pub fn materialise<'a, I>(changes: I) -> State
where
    I: IntoIterator<Item = &'a Change>,
{
    let mut changes: Vec<&'a Change> = changes.into_iter().collect();
    changes.sort_by_key(|c| c.id());
    changes.dedup_by_key(|c| c.id());
    let mut state = State::default();
    if changes.is_empty() {
        return state;
    }
    let causal = Causal::of(&changes);
    let mut by_target: BTreeMap<&Target, Vec<OpRef<'a>>> = BTreeMap::new();
    let mut transitions = Vec::new();
    for (ci, change) in changes.iter().enumerate() {
        let b = change.body();
        let eff = causal.eff[ci];
        if state.updated.is_none_or(|u| eff > u) {
            state.updated = Some(eff);
        }
        if workflow::is_creation(b) {
            state.creations.push(b.id());
        }
        if causal.unset[ci] {
            state.clock_unset.push(ClockUnset {
                change: b.id(),
                clock_ms: b.hlc.wall_ms,
                wall_clock_ms: b.wall_clock_ms,
            });
        }
        if let Some(f) = causal.followed_by[ci] {
            let later = changes[f].body();
            state.clock_ahead.push(ClockAhead {
                change: b.id(),
                clock_ms: b.hlc.wall_ms,
                clock_counter: b.hlc.counter,
                wall_clock_ms: b.wall_clock_ms,
                followed_by: later.id(),
                followed_clock_ms: later.hlc.wall_ms,
            });
        }
        for (i, op) in b.ops.iter().enumerate() {
            if let (Target::Field(p), Action::Set(Value::Text(t))) = (&op.target, &op.action) {
                if p == LIFECYCLE_FIELD {
                    if let Some(to) = LifecycleState::parse(t) {
                        transitions.push((causal.rank[ci], b.hlc, b.id(), b.wall_clock_ms, to));
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
                eff,
                wall: b.wall_clock_ms,
                op,
            });
        }
    }
    // The creation: the change that started the draft (the first in replay
    // order should a crafted history hold several); failing that, the
    // earliest change.
    let creator = changes
        .iter()
        .enumerate()
        .filter(|(_, c)| workflow::is_creation(c.body()))
        .min_by_key(|(i, _)| causal.rank[*i])
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            (0..changes.len())
                .min_by_key(|&i| (causal.eff[i], changes[i].device()))
                .unwrap_or(0)
        });
    state.created = Some((causal.eff[creator], changes[creator].device()));

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
    transitions.sort_by_key(|t| t.0);
    state.lifecycle = workflow::replay(
        transitions
            .into_iter()
            .map(|(_, hlc, id, wall, to)| (hlc, id, wall, to)),
    );
    // Drafts (most edits) skip this second pass.
    let index = |id: ChangeId| changes.binary_search_by_key(&id, |c| c.id()).ok();
    if let Some(submitted) = state.lifecycle.submitted.and_then(index) {
        // After a step: causally after it, or with a later effective clock;
        // a change whose clock was never set, unless it is known to be
        // before the step (the step's author had seen it): its clock cannot
        // say, so it is listed rather than hidden.
        let eff = &causal.eff;
        let unset = &causal.unset;
        let after = |step: usize| {
            let desc = causal.descendants(step);
            let before = causal.ancestors(step);
            move |i: usize| desc[i] || (unset[i] && !before[i] && i != step) || eff[i] > eff[step]
        };
        let after_submission = after(submitted);
        let after_lock = state.lifecycle.locked.and_then(index).map(&after);
        let mut content: Vec<(usize, usize, &Target)> = Vec::new();
        for (ci, change) in changes.iter().enumerate() {
            if !after_submission(ci) {
                continue;
            }
            for (k, op) in change.body().ops.iter().enumerate() {
                let addendum = matches!(
                    &op.target,
                    Target::Entry { collection, .. } | Target::EntryField { collection, .. }
                        if collection == ADDENDA_COLLECTION
                );
                // Addenda are how a report grows after approval, not amendments.
                if !addendum && workflow::is_content(&op.target) {
                    content.push((causal.rank[ci], k, &op.target));
                }
            }
        }
        content.sort_by_key(|c| (c.0, c.1));
        state.amendments = content
            .into_iter()
            .map(|(rank, _, target)| {
                let ci = causal.order[rank];
                let b = changes[ci].body();
                Amendment {
                    path: target.path(),
                    change: b.id(),
                    wall_clock_ms: b.wall_clock_ms,
                    after_lock: after_lock.as_ref().is_some_and(|f| f(ci)),
                }
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
    let first = ops.iter().map(|o| o.eff).min().unwrap_or_default();
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
    // (Live values are concurrent: none names another, so a causally later
    // value has always replaced an earlier one, whatever their clocks.)
    live.sort_by_key(|c| std::cmp::Reverse((c.hlc, c.op)));
    Register { live }
}
