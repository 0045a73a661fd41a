//! Merge only (no signatures): FieldReport's materialisation of a set of
//! edits from several devices, against the `automerge` crate applying the
//! same edits, made as map puts by the same number of actors, into one
//! document and reading every key's values (conflicts included).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::{transaction::Transactable, ActorId, AutoCommit, ReadDoc, ROOT};
use fieldreport_core::crdt::{Action, ChangeBody, Hlc, OpId, Operation, ReportDoc, Target};
use fieldreport_core::evidence::DeviceIdentity;
use fieldreport_core::{Change, Person, Role, Value};
use uuid::Uuid;

use crate::report::Row;

const FIELDS: &[&str] = &[
    "location.address",
    "location.district",
    "location.beat",
    "involvement.event_number",
    "federal_agency_other",
    "supervisory_federal_officer.name",
    "supervisory_federal_officer.badge_number",
    "body_camera.preservation_request_id",
];

/// Edits of actor `a`, in order: (field, value).
fn edits(a: usize, n: usize) -> impl Iterator<Item = (&'static str, String)> {
    (0..n).map(move |i| (FIELDS[(i * 7 + a) % FIELDS.len()], format!("a{a}-{i}")))
}

fn ours(actors: usize, per: usize) -> Vec<Change> {
    let report = Uuid::from_u128(0xfe11d);
    let mut out = Vec::with_capacity(actors * per);
    for a in 0..actors {
        let id = DeviceIdentity::from_secret(
            Uuid::from_u128(a as u128 + 1),
            [a as u8 + 1; 32],
            Person {
                name: format!("Officer {a}"),
                star_number: a.to_string(),
                role: Role::Officer,
                unit: "D9".into(),
            },
        );
        let mut prev = None;
        let mut last: HashMap<&str, OpId> = HashMap::new();
        for (i, (field, value)) in edits(a, per).enumerate() {
            let seq = i as u64 + 1;
            let pred = last.get(field).copied().into_iter().collect();
            let c = Change::sign(
                ChangeBody {
                    format: 1,
                    report,
                    device: id.device_id(),
                    seq,
                    hlc: Hlc {
                        wall_ms: 1_764_000_000_000 + i as u64,
                        counter: 0,
                    },
                    wall_clock_ms: 1_764_000_000_000 + i as i64,
                    prev,
                    ops: vec![Operation {
                        target: Target::Field(field.into()),
                        action: Action::Set(Value::Text(value)),
                        pred,
                    }],
                },
                &id.signing_key,
            )
            .expect("valid change");
            prev = Some(*c.hash());
            last.insert(
                field,
                OpId {
                    device: id.device_id(),
                    seq,
                    index: 0,
                },
            );
            out.push(c);
        }
    }
    out
}

/// Each actor's edits as automerge changes, and as a saved document.
fn automerge_actors(actors: usize, per: usize) -> (Vec<Vec<automerge::Change>>, Vec<Vec<u8>>) {
    (0..actors)
        .map(|a| {
            let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![a as u8 + 1; 16]));
            for (field, value) in edits(a, per) {
                doc.put(ROOT, field, value).expect("put");
                doc.commit();
            }
            (doc.get_changes(&[]), doc.save())
        })
        .unzip()
}

fn read_all(doc: &AutoCommit) -> anyhow::Result<usize> {
    let mut values = 0;
    for f in FIELDS {
        values += doc.get_all(ROOT, *f)?.len();
    }
    Ok(values)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Row>> {
    let (actors, per, rounds) = if quick { (4, 500, 3) } else { (10, 10_000, 5) };
    let n = actors * per;
    let changes: Vec<Arc<Change>> = ours(actors, per).into_iter().map(Arc::new).collect();
    let (am, saved) = automerge_actors(actors, per);

    let mut ours_t = Vec::new();
    let mut am_t = Vec::new();
    let mut load_t = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut doc = ReportDoc::new();
        for c in &changes {
            doc.insert(c.clone());
        }
        let state = doc.materialise();
        let conflicts = state.conflict_count();
        ours_t.push(t.elapsed());
        std::hint::black_box(conflicts);

        let batches = am.clone();
        let t = Instant::now();
        let mut doc = AutoCommit::new();
        for a in batches {
            doc.apply_changes(a)?;
        }
        std::hint::black_box(read_all(&doc)?);
        am_t.push(t.elapsed());

        // Automerge's other way in: load each actor's saved document, merge.
        let t = Instant::now();
        let mut doc = AutoCommit::load(&saved[0])?;
        for s in &saved[1..] {
            let mut other = AutoCommit::load(s)?;
            doc.merge(&mut other)?;
        }
        std::hint::black_box(read_all(&doc)?);
        load_t.push(t.elapsed());
    }
    // The baseline is automerge's faster way in this run.
    let (apply_m, load_m) = (median(am_t), median(load_t));
    let (b, how) = if load_m < apply_m {
        (load_m, "loading each actor's saved document and merging")
    } else {
        (apply_m, "applying the same changes")
    };
    let o = median(ours_t);
    Ok(vec![Row::ratio(
        format!("merge only, no signatures: {n} edits from {actors} devices, median of {rounds}"),
        format!(
            "{:.3} s ({:.2} M edits/s)",
            o.as_secs_f64(),
            n as f64 / o.as_secs_f64() / 1e6
        ),
        format!(
            "{:.3} s automerge {how} ({:.2} M puts/s; the other way took {:.3} s)",
            b.as_secs_f64(),
            n as f64 / b.as_secs_f64() / 1e6,
            apply_m.max(load_m).as_secs_f64()
        ),
        o.as_secs_f64() / b.as_secs_f64(),
        0.99,
    )])
}
