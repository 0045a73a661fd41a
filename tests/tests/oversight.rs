//! Oversight at the station: the public record of counts (hand-computed
//! from a seeded data set, small counts suppressed, nothing personal in it)
//! and the supervisors' 30-day review lists.

use fieldreport_core::Role;
use fieldreport_core::Value;
use fieldreport_e2e::*;
use uuid::Uuid;

const NOV_20: i64 = 1_795_186_800_000; // 2026-11-20T15:00:00Z (09:00 in Chicago)
const OCT_10: i64 = 1_791_644_400_000; // 2026-10-10T15:00:00Z
/// The day the tests run on, whatever the real date: five days after the
/// November incidents (their reviews due, not overdue), weeks after the
/// October one's was due.
const NOV_25: i64 = NOV_20 + 5 * 86_400_000;

fn station() -> TestStation {
    TestStation::start_with_clock(fieldreport_station::clock::ManualClock::at(NOV_25))
}

struct Seed<'a> {
    officer: &'a Device,
    n: usize,
}

impl Seed<'_> {
    /// A submitted report with personal details that must never be public.
    fn report(&mut self, district: &str, occurred: i64) -> Uuid {
        self.n += 1;
        let n = self.n;
        let s = &self.officer.store;
        let r = s.create_report().unwrap();
        let text = |v: String| Value::Text(v);
        s.set_field(r, "occurred.start", Value::Time(occurred))
            .unwrap();
        s.set_field(
            r,
            "location.address",
            text(format!("{n}00 W Secretplace Ave")),
        )
        .unwrap();
        s.set_field(r, "location.district", text(district.into()))
            .unwrap();
        s.set_field(r, "federal_agencies", Value::List(vec!["ice".into()]))
            .unwrap();
        s.set_field(
            r,
            "narrative",
            text(format!("Narrativeword{n} happened here.")),
        )
        .unwrap();
        s.set_field(
            r,
            "supervisory_federal_officer.name",
            text(format!("Agentname{n} Quillfeather")),
        )
        .unwrap();
        s.set_field(
            r,
            "supervisory_federal_officer.badge_number",
            text(format!("BDG-77{n}")),
        )
        .unwrap();
        s.add_entry(
            r,
            "witnesses",
            vec![("name".into(), text(format!("Witnessname{n}")))],
        )
        .unwrap();
        r
    }

    fn set(&self, r: Uuid, path: &str, v: Value) {
        self.officer.store.set_field(r, path, v).unwrap();
    }

    fn add(&self, r: Uuid, coll: &str, field: &str, v: &str) {
        self.officer
            .store
            .add_entry(r, coll, vec![(field.into(), Value::Text(v.into()))])
            .unwrap();
    }

    fn submit(&self, r: Uuid) {
        self.officer.store.submit(r).unwrap();
    }
}

fn get(st: &TestStation, path: &str) -> (u16, String) {
    let resp = st.http().get(format!("{}{path}", st.url)).send().unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

#[test]
fn public_counts_match_the_hand_count_and_show_nothing_personal() {
    let st = station();
    let o9 = st.device(
        &person(
            "Officer Nine Personname",
            "55501",
            Role::Officer,
            "District 9",
        ),
        None,
    );
    let o2 = st.device(
        &person(
            "Officer Two Personname",
            "55502",
            Role::Officer,
            "District 2",
        ),
        None,
    );
    let s9 = st.device(
        &person(
            "Sgt Nine Personname",
            "55509",
            Role::Supervisor,
            "District 9",
        ),
        None,
    );
    let mut seed9 = Seed { officer: &o9, n: 0 };

    // District 9, November: seven reports.
    let nov: Vec<Uuid> = (0..7).map(|_| seed9.report("9", NOV_20)).collect();
    for (i, &r) in nov.iter().enumerate() {
        seed9.set(r, "involvement.illegal_force_alleged", Value::Bool(i < 6)); // 6
        if i < 5 {
            seed9.add(r, "force", "type", "takedown"); // 5
            seed9.set(
                r,
                "medical_aid.ems_summoned_at",
                Value::Time(NOV_20 + 600_000),
            ); // 5
        } else {
            seed9.add(r, "force", "type", "chemical_agent"); // 2: suppressed
        }
        if i < 2 {
            seed9.add(r, "injuries", "severity", "minor"); // 2: suppressed
        }
        seed9.submit(r);
    }
    // District 9, October: one report, overdue for review.
    let oct = seed9.report("9", OCT_10);
    seed9.submit(oct);
    // A draft is not yet a report.
    seed9.report("9", NOV_20);
    // District 2, November: two reports.
    let mut seed2 = Seed {
        officer: &o2,
        n: 100,
    };
    for _ in 0..2 {
        let r = seed2.report("2", NOV_20);
        seed2.add(r, "force", "type", "takedown");
        seed2.submit(r);
    }
    o9.sync();
    o2.sync();
    s9.sync();
    // The supervisor approves all seven, refers five, reviews six.
    for (i, &r) in nov.iter().enumerate() {
        s9.store.approve(r).unwrap();
        if i < 5 {
            s9.store
                .refer(
                    r,
                    NOV_20 + 86_400_000,
                    &format!("SA-2026-{i}"),
                    vec!["aggravated battery".into()],
                )
                .unwrap();
        }
        if i < 6 {
            s9.store
                .record_review(r, "Findingword reviewed.", "Conductword fine.", true)
                .unwrap();
        }
    }
    s9.sync();

    let (status, csv) = get(&st, "/public/counts.csv");
    assert_eq!(status, 200);
    let cell = |month: &str, district: &str, measure: &str| -> String {
        csv.lines()
            .find(|l| l.starts_with(&format!("{month},{district},{measure},")))
            .unwrap_or_else(|| panic!("no row {month},{district},{measure} in\n{csv}"))
            .rsplit(',')
            .next()
            .unwrap()
            .to_string()
    };
    let expect = [
        ("reports", "7"),
        ("illegal_force_allegations", "6"),
        ("force_takedown", "5"),
        ("force_chemical_agent", "suppressed"),
        ("force_physical", "0"),
        ("injuries_minor", "suppressed"),
        ("injuries_death", "0"),
        ("ems_summoned", "5"),
        ("referrals", "5"),
        ("reviews_done", "6"),
        ("reviews_on_time", "6"),
    ];
    for (measure, want) in expect {
        assert_eq!(
            cell("2026-11", "009", measure),
            want,
            "2026-11 District 9 {measure}"
        );
    }
    assert_eq!(cell("2026-10", "009", "reports"), "suppressed");
    assert_eq!(cell("2026-10", "009", "reviews_done"), "0");
    assert_eq!(cell("2026-11", "002", "reports"), "suppressed");
    assert_eq!(cell("2026-11", "002", "force_takedown"), "suppressed");
    // Only the three (month, district) cells, each with every measure.
    let rows = csv.lines().count() - 1;
    assert_eq!(
        rows,
        3 * fieldreport_station::oversight::MEASURES.len(),
        "{csv}"
    );

    // Nothing personal anywhere: no name, star or badge number, narrative,
    // address, witness, review text, referral reference, or exact time.
    let (status, html) = get(&st, "/public");
    assert_eq!(status, 200);
    assert!(html.contains("District 009") && html.contains("suppressed"));
    for doc in [&csv, &html] {
        for needle in [
            "Personname",
            "55501",
            "55502",
            "55509",
            "Agentname",
            "Quillfeather",
            "BDG-77",
            "Narrativeword",
            "Secretplace",
            "Witnessname",
            "Findingword",
            "Conductword",
            "SA-2026",
            "aggravated",
            "2026-11-20",
            "15:00",
            "T15",
        ] {
            assert!(!doc.contains(needle), "`{needle}` is in the public record");
        }
        for r in nov.iter().chain([&oct]) {
            assert!(!doc.contains(&r.to_string()), "a report id is public");
        }
    }
}

#[test]
fn supervisors_see_due_overdue_and_done_reviews() {
    let st = station();
    let o = st.device(&person("O", "1", Role::Officer, "D9"), None);
    let s = st.device(&person("S", "9", Role::Supervisor, "D9"), None);
    let other = st.device(&person("X", "8", Role::Supervisor, "D2"), None);
    let mut seed = Seed { officer: &o, n: 0 };
    let overdue = seed.report("9", OCT_10);
    let due = seed.report("9", NOV_20);
    let done = seed.report("9", NOV_20);
    let late = seed.report("9", OCT_10);
    let draft = seed.report("9", NOV_20);
    for r in [overdue, due, done, late] {
        seed.submit(r);
    }
    o.sync();
    s.sync();
    s.store.record_review(done, "ok", "ok", false).unwrap();
    s.store.record_review(late, "ok", "ok", false).unwrap();
    s.sync();

    let list = |d: &Device| {
        st.http()
            .get(format!("{}/v1/reviews", st.url))
            .bearer_auth(d.credential())
            .send()
            .unwrap()
    };
    assert_eq!(list(&o).status().as_u16(), 403);
    let items: Vec<serde_json::Value> = list(&s).json().unwrap();
    let status_of = |r: Uuid| {
        items
            .iter()
            .find(|i| i["report_id"] == r.to_string())
            .map(|i| i["status"].as_str().unwrap().to_string())
    };
    assert_eq!(status_of(overdue).as_deref(), Some("overdue"));
    assert_eq!(status_of(due).as_deref(), Some("due"));
    assert_eq!(status_of(done).as_deref(), Some("done"));
    assert_eq!(status_of(late).as_deref(), Some("done_late"));
    assert_eq!(status_of(draft), None, "drafts are not for review yet");
    assert_eq!(items[0]["status"], "overdue", "overdue first");
    let theirs: Vec<serde_json::Value> = list(&other).json().unwrap();
    assert!(theirs.is_empty(), "another unit sees none of these");
}
