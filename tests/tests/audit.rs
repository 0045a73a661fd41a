//! The station's audit log: every read of a report or its media, through
//! every endpoint, leaves an entry naming the reader's device; refusals,
//! enrollments, lifecycle steps and dashboard sign-ins are recorded; the log
//! cannot be changed and holds no personal data.

use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;
use fieldreport_station::accounts::create_account;
use fieldreport_station::storage::AuditEntry;
use reqwest::redirect::Policy;

fn log(st: &TestStation) -> Vec<AuditEntry> {
    st.rt.block_on(st.storage.audit_log(0, 100_000)).unwrap()
}

#[test]
fn every_read_every_refusal_and_every_step_is_audited() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Auditname", "71001", Role::Officer, "D9"),
        None,
    );
    let sup = st.device(
        &person("Sgt Auditname", "71009", Role::Supervisor, "D9"),
        None,
    );
    let officer_id = officer.store.identity().unwrap().device_id.to_string();
    let sup_id = sup.store.identity().unwrap().device_id.to_string();

    let r = officer.store.create_report().unwrap();
    for (p, v) in [
        ("occurred.start", Value::Time(1_795_705_200_000)),
        ("location.address", Value::Text("Auditplace St".into())),
        ("federal_agencies", Value::List(vec!["ice".into()])),
    ] {
        officer.store.set_field(r, p, v).unwrap();
    }
    let sha = officer.attach_photo(r, "p.jpg", vec![7u8; 50_000]);
    officer.store.submit(r).unwrap();
    officer.sync();
    sup.sync();
    sup.store.approve(r).unwrap();
    sup.sync();

    // Every endpoint that reads the report or its media, as the supervisor.
    let http = st.http_builder().redirect(Policy::none()).build().unwrap();
    let reads = [
        format!("/v1/reports/{r}"),
        format!("/v1/reports/{r}/changes"),
        format!("/v1/reports/{r}/receipts"),
        format!("/v1/reports/{r}/export"),
        format!("/v1/media/{sha}"),
        "/v1/changes?after=0".to_string(),
        "/v1/reviews".to_string(),
    ];
    for path in &reads {
        let resp = http
            .get(format!("{}{path}", st.url))
            .bearer_auth(sup.credential())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    // And through the dashboard.
    let account = st
        .rt
        .block_on(create_account(
            st.storage.as_ref(),
            &st.station_key(),
            "Sgt Auditname",
            "71009",
            "D9",
            "a long dashboard password",
        ))
        .unwrap();
    let code = fieldreport_station::accounts::totp(&account.totp_secret)
        .unwrap()
        .generate((st.now_ms() / 1000) as u64);
    let resp = http
        .post(format!("{}/dashboard/login", st.url))
        .form(&[
            ("star", "71009"),
            ("password", "a long dashboard password"),
            ("code", code.as_str()),
        ])
        .send()
        .unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let wrong = http
        .post(format!("{}/dashboard/login", st.url))
        .form(&[
            ("star", "71009"),
            ("password", "not it at all"),
            ("code", code.as_str()),
        ])
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let dash_reads = [
        format!("/dashboard/reports/{r}"),
        format!("/dashboard/media/{sha}"),
        format!("/dashboard/reports/{r}/export"),
        "/dashboard/inbox".to_string(),
    ];
    for path in &dash_reads {
        let resp = http
            .get(format!("{}{path}", st.url))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    // Refusals: an officer asking for the export, no credential, a bad one.
    let refused = http
        .get(format!("{}/v1/reports/{r}/export", st.url))
        .bearer_auth(officer.credential())
        .send()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(
        http.get(format!("{}/v1/reports/{r}", st.url))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        http.get(format!("{}/v1/reports/{r}", st.url))
            .bearer_auth("forged")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );

    let entries = log(&st);
    let has = |actor: &str, action: &str, target: &str, outcome: &str| {
        entries.iter().any(|e| {
            e.actor == actor && e.action == action && e.target == target && e.outcome == outcome
        })
    };
    let route = |path: &str| -> String {
        path.split('?')
            .next()
            .unwrap()
            .replace(&r.to_string(), "{id}")
            .replace(&sha, "{sha}")
    };
    for path in &reads {
        let target = path.split('?').next().unwrap();
        assert!(
            has(&sup_id, &format!("GET {}", route(path)), target, "200"),
            "no audit entry for GET {path}: {entries:#?}"
        );
    }
    let account = account.device_id.to_string();
    for path in &dash_reads {
        assert!(
            has(&account, &format!("GET {}", route(path)), path, "200"),
            "no audit entry for GET {path}"
        );
    }
    assert!(has(
        &account,
        "POST /dashboard/login",
        "/dashboard/login",
        "signed in"
    ));
    assert!(has(
        &account,
        "POST /dashboard/login",
        "/dashboard/login",
        "refused: wrong password"
    ));
    assert!(has(
        &officer_id,
        "GET /v1/reports/{id}/export",
        &format!("/v1/reports/{r}/export"),
        "403"
    ));
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.actor == "anonymous" && e.outcome.starts_with("401 "))
            .count(),
        2
    );
    // Enrollments name the new device; lifecycle steps their author.
    assert!(has(&officer_id, "POST /v1/enroll", "/v1/enroll", "200"));
    assert!(has(
        &officer_id,
        "lifecycle submitted",
        &format!("/v1/reports/{r}"),
        "ok"
    ));
    assert!(has(
        &sup_id,
        "lifecycle approved",
        &format!("/v1/reports/{r}"),
        "ok"
    ));
    // Ids only: no names, star numbers or report text.
    let text = format!("{entries:?}");
    for needle in ["Auditname", "71001", "71009", "Auditplace"] {
        assert!(!holds_word(&text, needle), "`{needle}` is in the audit log");
    }
    // The CLI prints it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_station-cli"))
        .arg("audit")
        .args(st.cli_args())
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(printed.lines().count(), entries.len().min(1000));
    assert!(printed.contains(&format!(
        "{sup_id}\tGET /v1/reports/{{id}}\t/v1/reports/{r}\t200"
    )));
}

/// Requests to paths no route serves, and the console commands that read
/// or change records, are audited too.
#[test]
fn unknown_paths_and_console_commands_are_audited() {
    let st = TestStation::start();
    let officer = st.device(
        &person("Officer Cliname", "71101", Role::Officer, "D9"),
        None,
    );
    let r = officer.store.create_report().unwrap();
    officer.sync();

    let http = st.http();
    for (path, bearer) in [
        ("/no/such/path", None),
        ("/v1/nothing-here", Some(officer.credential())),
        ("/dashboard/no-such-page", None),
    ] {
        let mut req = http.get(format!("{}{path}", st.url));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        assert_eq!(req.send().unwrap().status().as_u16(), 404, "{path}");
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_station-cli"))
            .args(args)
            .args(st.cli_args())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cli(&[
        "enroll",
        "--name",
        "Officer Cliname Two",
        "--star",
        "71102",
        "--role",
        "officer",
        "--unit",
        "D9",
    ]);
    let out = tempfile::tempdir().unwrap();
    let bag = out.path().join("bag");
    cli(&[
        "export",
        "--report",
        &r.to_string(),
        "--out",
        bag.to_str().unwrap(),
    ]);
    cli(&["audit"]);

    let entries = log(&st);
    let has = |actor: &str, action: &str, target: &str, outcome: &str| {
        entries.iter().any(|e| {
            e.actor == actor
                && e.action == action
                && e.target.starts_with(target)
                && e.outcome == outcome
        })
    };
    assert!(
        has("anonymous", "GET unrouted", "/no… sha256:", "404"),
        "{entries:#?}"
    );
    assert!(
        has("anonymous", "GET unrouted", "/dashboard… sha256:", "404"),
        "{entries:#?}"
    );
    // The unknown path is unrouted, so nobody authenticated the request.
    assert!(
        has("anonymous", "GET unrouted", "/v1… sha256:", "404"),
        "{entries:#?}"
    );
    assert!(
        has("admin", "enrollment code made", "officer code", "ok"),
        "{entries:#?}"
    );
    assert!(
        has(
            "admin",
            "evidence package exported",
            &format!("reports {r}"),
            "ok"
        ),
        "{entries:#?}"
    );
    assert!(
        has("admin", "audit log read", "after 0", "ok"),
        "{entries:#?}"
    );
    assert!(entries
        .iter()
        .all(|e| !format!("{e:?}").contains("Cliname") && !holds_word(&format!("{e:?}"), "71102")));
    // Of an unrouted path, only the first segment and a hash are kept.
    assert!(entries
        .iter()
        .all(|e| !e.target.contains("such") && !e.target.contains("nothing-here")));
}

#[test]
fn the_audit_log_cannot_be_changed() {
    let st = TestStation::start();
    let d = st.device(&person("O", "1", Role::Officer, "D9"), None);
    d.sync();
    let before = log(&st);
    assert!(!before.is_empty());
    let attempts = [
        "UPDATE audit_log SET outcome = '200'",
        "DELETE FROM audit_log",
    ];
    match &st.database {
        Some(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            for sql in attempts.iter().chain(["TRUNCATE audit_log"].iter()) {
                let e = c.batch_execute(sql).unwrap_err();
                assert!(
                    e.to_string().contains("append-only")
                        || format!("{e:?}").contains("append-only"),
                    "{sql}: {e:?}"
                );
            }
        }
        None => {
            let c = rusqlite::Connection::open(st.dir.path().join("station/station.db")).unwrap();
            for sql in attempts {
                let e = c.execute_batch(sql).unwrap_err();
                assert!(e.to_string().contains("append-only"), "{sql}: {e}");
            }
        }
    }
    assert_eq!(log(&st), before, "nothing changed");
}
