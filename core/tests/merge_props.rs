//! Property tests of the merge.
//!
//! `replicas_converge`: 3–5 device stores edit one report (the same fields
//! concurrently, collection add/edit/remove, conflict resolutions) and
//! exchange changes in random order, in partial batches, with duplicates.
//! At the end every replica holds every change ever made, all show the
//! byte-identical report, and every register's conflict is exactly what an
//! independent oracle says: the values no other value's author had seen.
//!
//! `materialisation_is_order_free`: the state is the same whatever order
//! and however often changes are inserted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use fieldreport_core::crdt::{Action, ReportDoc, Target};
use fieldreport_core::store::{Heads, Store};
use fieldreport_core::{Change, ChangeId, Edit, Origin, Value};
use proptest::prelude::*;
use uuid::Uuid;

const FIELDS: &[&str] = &[
    "narrative",
    "supervisory_federal_officer.badge_number",
    "location.district",
];

#[derive(Debug, Clone)]
enum Step {
    SetField {
        replica: usize,
        field: usize,
        value: u8,
    },
    AddForce {
        replica: usize,
        value: u8,
    },
    EditForce {
        replica: usize,
        pick: usize,
        value: u8,
    },
    RemoveForce {
        replica: usize,
        pick: usize,
    },
    Resolve {
        replica: usize,
        value: u8,
    },
    Sync {
        from: usize,
        to: usize,
        keep: f64,
        seed: u64,
        dups: usize,
    },
}

fn step(n: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..n, 0..FIELDS.len(), 0u8..6).prop_map(|(replica, field, value)| Step::SetField { replica, field, value }),
        1 => (0..n, 0u8..6).prop_map(|(replica, value)| Step::AddForce { replica, value }),
        2 => (0..n, 0usize..8, 0u8..6).prop_map(|(replica, pick, value)| Step::EditForce { replica, pick, value }),
        1 => (0..n, 0usize..8).prop_map(|(replica, pick)| Step::RemoveForce { replica, pick }),
        1 => (0..n, 0u8..6).prop_map(|(replica, value)| Step::Resolve { replica, value }),
        4 => (0..n, 0..n, 0.0f64..=1.0, any::<u64>(), 0usize..4)
            .prop_map(|(from, to, keep, seed, dups)| Step::Sync { from, to, keep, seed, dups }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (3usize..=5).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 1..40)))
}

/// Deterministic shuffle (the proptest seed decides it).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

/// What each authored change's author had seen (its replica's heads).
type Seen = BTreeMap<ChangeId, Heads>;

fn author(s: &Store, seen: &mut Seen, report: Uuid, edits: &[Edit]) {
    let heads = s.heads().unwrap();
    match s.edit(report, edits) {
        Ok(id) => {
            seen.insert(id, heads);
        }
        // Editing an entry this replica saw removed is refused: fine.
        Err(fieldreport_core::Error::EntryNotFound { .. }) => {}
        Err(e) => panic!("edit failed: {e}"),
    }
}

fn visible_force(s: &Store, report: Uuid) -> Vec<Uuid> {
    s.report(report)
        .unwrap()
        .force
        .iter()
        .map(|e| e.id)
        .collect()
}

fn run(n: usize, steps: Vec<Step>) {
    let (_dirs, stores) = replicas(n);
    let report = stores[0].create_report().unwrap();
    for s in &stores[1..] {
        sync(&stores[0], s);
    }
    let mut seen: Seen = BTreeMap::new();
    let mut made = 1u64; // the creation change
    for st in steps {
        match st {
            Step::SetField {
                replica,
                field,
                value,
            } => author(
                &stores[replica],
                &mut seen,
                report,
                &[Edit::SetField {
                    path: FIELDS[field].into(),
                    value: Value::Text(format!("v{value}")),
                }],
            ),
            Step::AddForce { replica, value } => author(
                &stores[replica],
                &mut seen,
                report,
                &[Edit::AddEntry {
                    collection: "force".into(),
                    entry: Uuid::new_v4(),
                    fields: vec![("description".into(), Value::Text(format!("d{value}")))],
                }],
            ),
            Step::EditForce {
                replica,
                pick,
                value,
            } => {
                let v = visible_force(&stores[replica], report);
                if let Some(&entry) = v.get(pick % v.len().max(1)) {
                    author(
                        &stores[replica],
                        &mut seen,
                        report,
                        &[Edit::SetEntryField {
                            collection: "force".into(),
                            entry,
                            field: "description".into(),
                            value: Value::Text(format!("d{value}")),
                        }],
                    )
                }
            }
            Step::RemoveForce { replica, pick } => {
                let v = visible_force(&stores[replica], report);
                if let Some(&entry) = v.get(pick % v.len().max(1)) {
                    author(
                        &stores[replica],
                        &mut seen,
                        report,
                        &[Edit::RemoveEntry {
                            collection: "force".into(),
                            entry,
                        }],
                    )
                }
            }
            Step::Resolve { replica, value } => {
                let rep = stores[replica].report(report).unwrap();
                if let Some(c) = rep.conflicts.iter().find(|c| !c.values.is_empty()) {
                    let heads = stores[replica].heads().unwrap();
                    let v = if value % 2 == 0 {
                        c.values[value as usize % c.values.len()].value.clone()
                    } else {
                        Value::Text(format!("resolved{value}"))
                    };
                    let id = stores[replica]
                        .resolve_conflict(report, &c.path, v)
                        .unwrap();
                    seen.insert(id, heads);
                }
            }
            Step::Sync {
                from,
                to,
                keep,
                seed,
                dups,
            } => {
                if from != to {
                    let mut batch = stores[from]
                        .changes_missing_from(&stores[to].heads().unwrap())
                        .unwrap();
                    // A prefix in chain order keeps chains gap-free.
                    batch.truncate((batch.len() as f64 * keep).ceil() as usize);
                    // Duplicates of changes the receiver already holds.
                    let held = stores[to].report_changes(report).unwrap();
                    for i in 0..dups.min(held.len()) {
                        batch.push(held[(seed as usize + i) % held.len()].clone());
                    }
                    if let Some(first) = batch.first().cloned() {
                        batch.push(first);
                    }
                    shuffle(&mut batch, seed);
                    stores[to].apply_changes(batch, Origin::Peer).unwrap();
                }
            }
        }
    }
    made += seen.len() as u64;

    // Everyone meets everyone.
    for _ in 0..2 {
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    sync(&stores[a], &stores[b]);
                }
            }
        }
    }
    let json0 = stores[0].report_json(report).unwrap();
    for s in &stores {
        assert_eq!(
            s.change_count().unwrap(),
            made,
            "every change is everywhere"
        );
        assert_eq!(
            s.report_json(report).unwrap(),
            json0,
            "byte-identical report"
        );
        s.verify_integrity().unwrap();
    }

    // Oracle: a value is live iff no other value on the same target was
    // authored by a replica that had seen it.
    let changes = stores[0].report_changes(report).unwrap();
    let mut sets: BTreeMap<Target, Vec<(ChangeId, Value)>> = BTreeMap::new();
    for c in &changes {
        for op in &c.body().ops {
            if let Action::Set(v) = &op.action {
                sets.entry(op.target.clone())
                    .or_default()
                    .push((c.id(), v.clone()));
            }
        }
    }
    let had_seen = |author: &ChangeId, x: &ChangeId| -> bool {
        seen.get(author)
            .map(|h| h.get(&(report, x.device)).is_some_and(|&s| s >= x.seq))
            .unwrap_or(false)
    };
    let rep = stores[0].report(report).unwrap();
    let state = stores[0].state(report).unwrap();
    for (target, vals) in &sets {
        let live: Vec<&(ChangeId, Value)> = vals
            .iter()
            .filter(|(x, _)| !vals.iter().any(|(y, _)| y != x && had_seen(y, x)))
            .collect();
        let distinct: BTreeSet<String> = live.iter().map(|(_, v)| format!("{v:?}")).collect();
        let path = target.path();
        let shown = rep.conflicts.iter().find(|c| c.path == path);
        let removed_entry = matches!(target, Target::EntryField { collection, entry, .. }
            if state.entry(collection, *entry).is_some_and(|e| e.removed));
        if distinct.len() > 1 && !removed_entry {
            let shown = shown.unwrap_or_else(|| panic!("conflict on {path} not shown"));
            let got: BTreeSet<ChangeId> = shown
                .values
                .iter()
                .map(|v| ChangeId {
                    device: v.device,
                    seq: v.seq,
                })
                .collect();
            let want: BTreeSet<ChangeId> = live.iter().map(|(id, _)| *id).collect();
            assert_eq!(got, want, "conflict values of {path}");
        } else {
            assert!(shown.is_none(), "spurious conflict on {path}");
        }
    }
}

fn cases() -> u32 {
    std::env::var("FR_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge((n, steps) in scenario()) {
        run(n, steps);
    }
}

fn doc_json(report: Uuid, changes: &[Arc<Change>]) -> String {
    let mut doc = ReportDoc::new();
    for c in changes {
        doc.insert(c.clone());
    }
    fieldreport_core::Report::from_state(report, &doc.materialise()).to_canonical_json()
}

#[test]
fn materialisation_is_order_free() {
    // A history with conflicts and removals, from the store.
    let (_d, s) = replicas(3);
    let r = s[0].create_report().unwrap();
    sync(&s[0], &s[1]);
    sync(&s[0], &s[2]);
    for (i, st) in s.iter().enumerate() {
        st.set_field(r, "narrative", Value::Text(format!("n{i}")))
            .unwrap();
        let e = st
            .add_entry(
                r,
                "witnesses",
                vec![("name".into(), Value::Text(format!("w{i}")))],
            )
            .unwrap();
        if i == 1 {
            st.remove_entry(r, "witnesses", e).unwrap();
        }
    }
    for a in 0..3 {
        for b in 0..3 {
            if a != b {
                sync(&s[a], &s[b]);
            }
        }
    }
    let changes: Vec<Arc<Change>> = s[0]
        .report_changes(r)
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    let expected = s[0].report_json(r).unwrap();
    proptest!(ProptestConfig::with_cases(cases()), |(seed in any::<u64>(), extra in prop::collection::vec(0usize..64, 0..20))| {
        let mut order = changes.clone();
        shuffle(&mut order, seed);
        for i in extra {
            order.push(changes[i % changes.len()].clone());
        }
        prop_assert_eq!(doc_json(r, &order), expected.clone());
    });
}
