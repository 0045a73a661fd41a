//! Engine conformance: the same storage calls give the same answers on the
//! embedded SQLite engine and on PostgreSQL, and both schemas hold the
//! same tables, columns, keys and indexes. The scenario asserts its
//! answers on SQLite always; with `FR_TEST_DATABASE_URL` (the PostgreSQL
//! pass of scripts/test.sh) it runs on both engines and compares them
//! line by line, so the engines cannot drift apart silently.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fieldreport_core::store::{MediaMeta, Store};
use fieldreport_core::{Person, Role, Value};
use fieldreport_e2e::{fresh_database, person};
use fieldreport_station::clock::{Clock, ManualClock};
use fieldreport_station::error::StationError;
use fieldreport_station::storage::postgres::PostgresStorage;
use fieldreport_station::storage::{AuditEntry, DashboardAccount, Enrolled};
use fieldreport_station::{SqliteStorage, StationStorage};
use sha2::Digest;
use uuid::Uuid;

const T0: i64 = 1_800_000_000_000;

/// What a refused call says, as a transcript line.
fn refusal(e: &StationError) -> String {
    match e {
        StationError::BadRequest(code, _)
        | StationError::Unprocessable(code, _)
        | StationError::Conflict(code, _) => format!("refused {code}"),
        StationError::DeviceRevoked { .. } => "refused device_revoked".into(),
        StationError::NotFound => "not found".into(),
        other => format!("refused {:?}", other.is_client_error()),
    }
}

fn answer<T>(r: Result<T, StationError>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => refusal(&e),
    }
}

/// A phone's store with its station enrollment.
struct Phone {
    store: Store,
    who: Enrolled,
    _dir: tempfile::TempDir,
}

struct Scenario<'a> {
    storage: &'a dyn StationStorage,
    clock: Arc<ManualClock>,
    rt: &'a tokio::runtime::Runtime,
    lines: Vec<String>,
}

impl Scenario<'_> {
    fn say(&mut self, what: &str, line: String) {
        self.lines.push(format!("{what}: {line}"));
    }

    fn enroll(&mut self, p: &Person) -> Phone {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = store.create_identity(p.clone()).unwrap();
        let (code, expires) = self
            .rt
            .block_on(self.storage.create_enrollment(p.clone(), 600_000))
            .unwrap();
        assert_eq!(code.len(), 20, "a code is 20 hex characters");
        assert_eq!(expires, self.clock.now_ms() + 600_000);
        let (station_record, credential) = self
            .rt
            .block_on(
                self.storage
                    .enroll(&code, record.device_id, record.public_key),
            )
            .unwrap();
        assert!(station_record.person_secret.is_some());
        store.add_known_device(&station_record).unwrap();
        let who = self
            .rt
            .block_on(self.storage.authenticate(&credential))
            .unwrap()
            .expect("the credential authenticates");
        assert_eq!(who.record.device_id, record.device_id);
        let again = self.rt.block_on(
            self.storage
                .enroll(&code, Uuid::new_v4(), record.public_key),
        );
        self.say("enroll with a used code", answer(again, |_| "ok".into()));
        Phone {
            store,
            who,
            _dir: dir,
        }
    }

    /// Pushes the phone's outbox; the answer, and the changes acknowledged.
    fn push(&mut self, what: &str, phone: &Phone) -> String {
        let changes = phone.store.outbox(1000).unwrap();
        let ids: Vec<_> = changes.iter().map(|c| c.id()).collect();
        let r = self.rt.block_on(self.storage.push(changes));
        let line = answer(r, |o| {
            phone.store.mark_acked(&ids).unwrap();
            let events: Vec<String> = o
                .events
                .iter()
                .map(|(unit, e)| format!("{unit}/{}", e.kind))
                .collect();
            format!(
                "applied {} duplicates {} events {events:?}",
                o.applied, o.duplicates
            )
        });
        self.say(what, line.clone());
        line
    }

    fn pull_all(&mut self, what: &str, who: &Enrolled) -> usize {
        let mut after = 0;
        let mut seen = 0;
        let mut pages = 0;
        loop {
            let page = self.rt.block_on(self.storage.pull(who, after, 3)).unwrap();
            seen += page.changes.len();
            pages += 1;
            assert!(page.next >= after, "the cursor never goes back");
            after = page.next;
            if !page.more {
                break;
            }
        }
        self.say(what, format!("{seen} changes in {pages} pages"));
        seen
    }
}

/// Runs the scenario on `storage`; returns its transcript.
fn scenario(storage: &dyn StationStorage, clock: Arc<ManualClock>) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = Scenario {
        storage,
        clock: clock.clone(),
        rt: &rt,
        lines: Vec::new(),
    };

    // Enrollment rules.
    let unknown = rt.block_on(storage.enroll("0123456789abcdef0123", Uuid::new_v4(), [9; 32]));
    s.say(
        "enroll with an unknown code",
        answer(unknown, |_| "ok".into()),
    );
    let officer = s.enroll(&person("Ofc. A. Alvarez", "4101", Role::Officer, "D9"));
    let partner = s.enroll(&person("Ofc. B. Brooks", "4102", Role::Officer, "D9"));
    let sergeant = s.enroll(&person("Sgt. C. Chen", "2201", Role::Supervisor, "D9"));
    let elsewhere = s.enroll(&person("Sgt. D. Diaz", "2301", Role::Supervisor, "D7"));
    let (late, _) = rt
        .block_on(storage.create_enrollment(person("Ofc. E", "4103", Role::Officer, "D9"), 1000))
        .unwrap();
    clock.advance(2000);
    let expired = rt.block_on(storage.enroll(&late, Uuid::new_v4(), officer.who.record.public_key));
    s.say(
        "enroll with an expired code",
        answer(expired, |_| "ok".into()),
    );
    let (code, _) = rt
        .block_on(storage.create_enrollment(person("Ofc. F", "4104", Role::Officer, "D9"), 60_000))
        .unwrap();
    let taken = rt.block_on(storage.enroll(
        &code,
        officer.who.record.device_id,
        officer.who.record.public_key,
    ));
    s.say("enroll a device id twice", answer(taken, |_| "ok".into()));
    let weak = rt.block_on(storage.enroll(&code, Uuid::new_v4(), [0; 32]));
    s.say("enroll a weak key", answer(weak, |_| "ok".into()));
    let unknown = rt
        .block_on(storage.authenticate("not a credential"))
        .unwrap();
    s.say("unknown credential", format!("{}", unknown.is_some()));

    // A report, pushed twice.
    let report = officer.store.create_report().unwrap();
    officer
        .store
        .set_field(
            report,
            "narrative",
            Value::Text("Agents stopped a car.".into()),
        )
        .unwrap();
    let first = s.push("push a new report", &officer);
    assert!(first.starts_with("applied 2 duplicates 0"), "{first}");
    let again = officer.store.report_changes(report).unwrap();
    let dup = rt.block_on(storage.push(again)).unwrap();
    s.say(
        "push it again",
        format!("applied {} duplicates {}", dup.applied, dup.duplicates),
    );
    assert_eq!((dup.applied, dup.duplicates), (0, 2));

    // Who sees it.
    for (what, who) in [
        ("author pulls", &officer.who),
        ("partner pulls", &partner.who),
        ("unit supervisor pulls", &sergeant.who),
        ("other unit's supervisor pulls", &elsewhere.who),
    ] {
        s.pull_all(what, who);
        let json = rt.block_on(storage.report_json(who, report));
        s.say(
            what,
            answer(json, |j| format!("report {}", j.contains("narrative"))),
        );
    }
    let visible = rt.block_on(storage.visible_reports(&sergeant.who)).unwrap();
    s.say("supervisor's reports", visible.len().to_string());
    let all = rt.block_on(storage.all_reports()).unwrap();
    s.say("all reports", all.len().to_string());

    // A resumable photo upload, then the change attaching it.
    let photo: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&photo));
    let status = rt.block_on(storage.media_status(&sha)).unwrap();
    s.say(
        "media status before",
        format!("{} {}", status.received, status.complete),
    );
    let half = rt.block_on(storage.media_append(&sha, 0, 10_000, &photo[..4000]));
    s.say(
        "first chunk",
        answer(half, |m| format!("{} {}", m.received, m.complete)),
    );
    let wrong = rt.block_on(storage.media_append(&sha, 1000, 10_000, &photo[1000..2000]));
    s.say("chunk at the wrong offset", answer(wrong, |_| "ok".into()));
    let file = officer._dir.path().join("photo.jpg");
    std::fs::write(&file, &photo).unwrap();
    officer
        .store
        .attach_media(
            report,
            &file,
            MediaMeta {
                mime_type: "image/jpeg".into(),
                file_name: None,
                captured_at_ms: None,
                latitude: None,
                longitude: None,
                caption: None,
            },
        )
        .unwrap();
    let early = s.push("push the attachment before the photo", &officer);
    assert!(early.contains("media_missing"), "{early}");
    let rest = rt.block_on(storage.media_append(&sha, 4000, 10_000, &photo[4000..]));
    s.say(
        "last chunk",
        answer(rest, |m| format!("{} {}", m.received, m.complete)),
    );
    let late = s.push("push the attachment after the photo", &officer);
    assert!(late.starts_with("applied"), "{late}");
    let bad = "ab".repeat(32);
    let mismatch = rt.block_on(storage.media_append(&bad, 0, 3, b"abc"));
    s.say(
        "a photo whose bytes do not match",
        answer(mismatch, |_| "ok".into()),
    );
    let status = rt.block_on(storage.media_status(&bad)).unwrap();
    s.say(
        "after the mismatch",
        format!("{} {}", status.received, status.complete),
    );
    for (what, who) in [("supervisor", &sergeant.who), ("partner", &partner.who)] {
        let path = rt.block_on(storage.media_path(who, &sha));
        s.say(
            &format!("{what} fetches the photo"),
            answer(path, |p| format!("{}", std::fs::read(p).unwrap() == photo)),
        );
    }
    let nonsense = rt.block_on(storage.media_status("0"));
    s.say("a hash that is not one", answer(nonsense, |_| "ok".into()));

    // Receipts, clock skew, and the evidence package's material.
    clock.advance(5000);
    rt.block_on(storage.record_clock_skew(officer.who.record.device_id, vec![report], 180_000))
        .unwrap();
    let receipts = rt
        .block_on(storage.receipts(&sergeant.who, report))
        .unwrap();
    let times: BTreeSet<i64> = receipts
        .changes
        .iter()
        .map(|r| r.received_at_ms - T0)
        .collect();
    s.say(
        "receipts",
        format!(
            "{} changes received at {times:?}, skew {:?}",
            receipts.changes.len(),
            receipts
                .clock_skew
                .iter()
                .map(|k| (k.skew_ms, k.observed_at_ms - T0))
                .collect::<Vec<_>>()
        ),
    );
    let hidden = rt.block_on(storage.receipts(&partner.who, report));
    s.say("partner's receipts", answer(hidden, |_| "ok".into()));
    let material = rt
        .block_on(storage.export_material(Some(&sergeant.who), &[report, report]))
        .unwrap();
    s.say(
        "export material",
        format!(
            "{} reports, {} changes, {} devices, {} media, {} receipts",
            material.reports.len(),
            material.reports.iter().map(|r| r.1.len()).sum::<usize>(),
            material.devices.len(),
            material.media.len(),
            material.received.len()
        ),
    );
    let refused = rt.block_on(storage.export_material(Some(&partner.who), &[report]));
    s.say("partner's export", answer(refused, |_| "ok".into()));
    let missing = rt.block_on(storage.export_material(None, &[Uuid::new_v4()]));
    s.say("export of no report", answer(missing, |_| "ok".into()));

    // The directory names only the authors of what one may see.
    // Listed by star number (device ids are random: not their order).
    let stars: BTreeMap<Uuid, String> = [&officer, &partner, &sergeant, &elsewhere]
        .iter()
        .map(|p| {
            (
                p.who.record.device_id,
                p.who.record.person.star_number.clone(),
            )
        })
        .collect();
    for (what, who) in [("supervisor", &sergeant.who), ("partner", &partner.who)] {
        let dir = rt.block_on(storage.directory(who)).unwrap();
        let named: BTreeMap<&str, bool> = dir
            .iter()
            .map(|d| (stars[&d.device_id].as_str(), !d.person.name.is_empty()))
            .collect();
        let secrets = dir.iter().filter(|d| d.person_secret.is_some()).count();
        s.say(
            &format!("{what}'s directory"),
            format!("named {named:?}, {secrets} secret"),
        );
    }
    let devices = rt.block_on(storage.devices()).unwrap();
    s.say(
        "devices",
        format!(
            "{} devices, {} secrets",
            devices.len(),
            devices.iter().filter(|d| d.person_secret.is_some()).count()
        ),
    );

    // Revocation refuses the device's new changes, whoever pushes them.
    let revoked = rt
        .block_on(storage.revoke(officer.who.record.device_id))
        .unwrap();
    let twice = rt
        .block_on(storage.revoke(officer.who.record.device_id))
        .unwrap();
    s.say("revoke, revoke again", format!("{revoked} {twice}"));
    officer
        .store
        .set_field(report, "narrative", Value::Text("After revocation.".into()))
        .unwrap();
    s.push("push after revocation", &officer);
    let after = rt
        .block_on(storage.device(officer.who.record.device_id))
        .unwrap()
        .unwrap();
    s.say("revoked device", format!("{}", after.revoked));
    let expiry = rt
        .block_on(storage.set_credential_expiry(partner.who.record.device_id, T0 + 1))
        .unwrap();
    let nobody = rt
        .block_on(storage.set_credential_expiry(Uuid::new_v4(), T0))
        .unwrap();
    s.say("credential expiry", format!("{expiry} {nobody}"));

    // Settings, accounts, audit, rejections, counts.
    let first = rt
        .block_on(storage.put_setting_once("conformance", vec![1]))
        .unwrap();
    let second = rt
        .block_on(storage.put_setting_once("conformance", vec![2]))
        .unwrap();
    let none = rt.block_on(storage.setting("absent")).unwrap();
    s.say("settings", format!("{first:?} {second:?} {none:?}"));
    let account = DashboardAccount {
        star_number: "2201".into(),
        device_id: sergeant.who.record.device_id,
        password_hash: "h".into(),
        totp_sealed: vec![1],
        store_key_sealed: vec![2],
        updated_at: 3,
    };
    let added = rt
        .block_on(storage.put_dashboard_account(account.clone(), false))
        .unwrap();
    let kept = rt
        .block_on(storage.put_dashboard_account(
            DashboardAccount {
                password_hash: "other".into(),
                ..account.clone()
            },
            false,
        ))
        .unwrap();
    let found = rt.block_on(storage.dashboard_account("2201")).unwrap();
    s.say(
        "dashboard accounts",
        format!("{added} {kept} {}", found == Some(account)),
    );
    let retired = rt
        .block_on(storage.retire_credential(sergeant.who.record.device_id))
        .unwrap();
    s.say("retire credential", format!("{retired}"));
    let forgotten = rt.block_on(storage.forget_sealed()).unwrap();
    let accounts = rt.block_on(storage.dashboard_accounts()).unwrap();
    s.say(
        "forget sealed",
        format!(
            "{} devices, {} accounts left",
            forgotten.len(),
            accounts.len()
        ),
    );
    for i in 0..3 {
        rt.block_on(storage.audit(AuditEntry {
            id: 0,
            at_ms: T0 + i,
            actor: "admin".into(),
            action: format!("GET /v1/{i}"),
            target: "/".into(),
            outcome: "200".into(),
        }))
        .unwrap();
    }
    let log = rt.block_on(storage.audit_log(0, 2)).unwrap();
    let rest = rt.block_on(storage.audit_log(log[1].id, 10)).unwrap();
    s.say(
        "audit log",
        format!(
            "{:?} then {:?}",
            log.iter().map(|e| e.action.clone()).collect::<Vec<_>>(),
            rest.iter().map(|e| e.action.clone()).collect::<Vec<_>>()
        ),
    );
    rt.block_on(storage.record_rejection(None, "bad_json", b"{"))
        .unwrap();
    let counts = rt.block_on(storage.counts()).unwrap();
    s.say("counts", format!("{counts:?}"));
    s.lines
}

fn expect(lines: &[String], line: &str) {
    assert!(
        lines.iter().any(|l| l == line),
        "missing `{line}` in:\n{}",
        lines.join("\n")
    );
}

#[test]
fn the_scenario_gives_the_expected_answers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(T0);
    let storage = SqliteStorage::open_with_clock(dir.path(), clock.clone()).unwrap();
    let lines = scenario(&storage, clock);
    for line in [
        "enroll with an unknown code: refused invalid_code",
        "enroll with a used code: refused code_used",
        "enroll with an expired code: refused code_expired",
        "enroll a device id twice: refused device_exists",
        "enroll a weak key: refused bad_key",
        "unknown credential: false",
        "push a new report: applied 2 duplicates 0 events [\"D9/new\"]",
        "push it again: applied 0 duplicates 2",
        "author pulls: 2 changes in 1 pages",
        "partner pulls: 0 changes in 1 pages",
        "partner pulls: not found",
        "unit supervisor pulls: report true",
        "other unit's supervisor pulls: not found",
        "first chunk: 4000 false",
        "chunk at the wrong offset: refused offset_mismatch",
        "push the attachment before the photo: refused media_missing",
        "last chunk: 10000 true",
        "a photo whose bytes do not match: refused hash_mismatch",
        "after the mismatch: 0 false",
        "supervisor fetches the photo: true",
        "partner fetches the photo: not found",
        "a hash that is not one: refused bad_hash",
        "partner's receipts: not found",
        "partner's export: not found",
        "export of no report: not found",
        "supervisor's directory: named {\"2201\": true, \"2301\": false, \"4101\": true, \"4102\": false}, 1 secret",
        "partner's directory: named {\"2201\": false, \"2301\": false, \"4101\": false, \"4102\": true}, 1 secret",
        "revoke, revoke again: true false",
        "push after revocation: refused device_revoked",
        "revoked device: true",
        "credential expiry: true false",
        "settings: [1] [1] None",
        "dashboard accounts: true false true",
        "retire credential: true",
        "forget sealed: 1 devices, 0 accounts left",
        "audit log: [\"GET /v1/0\", \"GET /v1/1\"] then [\"GET /v1/2\"]",
    ] {
        expect(&lines, line);
    }
}

/// Tables → columns (name, not null), primary key, unique column sets and
/// indexed column lists: what the engines must agree on.
type Schema = BTreeMap<String, TableFacts>;

#[derive(Debug, PartialEq, Eq, Default)]
struct TableFacts {
    columns: BTreeSet<(String, bool)>,
    primary_key: Vec<String>,
    unique: BTreeSet<Vec<String>>,
    indexes: BTreeSet<Vec<String>>,
}

/// Columns that exist on one engine only, on purpose.
const ONLY_SQLITE: &[(&str, &str)] = &[
    // The core's log layout, shared with the phones' stores; always set on
    // the station.
    ("changes", "acked"),
];

fn sqlite_tables(c: &rusqlite::Connection) -> Vec<String> {
    c.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn sqlite_schema(storage: &SqliteStorage) -> Schema {
    let c = storage.engine().reader();
    let tables = sqlite_tables(&c);
    let mut out = Schema::new();
    for t in tables {
        let mut facts = TableFacts::default();
        let mut pk: Vec<(i64, String)> = Vec::new();
        let mut st = c.prepare(&format!("PRAGMA table_info({t})")).unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (name, not_null, pk_pos) = row.unwrap();
            if ONLY_SQLITE.contains(&(t.as_str(), name.as_str())) {
                continue;
            }
            if pk_pos > 0 {
                pk.push((pk_pos, name.clone()));
            }
            facts.columns.insert((name, not_null || pk_pos > 0));
        }
        pk.sort();
        facts.primary_key = pk.into_iter().map(|p| p.1).collect();
        let mut st = c.prepare(&format!("PRAGMA index_list({t})")).unwrap();
        let indexes: Vec<(String, bool, String)> = st
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (name, unique, origin) in indexes {
            let cols: Vec<String> = c
                .prepare(&format!("PRAGMA index_info({name})"))
                .unwrap()
                .query_map([], |r| r.get(2))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            if origin == "pk" || cols == facts.primary_key {
                continue;
            }
            if unique {
                facts.unique.insert(cols);
            } else {
                facts.indexes.insert(cols);
            }
        }
        out.insert(t, facts);
    }
    out
}

fn postgres_schema(url: &str) -> Schema {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut out = Schema::new();
    for r in c
        .query(
            "SELECT table_name::text, column_name::text, is_nullable = 'NO' FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> 'schema_version'",
            &[],
        )
        .unwrap()
    {
        out.entry(r.get(0))
            .or_default()
            .columns
            .insert((r.get(1), r.get(2)));
    }
    // Every index, with its columns in order: primary keys, unique
    // constraints and plain indexes.
    for r in c
        .query(
            "SELECT t.relname::text, i.indisprimary, i.indisunique,
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY AS k(n, o)
                          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.n ORDER BY k.o)
             FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace ns ON ns.oid = t.relnamespace
             WHERE ns.nspname = 'public' AND t.relname <> 'schema_version'",
            &[],
        )
        .unwrap()
    {
        let facts = out.entry(r.get(0)).or_default();
        let cols: Vec<String> = r.get(3);
        if r.get(1) {
            facts.primary_key = cols;
        } else if r.get(2) {
            facts.unique.insert(cols);
        } else {
            facts.indexes.insert(cols);
        }
    }
    out
}

#[test]
fn both_engines_answer_alike_and_hold_the_same_schema() {
    let Some(server) = fieldreport_e2e::postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(T0);
    let sqlite = SqliteStorage::open_with_clock(&dir.path().join("sqlite"), clock.clone()).unwrap();
    let on_sqlite = scenario(&sqlite, clock);
    let url = fresh_database(&server);
    let clock = ManualClock::at(T0);
    let pg = PostgresStorage::open_with_clock(&url, &dir.path().join("pg"), clock.clone()).unwrap();
    let on_postgres = scenario(&pg, clock);
    let width = on_sqlite.len().max(on_postgres.len());
    for i in 0..width {
        assert_eq!(
            on_sqlite.get(i),
            on_postgres.get(i),
            "line {i} differs (SQLite, PostgreSQL)"
        );
    }
    let (a, b) = (sqlite_schema(&sqlite), postgres_schema(&url));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same tables"
    );
    for (table, facts) in &a {
        assert_eq!(
            Some(facts),
            b.get(table),
            "table {table} (SQLite, PostgreSQL)"
        );
    }
}

// Saved station databases, `tests/fixtures/station/{engine}_vN.sql`: every
// earlier schema as it shipped, and the current one holding the scenario's
// rows. Each must upgrade to exactly the schema a fresh database gets and
// keep every row. The files are never rewritten, so an edited old step
// cannot hide behind tests that rebuild old schemas from today's steps.

fn station_fixture(engine: &str, v: i64) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("fixtures/station/{engine}_v{v}.sql"))
}

fn read_fixture(engine: &str, v: i64) -> String {
    let path = station_fixture(engine, v);
    std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing {}: after adding step {v}, save it with `cargo test -p fieldreport-e2e --test conformance -- --ignored write_station_fixtures`",
            path.display()
        )
    })
}

fn sqlite_rows(c: &rusqlite::Connection) -> BTreeMap<String, i64> {
    let tables = sqlite_tables(c);
    tables
        .into_iter()
        .map(|t| {
            let n = c
                .query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))
                .unwrap();
            (t, n)
        })
        .collect()
}

fn postgres_rows(url: &str) -> BTreeMap<String, i64> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let tables: Vec<String> = c
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let n: i64 = c
                .query_one(&format!("SELECT COUNT(*) FROM public.\"{t}\""), &[])
                .unwrap()
                .get(0);
            (t, n)
        })
        .collect()
}

/// pg_dump's plain output without its psql meta-commands (`\restrict`).
fn pg_sql(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn pg_dump(url: &str) -> String {
    pg_dump_with(url, &["--inserts"])
}

/// The schema alone, without pg_dump's comments: two databases with the
/// same tables, columns, types, defaults, constraints, indexes, functions
/// and triggers give the same text.
fn pg_schema_dump(url: &str) -> String {
    pg_dump_with(url, &["--schema-only"])
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn pg_dump_with(url: &str, args: &[&str]) -> String {
    let bin = std::env::var("FR_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let out = std::process::Command::new(format!("{bin}/pg_dump"))
        .args(["--no-owner", "--no-privileges"])
        .args(args)
        .args(["--dbname", url])
        .output()
        .expect("run pg_dump (set FR_PG_BIN to its directory)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg_sql(&String::from_utf8(out.stdout).unwrap())
}

/// Not a check: a tool run by hand after adding a station migration
/// (ignored, so it never shows as a passing test). It writes only the
/// fixtures that are missing: the new current version holds the
/// scenario's rows; an older version missing here (as when the fixtures
/// began) gets the schema of its steps and the scenario's rows in the
/// columns it had. The PostgreSQL ones need `FR_TEST_DATABASE_URL` and
/// `pg_dump` (`FR_PG_BIN`, default /usr/lib/postgresql/15/bin).
#[test]
#[ignore = "writes tests/fixtures/station/; run by hand after adding a station migration"]
fn write_station_fixtures() {
    use fieldreport_station::storage::{postgres as pg, sqlite};
    std::fs::create_dir_all(station_fixture("sqlite", 0).parent().unwrap()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(T0);
    let rows = SqliteStorage::open_with_clock(&work.path().join("rows"), clock.clone()).unwrap();
    scenario(&rows, clock);
    let rows_db = work.path().join("rows").join("station.db");
    let current = sqlite::MIGRATIONS.current();
    for v in 1..=current {
        let path = station_fixture("sqlite", v);
        if path.exists() {
            continue;
        }
        let dump = if v == current {
            fieldreport_core::schema::dump_sqlite(&rows.engine().reader()).unwrap()
        } else {
            let dir = tempfile::tempdir().unwrap();
            let c = rusqlite::Connection::open(dir.path().join("station.db")).unwrap();
            for s in 1..=v {
                c.execute_batch(sqlite::MIGRATIONS.step(s).unwrap().sql)
                    .unwrap();
            }
            c.pragma_update(None, "user_version", v).unwrap();
            c.execute("ATTACH DATABASE ?1 AS rows", [rows_db.to_str().unwrap()])
                .unwrap();
            for (table, _) in sqlite_rows(&c) {
                let cols: Vec<String> = c
                    .prepare(&format!("PRAGMA main.table_info(\"{table}\")"))
                    .unwrap()
                    .query_map([], |r| r.get::<_, String>(1))
                    .unwrap()
                    .map(|r| format!("\"{}\"", r.unwrap()))
                    .collect();
                let cols = cols.join(", ");
                c.execute_batch(&format!(
                    "INSERT INTO main.\"{table}\" ({cols}) SELECT {cols} FROM rows.\"{table}\""
                ))
                .unwrap();
            }
            c.execute_batch("DETACH DATABASE rows").unwrap();
            fieldreport_core::schema::dump_sqlite(&c).unwrap()
        };
        std::fs::write(&path, dump).unwrap();
    }
    let Some(server) = fieldreport_e2e::postgres_url() else {
        return;
    };
    let rows_url = fresh_database(&server);
    let clock = ManualClock::at(T0);
    let rows = PostgresStorage::open_with_clock(&rows_url, &work.path().join("pg"), clock.clone())
        .unwrap();
    scenario(&rows, clock);
    let mut from = postgres::Client::connect(&rows_url, postgres::NoTls).unwrap();
    let current = pg::MIGRATIONS.current();
    for v in 1..=current {
        let path = station_fixture("postgres", v);
        if path.exists() {
            continue;
        }
        if v == current {
            std::fs::write(&path, pg_dump(&rows_url)).unwrap();
            continue;
        }
        let url = fresh_database(&server);
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        for s in 1..=v {
            c.batch_execute(pg::MIGRATIONS.step(s).unwrap().sql)
                .unwrap();
        }
        c.batch_execute(&format!(
            "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES ({v});"
        ))
        .unwrap();
        // The scenario's rows, in the columns this version had (JSON keys
        // of later columns are ignored by json_populate_recordset).
        for (table, _) in postgres_rows(&url) {
            if table == "schema_version" {
                continue;
            }
            let json: String = from
                .query_one(
                    &format!("SELECT coalesce(json_agg(t), '[]')::text FROM public.\"{table}\" t"),
                    &[],
                )
                .unwrap()
                .get(0);
            c.execute(
                &format!(
                    "INSERT INTO public.\"{table}\" SELECT * FROM json_populate_recordset(NULL::public.\"{table}\", $1::text::json)"
                ),
                &[&json],
            )
            .unwrap();
        }
        // Sequences where the rows left them, as a real database has them.
        for r in c
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND column_default LIKE 'nextval%'",
                &[],
            )
            .unwrap()
        {
            let (table, column): (String, String) = (r.get(0), r.get(1));
            c.batch_execute(&format!(
                "SELECT setval(pg_get_serial_sequence('public.\"{table}\"', '{column}'), max(\"{column}\")) FROM public.\"{table}\" HAVING max(\"{column}\") IS NOT NULL"
            ))
            .unwrap();
        }
        drop(c);
        std::fs::write(&path, pg_dump(&url)).unwrap();
    }
}

/// Every table's rows; the log (`changes`) compared byte for byte.
fn assert_kept(
    what: &str,
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
    log_before: &[Vec<u8>],
    log_after: &[Vec<u8>],
) {
    for (table, n) in before {
        if table == "schema_version" {
            continue;
        }
        assert_eq!(after.get(table), Some(n), "{what}: rows of {table}");
    }
    assert_eq!(
        log_before, log_after,
        "{what}: the signed log, byte for byte"
    );
}

/// The upgraded schema is exactly a fresh one: every table, column (with
/// its declared type and default), index and trigger as SQLite stores it.
fn sqlite_master(c: &rusqlite::Connection) -> Vec<(String, String, String)> {
    c.prepare(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
    )
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

fn sqlite_log(c: &rusqlite::Connection) -> Vec<Vec<u8>> {
    c.prepare("SELECT hash, body, signature FROM changes ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok([r.get::<_, Vec<u8>>(0)?, r.get(1)?, r.get(2)?].concat())
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn postgres_log(url: &str) -> Vec<Vec<u8>> {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap()
        .query(
            "SELECT hash || body || signature FROM changes ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn every_saved_sqlite_station_database_upgrades_and_keeps_its_rows() {
    use fieldreport_station::storage::sqlite;
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = SqliteStorage::open_with_clock(fresh_dir.path(), ManualClock::at(T0)).unwrap();
    let want = sqlite_master(&fresh.engine().reader());
    for v in 1..=sqlite::MIGRATIONS.current() {
        let sql = read_fixture("sqlite", v);
        let dir = tempfile::tempdir().unwrap();
        let (before, log) = {
            let c = rusqlite::Connection::open(dir.path().join("station.db")).unwrap();
            c.execute_batch(&sql).unwrap();
            (sqlite_rows(&c), sqlite_log(&c))
        };
        assert!(
            log.len() >= 2,
            "sqlite v{v}: the fixture holds the scenario's log"
        );
        let storage = SqliteStorage::open_with_clock(dir.path(), ManualClock::at(T0))
            .unwrap_or_else(|e| panic!("sqlite v{v} does not open: {e}"));
        let c = storage.engine().reader();
        assert_kept(
            &format!("sqlite v{v}"),
            &before,
            &sqlite_rows(&c),
            &log,
            &sqlite_log(&c),
        );
        assert_eq!(
            sqlite_master(&c),
            want,
            "sqlite v{v}: the schema of a fresh database"
        );
    }
}

#[test]
fn every_saved_postgres_station_database_upgrades_and_keeps_its_rows() {
    use fieldreport_station::storage::postgres as pg;
    let Some(server) = fieldreport_e2e::postgres_url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fresh = fresh_database(&server);
    PostgresStorage::open_with_clock(&fresh, &dir.path().join("fresh"), ManualClock::at(T0))
        .unwrap();
    let want = pg_schema_dump(&fresh);
    for v in 1..=pg::MIGRATIONS.current() {
        let sql = read_fixture("postgres", v);
        let url = fresh_database(&server);
        postgres::Client::connect(&url, postgres::NoTls)
            .unwrap()
            .batch_execute(&pg_sql(&sql))
            .unwrap();
        let (before, log) = (postgres_rows(&url), postgres_log(&url));
        assert!(
            log.len() >= 2,
            "postgres v{v}: the fixture holds the scenario's log"
        );
        PostgresStorage::open_with_clock(
            &url,
            &dir.path().join(format!("v{v}")),
            ManualClock::at(T0),
        )
        .unwrap_or_else(|e| panic!("postgres v{v} does not open: {e}"));
        assert_kept(
            &format!("postgres v{v}"),
            &before,
            &postgres_rows(&url),
            &log,
            &postgres_log(&url),
        );
        assert_eq!(
            pg_schema_dump(&url),
            want,
            "postgres v{v}: the schema of a fresh database (pg_dump --schema-only)"
        );
    }
}
