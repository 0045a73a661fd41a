//! Property tests of the merge.
//!
//! `replicas_converge`: 3–5 device stores edit one report (the same fields
//! concurrently, collection add/edit/remove, conflict resolutions) and
//! exchange changes in random order, in partial batches, with duplicates.
//! At the end every replica holds every change ever made, all show the
//! byte-identical report, and every register's conflict is exactly what an
//! independent oracle says: the values no other value's author had seen.
//!
//! In some cases one officer's phone has its clock 80 years ahead, and a
//! supervisor returns and approves what the officers submit: every
//! lifecycle step still comes after every step its author had seen, no
//! other replica's clock (nor any change it makes) goes beyond the bound,
//! and exactly the far-ahead phone's changes that others built on are
//! flagged.
//!
//! `materialisation_is_order_free`: the state is the same whatever order
//! and however often changes are inserted (with a far-ahead clock in the
//! history).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use fieldreport_core::crdt::{Action, ReportDoc, Target};
use fieldreport_core::store::{Heads, Store};
use fieldreport_core::{Change, ChangeId, Edit, Error, Origin, Role, Value};
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
    Submit {
        replica: usize,
    },
    /// The supervisor approves, or returns with a comment.
    Supervise {
        approve: bool,
    },
    Sync {
        from: usize,
        to: usize,
        keep: f64,
        seed: u64,
        dups: usize,
    },
}

/// Officers are replicas `0..n`; the supervisor is replica `n`.
fn step(n: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..n, 0..FIELDS.len(), 0u8..6).prop_map(|(replica, field, value)| Step::SetField { replica, field, value }),
        1 => (0..n, 0u8..6).prop_map(|(replica, value)| Step::AddForce { replica, value }),
        2 => (0..n, 0usize..8, 0u8..6).prop_map(|(replica, pick, value)| Step::EditForce { replica, pick, value }),
        1 => (0..n, 0usize..8).prop_map(|(replica, pick)| Step::RemoveForce { replica, pick }),
        1 => (0..n, 0u8..6).prop_map(|(replica, value)| Step::Resolve { replica, value }),
        2 => (0..n).prop_map(|replica| Step::Submit { replica }),
        3 => any::<bool>().prop_map(|approve| Step::Supervise { approve }),
        4 => (0..=n, 0..=n, 0.0f64..=1.0, any::<u64>(), 0usize..4)
            .prop_map(|(from, to, keep, seed, dups)| Step::Sync { from, to, keep, seed, dups }),
    ]
}

/// Officer count, the officer whose clock runs 80 years ahead (if any),
/// and the steps.
fn scenario() -> impl Strategy<Value = (usize, Option<usize>, Vec<Step>)> {
    (3usize..=5).prop_flat_map(|n| {
        (
            Just(n),
            prop_oneof![Just(None), (0..n).prop_map(Some)],
            prop::collection::vec(step(n), 1..40),
        )
    })
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

/// Records what the author had seen when a step succeeds; a step refused
/// for the report's state (editing an entry this replica saw removed,
/// editing after approval, approving what is not submitted) is fine.
fn record(seen: &mut Seen, heads: Heads, result: fieldreport_core::Result<ChangeId>) {
    match result {
        Ok(id) => {
            seen.insert(id, heads);
        }
        Err(Error::EntryNotFound { .. } | Error::InvalidState { .. }) => {}
        Err(e) => panic!("step failed: {e}"),
    }
}

/// Every replica syncs with every other; all then show report `r` alike.
fn exchange_all_and_agree(s: &[Store], r: Uuid) {
    for a in s {
        for b in s {
            if !std::ptr::eq(a, b) {
                sync(a, b);
            }
        }
    }
    let json = s[0].report_json(r).unwrap();
    for st in s {
        assert_eq!(st.report_json(r).unwrap(), json, "all replicas agree");
    }
}

/// Each lifecycle step of a report, in replay order, with whether it applied.
fn applied_steps(rep: &fieldreport_core::Report) -> Vec<(ChangeId, bool)> {
    rep.lifecycle_history
        .iter()
        .map(|h| (h.change, h.applied))
        .collect()
}

/// The fields a submission needs.
fn required_for_submission() -> Vec<Edit> {
    let set = |path: &str, value: Value| Edit::SetField {
        path: path.into(),
        value,
    };
    vec![
        set("occurred.start", Value::Time(1_795_000_000_000)),
        set("location.address", Value::Text("W 26th St".into())),
        set("federal_agencies", Value::List(vec!["ice".into()])),
    ]
}

fn author(s: &Store, seen: &mut Seen, report: Uuid, edits: &[Edit]) {
    let heads = s.heads().unwrap();
    record(seen, heads, s.edit(report, edits));
}

fn visible_force(s: &Store, report: Uuid) -> Vec<Uuid> {
    s.report(report)
        .unwrap()
        .force
        .iter()
        .map(|e| e.id)
        .collect()
}

fn run(n: usize, far: Option<usize>, steps: Vec<Step>) {
    let mut people: Vec<_> = (0..n)
        .map(|i| {
            let offset = if far == Some(i) { EIGHTY_YEARS_MS } else { 0 };
            (person(&format!("officer{i}"), Role::Officer), offset)
        })
        .collect();
    people.push((person("sergeant", Role::Supervisor), 0));
    let (_dirs, stores) = stores_with(&people);
    let report = stores[0].create_report().unwrap();
    // What a submission needs.
    stores[0].edit(report, &required_for_submission()).unwrap();
    for s in &stores[1..] {
        sync(&stores[0], s);
    }
    let sup = &stores[n];
    let mut seen: Seen = BTreeMap::new();
    let mut made = 2u64; // the creation and the required fields
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
                    record(
                        &mut seen,
                        heads,
                        stores[replica].resolve_conflict(report, &c.path, v),
                    );
                }
            }
            Step::Submit { replica } => {
                let heads = stores[replica].heads().unwrap();
                record(&mut seen, heads, stores[replica].submit(report));
            }
            Step::Supervise { approve } => {
                let heads = sup.heads().unwrap();
                let result = if approve {
                    sup.approve(report)
                } else {
                    sup.return_report(report, "Add the badge number.")
                };
                record(&mut seen, heads, result);
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
        for a in 0..=n {
            for b in 0..=n {
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
        // Lifecycle steps are replayed, never shown as a conflict.
        if *target == Target::Field("lifecycle.state".into()) {
            continue;
        }
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

    // Lifecycle: a step comes after every step its author had seen,
    // whatever the clocks say.
    let pos: BTreeMap<ChangeId, usize> = rep
        .lifecycle_history
        .iter()
        .enumerate()
        .map(|(i, st)| (st.change, i))
        .collect();
    for (x, px) in &pos {
        for (y, py) in &pos {
            if x != y && had_seen(y, x) {
                assert!(px < py, "{y} saw {x} but is replayed before it");
            }
        }
    }

    // Clocks: nobody but the far phone goes beyond the bound, in its clock
    // or in any change it signs.
    let far_device = far.map(|f| stores[f].identity().unwrap().device_id);
    let now = chrono::Utc::now().timestamp_millis() as u64;
    for (i, s) in stores.iter().enumerate() {
        if Some(i) != far {
            assert!(
                !s.hlc().beyond_bound(now),
                "replica {i} clock followed the far phone: {:?}",
                s.hlc()
            );
        }
    }
    for c in &changes {
        if Some(c.device()) != far_device {
            let b = c.body();
            assert!(
                !b.hlc.beyond_bound(b.wall_clock_ms as u64),
                "change {} signed with a clock beyond the bound",
                c.id()
            );
        }
    }
    // Flags: only the far phone's changes, and every one another device
    // named in `pred`.
    let flagged: BTreeSet<ChangeId> = rep.clock_ahead.iter().map(|f| f.change).collect();
    for f in &rep.clock_ahead {
        assert_eq!(Some(f.change.device), far_device, "honest change flagged");
        assert!(f.followed_clock_ms < f.clock_ms);
    }
    for y in &changes {
        for op in &y.body().ops {
            for p in &op.pred {
                if Some(p.device) == far_device && y.device() != p.device {
                    let x = ChangeId {
                        device: p.device,
                        seq: p.seq,
                    };
                    assert!(
                        flagged.contains(&x),
                        "{x} built on by {} but not flagged",
                        y.id()
                    );
                }
            }
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
    fn replicas_converge((n, far, steps) in scenario()) {
        run(n, far, steps);
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
    // A history with conflicts and removals, from the store; the third
    // phone's clock is 80 years ahead.
    let people: Vec<_> = (0..3)
        .map(|i| {
            (
                person(&format!("officer{i}"), Role::Officer),
                if i == 2 { EIGHTY_YEARS_MS } else { 0 },
            )
        })
        .collect();
    let (_d, s) = stores_with(&people);
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
    // Resolving the narrative builds on the far phone's value.
    s[0].resolve_conflict(r, "narrative", Value::Text("settled".into()))
        .unwrap();
    sync(&s[0], &s[1]);
    sync(&s[0], &s[2]);
    assert!(!s[0].report(r).unwrap().clock_ahead.is_empty());
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

/// A phone with its clock 80 years ahead fills in and submits a report;
/// another officer then corrects it and the supervisor approves. Nobody
/// else's clock follows the far one, every replica shows the same report,
/// the approval is applied (it saw the submission, whatever the clocks
/// say), and the far phone's changes that others built on are flagged.
#[test]
fn a_clock_80_years_ahead_cannot_outrank_what_came_after_it() {
    let (_d, s) = stores_with(&[
        (person("creator", Role::Officer), 0),
        (person("far", Role::Officer), EIGHTY_YEARS_MS),
        (person("sergeant", Role::Supervisor), 0),
    ]);
    let (creator, far, sup) = (&s[0], &s[1], &s[2]);
    let r = creator.create_report().unwrap();
    sync(creator, far);
    far.edit(r, &required_for_submission()).unwrap();
    let far_narrative = far
        .set_field(r, "narrative", Value::Text("Agents arrived.".into()))
        .unwrap();
    let submitted = far.submit(r).unwrap();
    for to in [creator, sup] {
        sync(far, to);
    }
    let corrected = creator
        .set_field(
            r,
            "narrative",
            Value::Text("Agents arrived at 14:05.".into()),
        )
        .unwrap();
    sync(creator, sup);
    let approved = sup.approve(r).unwrap();
    exchange_all_and_agree(&s, r);
    let rep = creator.report(r).unwrap();
    assert_eq!(rep.lifecycle, fieldreport_core::LifecycleState::Approved);
    assert_eq!(
        applied_steps(&rep),
        vec![(submitted, true), (approved, true)]
    );
    assert_eq!(
        rep.narrative.as_deref(),
        Some("Agents arrived at 14:05."),
        "the correction made after seeing the far value wins"
    );
    assert!(rep.conflicts.is_empty(), "{:?}", rep.conflicts);

    // No clock followed the far one: not the replicas', not their changes'.
    let now = chrono::Utc::now().timestamp_millis() as u64;
    for st in [creator, sup] {
        assert!(!st.hlc().beyond_bound(now), "{:?}", st.hlc());
    }
    let far_clock = far.hlc();
    for c in creator.report_changes(r).unwrap() {
        if c.id() == corrected || c.id() == approved {
            assert!(!c.body().hlc.beyond_bound(now));
            assert!(c.body().hlc < far_clock, "made later, clocked earlier");
        }
    }
    // The far changes others built on are flagged, with what followed them.
    let flag = |id: ChangeId| rep.clock_ahead.iter().find(|f| f.change == id);
    assert_eq!(flag(submitted).map(|f| f.followed_by), Some(approved));
    assert_eq!(flag(far_narrative).map(|f| f.followed_by), Some(corrected));
    assert!(rep
        .clock_ahead
        .iter()
        .all(|f| f.change.device == far.identity().unwrap().device_id));
    // The report's own times are not dragged into the next century.
    let year = |t: chrono::DateTime<chrono::Utc>| chrono::Datelike::year(&t);
    let this_year = year(chrono::Utc::now());
    assert!(
        year(rep.updated_at.unwrap()) <= this_year + 1,
        "{:?}",
        rep.updated_at
    );
    assert!(year(rep.created_at.unwrap()) <= this_year + 1);
    assert_eq!(
        rep.created_by_device,
        Some(creator.identity().unwrap().device_id)
    );
}

/// A phone whose clock was reset to 1970 (its battery ran flat) builds on
/// an honest submission and the supervisor's approval, and another officer
/// corrects the narrative after it. The honest changes are not flagged as
/// clocks ahead nor dragged back to 1970; the reset phone's changes are
/// flagged as clocks not set, replay keeps them after what they saw, and
/// every replica shows the same report.
#[test]
fn a_clock_reset_to_1970_drags_nothing_back_and_blames_nobody() {
    let now = chrono::Utc::now().timestamp_millis();
    let (_d, s) = stores_with(&[
        (person("creator", Role::Officer), 0),
        (person("reset", Role::Officer), 1_000 - now),
        (person("sergeant", Role::Supervisor), 0),
    ]);
    let (creator, reset, sup) = (&s[0], &s[1], &s[2]);
    let r = creator.create_report().unwrap();
    creator.edit(r, &required_for_submission()).unwrap();
    let submitted = creator.submit(r).unwrap();
    sync(creator, reset);
    sync(creator, sup);
    // The reset phone adds a witness after seeing the submission, far
    // beyond the bound behind it: its clock does not follow the honest one.
    let witness = reset
        .add_entry(
            r,
            "witnesses",
            vec![("name".into(), Value::Text("W. One".into()))],
        )
        .unwrap();
    let reset_change = reset
        .report_changes(r)
        .unwrap()
        .into_iter()
        .find(|c| c.device() == reset.identity().unwrap().device_id)
        .unwrap();
    assert!(reset_change.body().hlc.wall_ms < 1_767_225_600_000);
    let approved = sup.approve(r).unwrap();
    exchange_all_and_agree(&s, r);
    let rep = creator.report(r).unwrap();
    assert!(
        rep.clock_ahead.is_empty(),
        "honest changes blamed: {:?}",
        rep.clock_ahead
    );
    let unset: Vec<ChangeId> = rep.clock_unset.iter().map(|f| f.change).collect();
    assert_eq!(unset, vec![reset_change.id()]);
    assert_eq!(rep.lifecycle, fieldreport_core::LifecycleState::Approved);
    assert_eq!(
        applied_steps(&rep),
        vec![(submitted, true), (approved, true)]
    );
    // The witness, added after the submission, is an amendment.
    assert!(rep.witnesses.iter().any(|w| w.id == witness));
    assert!(
        rep.amendments.iter().any(|m| m.change == reset_change.id()),
        "{:?}",
        rep.amendments
    );
    // The report's times are not dragged back to 1970.
    let year = |t: chrono::DateTime<chrono::Utc>| chrono::Datelike::year(&t);
    assert!(
        year(rep.created_at.unwrap()) >= 2026,
        "{:?}",
        rep.created_at
    );
    assert!(
        year(rep.updated_at.unwrap()) >= 2026,
        "{:?}",
        rep.updated_at
    );
}
