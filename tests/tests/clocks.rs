//! Device clocks days ahead, days behind, or jumping backwards mid-session:
//! the hybrid logical clock keeps causal order, nothing is refused, the
//! station records its own receipt time and flags the skewed clocks on the
//! reports they touched.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use fieldreport_core::store::{StoreOptions, WallClock};
use fieldreport_core::sync::wire::ReceiptsResponse;
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

const DAY: i64 = 24 * 3600 * 1000;

/// The system clock plus an offset that a test can change.
struct Skewed(AtomicI64);
impl WallClock for Skewed {
    fn now_ms(&self) -> i64 {
        now_ms() + self.0.load(Ordering::SeqCst)
    }
}

fn skewed(offset: i64) -> (Arc<Skewed>, StoreOptions) {
    let c = Arc::new(Skewed(AtomicI64::new(offset)));
    (
        c.clone(),
        StoreOptions {
            clock: c,
            ..Default::default()
        },
    )
}

fn receipts(st: &TestStation, cred: &str, r: uuid::Uuid) -> ReceiptsResponse {
    st.http()
        .get(format!("{}/v1/reports/{r}/receipts", st.url))
        .bearer_auth(cred)
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn skewed_clocks_keep_causal_order_and_are_flagged_not_refused() {
    let st = TestStation::start();
    let (_, ahead) = skewed(2 * DAY);
    let (_, behind) = skewed(-3 * DAY);
    let (jumpy_clock, jumpy) = skewed(0);
    let a = st.device_with(&person("A", "101", Role::Officer, "D9"), None, ahead);
    let b = st.device_with(&person("B", "102", Role::Officer, "D9"), None, behind);
    let c = st.device_with(&person("C", "103", Role::Officer, "D9"), None, jumpy);
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let badge = "supervisory_federal_officer.badge_number";

    // A (2 days ahead) writes; B (3 days behind) sees it, then overwrites.
    let r = a.store.create_report().unwrap();
    a.store
        .set_field(r, badge, Value::Text("4471".into()))
        .unwrap();
    a.hand_over_to(&b);
    b.store
        .set_field(r, badge, Value::Text("4471-B".into()))
        .unwrap();
    // B's edit came after A's: its clock is later despite B's wall clock.
    let history = b.store.field_history(r, badge).unwrap();
    assert_eq!(history.len(), 2);
    let by_value = |v: &str| {
        history
            .iter()
            .find(|h| h.value == Some(Value::Text(v.into())))
            .unwrap()
    };
    let (first, second) = (by_value("4471"), by_value("4471-B"));
    assert!(
        (second.clock_ms, second.clock_counter) > (first.clock_ms, first.clock_counter),
        "causal order kept: {history:?}"
    );
    assert!(
        second.wall_clock_ms < first.wall_clock_ms,
        "B's wall clock is behind"
    );
    assert!(b.store.report(r).unwrap().conflicts.is_empty());

    // C's clock jumps back a day between two edits of its own report.
    let rc = c.store.create_report().unwrap();
    c.store
        .set_field(rc, "narrative", Value::Text("before".into()))
        .unwrap();
    jumpy_clock.0.store(-DAY, Ordering::SeqCst);
    c.store
        .set_field(rc, "narrative", Value::Text("after".into()))
        .unwrap();
    let h = c.store.field_history(rc, "narrative").unwrap();
    assert!((h[1].clock_ms, h[1].clock_counter) > (h[0].clock_ms, h[0].clock_counter));
    assert_eq!(
        c.store.report(rc).unwrap().narrative.as_deref(),
        Some("after"),
        "the later edit wins although the clock went back"
    );

    // Nothing is refused for it.
    a.sync();
    b.sync();
    c.sync();
    sup.sync();
    assert_eq!(
        sup.store.report_json(r).unwrap(),
        b.store.report_json(r).unwrap()
    );
    assert_eq!(
        sup.store.report(rc).unwrap().narrative.as_deref(),
        Some("after")
    );

    // The station's receipt times are its own; the skews are flagged.
    let now = now_ms();
    let rec = receipts(&st, &sup.credential(), r);
    assert_eq!(
        rec.changes.len() as u64,
        a.store.report_changes(r).unwrap().len() as u64 + 1
    );
    for x in &rec.changes {
        assert!(
            (now - x.received_at_ms).abs() < 60_000,
            "receipt time is the station's"
        );
    }
    let skew_of = |rec: &ReceiptsResponse, d: uuid::Uuid| {
        rec.clock_skew
            .iter()
            .find(|s| s.device == d)
            .map(|s| s.skew_ms)
    };
    let dev = |d: &Device| d.store.identity().unwrap().device_id;
    let sa = skew_of(&rec, dev(&a)).expect("A flagged");
    let sb = skew_of(&rec, dev(&b)).expect("B flagged");
    assert!((sa - 2 * DAY).abs() < 60_000, "A is 2 days ahead: {sa}");
    assert!((sb + 3 * DAY).abs() < 60_000, "B is 3 days behind: {sb}");
    let rec_c = receipts(&st, &sup.credential(), rc);
    let sc = skew_of(&rec_c, dev(&c)).expect("C flagged");
    assert!(
        (sc + DAY).abs() < 60_000,
        "C was a day behind when it pushed: {sc}"
    );
    // A correct clock is not flagged.
    let d = st.device(&person("D", "104", Role::Officer, "D9"), None);
    let rs = d.store.create_report().unwrap();
    d.sync();
    assert!(receipts(&st, &sup.credential(), rs).clock_skew.is_empty());
    // Receipts follow visibility: another unit's supervisor sees nothing.
    let other = st.device(&person("X", "901", Role::Supervisor, "D2"), None);
    let resp = st
        .http()
        .get(format!("{}/v1/reports/{r}/receipts", st.url))
        .bearer_auth(other.credential())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// The year-ahead pass of scripts/test.sh really runs shifted: the
/// stations' clock is the machine's plus `FIELDREPORT_CLOCK_OFFSET_MS`
/// (zero when unset). Compares two clocks, judges no date.
#[test]
fn the_station_clock_runs_at_the_offset_the_suite_sets() {
    let offset: i64 = std::env::var(fieldreport_station::clock::OFFSET_ENV)
        .map(|v| v.parse().expect("a whole number of milliseconds"))
        .unwrap_or(0);
    let st = TestStation::start();
    use fieldreport_station::clock::Clock;
    let machine = fieldreport_station::clock::SystemClock::default().now_ms();
    let drift = st.now_ms() - machine - offset;
    assert!(drift.abs() < 60_000, "station clock off by {drift} ms");
}

/// About 80 years, in ms.
const EIGHTY_YEARS: i64 = 80 * 36525 * 24 * 36_000;

/// A phone whose clock is 80 years ahead fills in and submits a report
/// (its first push with a header claiming the station's own time); another
/// officer then corrects it and the supervisor approves. Nothing is
/// refused; every replica and the station show the same report with the
/// approval applied; no other clock moves beyond the bound; the report
/// flags the far changes others built on, and the station flags the
/// device from its signed changes, whatever its header said.
#[test]
fn a_clock_80_years_ahead_drags_no_one_and_cannot_outrank_later_steps() {
    use fieldreport_core::crdt::hlc::MAX_CLOCK_AHEAD_MS;
    use fieldreport_core::model::LifecycleState;
    use fieldreport_core::sync::wire::{PushRequest, WireChange, DEVICE_TIME_HEADER};

    let st = TestStation::start();
    let (_, ahead) = skewed(EIGHTY_YEARS);
    let f = st.device_with(&person("F", "105", Role::Officer, "D9"), None, ahead);
    let b = st.device(&person("B", "106", Role::Officer, "D9"), None);
    let s = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let dev = |d: &Device| d.store.identity().unwrap().device_id;

    let r = f.store.create_report().unwrap();
    f.store
        .set_field(r, "occurred.start", Value::Time(1_795_000_000_000))
        .unwrap();
    f.store
        .set_field(r, "location.address", Value::Text("W 26th St".into()))
        .unwrap();
    f.store
        .set_field(r, "federal_agencies", Value::List(vec!["ice".into()]))
        .unwrap();
    let far_narrative = f
        .store
        .set_field(r, "narrative", Value::Text("Agents arrived.".into()))
        .unwrap();
    let submitted = f.store.submit(r).unwrap();

    // The first push lies about the device's clock; it is accepted, and the
    // signed changes give the clock away.
    let outbox = f.store.outbox(100).unwrap();
    let resp = st
        .http()
        .post(format!("{}/v1/changes", st.url))
        .bearer_auth(f.credential())
        .header(DEVICE_TIME_HEADER, now_ms().to_string())
        .json(&PushRequest {
            changes: outbox.iter().map(WireChange::from_change).collect(),
        })
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "never refused for its clock");
    let rec = receipts(&st, &s.credential(), r);
    let flagged = rec
        .clock_skew
        .iter()
        .find(|x| x.device == dev(&f))
        .expect("the far device is flagged despite its header");
    assert!(flagged.skew_ms > EIGHTY_YEARS - DAY, "{flagged:?}");
    f.sync();

    // Officers see their own reports: F hands it to B at the scene.
    f.hand_over_to(&b);
    let corrected = b
        .store
        .set_field(
            r,
            "narrative",
            Value::Text("Agents arrived at 14:05.".into()),
        )
        .unwrap();
    b.sync();
    s.sync();
    let approved = s.store.approve(r).unwrap();
    for d in [&s, &b, &f, &s, &b] {
        d.sync();
    }

    // Everyone, the station too, shows the same report.
    let json = f.store.report_json(r).unwrap();
    assert_eq!(b.store.report_json(r).unwrap(), json);
    assert_eq!(s.store.report_json(r).unwrap(), json);
    let at_station: fieldreport_core::Report = st
        .http()
        .get(format!("{}/v1/reports/{r}", st.url))
        .bearer_auth(s.credential())
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(at_station.to_canonical_json(), json);

    // The approval, which saw the far submission, is applied.
    let rep = b.store.report(r).unwrap();
    assert_eq!(rep.lifecycle, LifecycleState::Approved);
    let steps: Vec<_> = rep
        .lifecycle_history
        .iter()
        .map(|h| (h.change, h.to, h.applied))
        .collect();
    assert_eq!(
        steps,
        vec![
            (submitted, LifecycleState::Submitted, true),
            (approved, LifecycleState::Approved, true)
        ]
    );
    assert_eq!(rep.narrative.as_deref(), Some("Agents arrived at 14:05."));
    assert!(rep.conflicts.is_empty(), "{:?}", rep.conflicts);

    // No other clock followed the far one.
    let now = now_ms() as u64;
    for d in [&b, &s] {
        let h = d.store.hlc();
        assert!(h.wall_ms <= now + MAX_CLOCK_AHEAD_MS, "{h:?}");
        assert!(!h.beyond_bound(now));
    }
    for c in b.store.report_changes(r).unwrap() {
        if c.device() != dev(&f) {
            assert!(!c.body().hlc.beyond_bound(now), "{}", c.id());
        }
    }

    // The report flags the far changes others built on.
    let flag = |id| rep.clock_ahead.iter().find(|x| x.change == id);
    assert_eq!(flag(submitted).unwrap().followed_by, approved);
    assert_eq!(flag(far_narrative).unwrap().followed_by, corrected);
    assert!(rep.clock_ahead.iter().all(|x| x.change.device == dev(&f)));
    // And the station flags the far device only.
    let rec = receipts(&st, &s.credential(), r);
    let devices: Vec<_> = rec.clock_skew.iter().map(|x| x.device).collect();
    assert_eq!(devices, vec![dev(&f)], "{:?}", rec.clock_skew);
}
