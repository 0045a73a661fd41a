//! Station security, end to end on both engines: a revoked device and an
//! expired credential are refused (and nothing the phone holds is lost),
//! a wrong second factor, a replayed code, five failures (lockout) and an
//! idle session are refused, and each refusal is in the audit log; a
//! supervisor whose signing device is revoked or whose credential expired
//! is refused at sign-in and on open dashboard sessions, which end. A
//! station presenting a key other than the pinned one is refused by the
//! phone before anything is sent, and the refused handshake is audited.

use std::sync::Arc;

use fieldreport_core::store::Store;
use fieldreport_core::sync::SyncClient;
use fieldreport_core::{Error, Role, Value};
use fieldreport_e2e::*;
use fieldreport_station::accounts::{create_account, totp};
use fieldreport_station::storage::AuditEntry;
use fieldreport_station::tls::StationTls;
use reqwest::blocking::Client;
use reqwest::redirect::Policy;

fn log(st: &TestStation) -> Vec<AuditEntry> {
    st.rt.block_on(st.storage.audit_log(0, 100_000)).unwrap()
}

fn has(st: &TestStation, actor: &str, action: &str, outcome: &str) -> bool {
    log(st)
        .iter()
        .any(|e| e.actor == actor && e.action == action && e.outcome == outcome)
}

fn try_sync(d: &Device) -> Result<fieldreport_core::sync::SyncReport, Error> {
    d.client.sync(
        &d.store,
        &fieldreport_core::sync::NoProgress,
        &Default::default(),
    )
}

#[test]
fn revoked_device_and_expired_credential_are_refused_and_audited() {
    let st = TestStation::start();
    let lost = st.device(&person("Officer Lost", "72001", Role::Officer, "D9"), None);
    let old = st.device(&person("Officer Old", "72002", Role::Officer, "D9"), None);
    let lost_id = lost.store.identity().unwrap().device_id;
    let old_id = old.store.identity().unwrap().device_id;
    lost.sync();
    old.sync();

    // A lost phone is revoked: its pushes and pulls are refused.
    assert!(st.rt.block_on(st.storage.revoke(lost_id)).unwrap());
    let r = lost.store.create_report().unwrap();
    assert!(matches!(try_sync(&lost), Err(Error::Unauthorized)));
    assert_eq!(lost.store.outbox_len().unwrap(), 1, "nothing marked sent");
    let http = st.http();
    for path in ["/v1/changes?after=0", "/v1/devices"] {
        let resp = http
            .get(format!("{}{path}", st.url))
            .bearer_auth(lost.credential())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{path}");
    }
    assert!(has(
        &st,
        &lost_id.to_string(),
        "GET /v1/changes",
        "401 device revoked"
    ));
    assert!(has(
        &st,
        &lost_id.to_string(),
        "GET /v1/devices",
        "401 device revoked"
    ));
    // The station holds none of what the revoked phone wrote.
    let sup = st.device(&person("Sgt Sec", "72009", Role::Supervisor, "D9"), None);
    sup.sync();
    assert!(sup.store.report(r).is_err());

    // An expired credential: refused until an admin extends it, and then
    // the change made meanwhile goes through (nothing was lost).
    let now = st.now_ms();
    assert!(st
        .rt
        .block_on(st.storage.set_credential_expiry(old_id, now - 1))
        .unwrap());
    let r2 = old.store.create_report().unwrap();
    old.store
        .set_field(r2, "narrative", Value::Text("kept while expired".into()))
        .unwrap();
    assert!(matches!(try_sync(&old), Err(Error::Unauthorized)));
    assert!(has(
        &st,
        &old_id.to_string(),
        "GET /v1/devices",
        "401 credential expired"
    ));
    assert!(st
        .rt
        .block_on(st.storage.set_credential_expiry(old_id, now + 86_400_000))
        .unwrap());
    let report = try_sync(&old).unwrap();
    assert_eq!(report.pushed, 2);
    assert_eq!(old.store.outbox_len().unwrap(), 0);
    // An unknown credential is refused and noted too.
    let resp = http
        .get(format!("{}/v1/devices", st.url))
        .bearer_auth("not-a-credential")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(has(
        &st,
        "anonymous",
        "GET /v1/devices",
        "401 unknown credential"
    ));
}

fn client(st: &TestStation) -> Client {
    st.http_builder().redirect(Policy::none()).build().unwrap()
}

fn sign_in(st: &TestStation, star: &str, password: &str, code: &str) -> (u16, Option<String>) {
    let resp = client(st)
        .post(format!("{}/dashboard/login", st.url))
        .form(&[("star", star), ("password", password), ("code", code)])
        .send()
        .unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string());
    (resp.status().as_u16(), cookie)
}

const PASSWORD: &str = "a long dashboard password";

#[test]
fn second_factor_lockout_and_idle_sessions() {
    // Sessions end after 2 idle seconds in this test (30 minutes by default).
    std::env::set_var("FIELDREPORT_DASHBOARD_IDLE_SECONDS", "2");
    let st = TestStation::start();
    let account = st
        .rt
        .block_on(create_account(
            st.storage.as_ref(),
            &st.station_key(),
            "Sgt Twofactor",
            "73009",
            "D9",
            PASSWORD,
        ))
        .unwrap();
    let actor = account.device_id.to_string();
    let t = totp(&account.totp_secret).unwrap();
    let now = (st.now_ms() / 1000) as u64;
    let current = t.generate(now);
    let wrong = format!(
        "{:06}",
        (current.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    let stale = t.generate(now - 300);

    // The right password with a wrong or stale code is refused.
    assert_eq!(sign_in(&st, "73009", PASSWORD, &wrong).0, 401);
    assert_eq!(sign_in(&st, "73009", PASSWORD, &stale).0, 401);
    assert!(has(
        &st,
        &actor,
        "POST /dashboard/login",
        "refused: wrong second factor"
    ));
    // Both factors: signed in.
    let (status, cookie) = sign_in(&st, "73009", PASSWORD, &current);
    assert_eq!(status, 303);
    let cookie = cookie.unwrap();
    // The same code again (someone who watched it typed) is refused.
    assert_eq!(sign_in(&st, "73009", PASSWORD, &current).0, 401);
    assert!(has(
        &st,
        &actor,
        "POST /dashboard/login",
        "refused: second factor code already used"
    ));

    // Idle: the session works, then ends after the idle time.
    let inbox = |cookie: &str| {
        client(&st)
            .get(format!("{}/dashboard", st.url))
            .header("cookie", cookie)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(inbox(&cookie), 200);
    std::thread::sleep(std::time::Duration::from_millis(2_300));
    assert_eq!(inbox(&cookie), 303, "an idle session still works");
    assert!(has(
        &st,
        &actor,
        "GET /dashboard",
        "303 session ended: idle"
    ));

    // Lockout: the success reset the count, the replay made 1; 4 more lock
    // the account, and then even the right password and a fresh code are
    // refused.
    for i in 1..=4 {
        let (status, _) = sign_in(&st, "73009", &format!("wrong password {i}"), &wrong);
        assert_eq!(status, 401, "failure {i}");
    }
    let next = t.generate(now + 30);
    assert_eq!(sign_in(&st, "73009", PASSWORD, &next).0, 429);
    assert!(has(
        &st,
        &actor,
        "POST /dashboard/login",
        "locked out for 10 minutes"
    ));
    assert!(has(
        &st,
        &actor,
        "POST /dashboard/login",
        "refused: locked out"
    ));
    // Another account is not locked by it.
    let other = st
        .rt
        .block_on(create_account(
            st.storage.as_ref(),
            &st.station_key(),
            "Sgt Other",
            "73010",
            "D9",
            PASSWORD,
        ))
        .unwrap();
    let code = totp(&other.totp_secret).unwrap().generate(now);
    assert_eq!(sign_in(&st, "73010", PASSWORD, &code).0, 303);
    // No audit entry carries a name or a password.
    for e in log(&st) {
        let line = format!("{} {} {} {}", e.actor, e.action, e.target, e.outcome);
        assert!(
            !line.contains("Twofactor") && !line.contains("password 1"),
            "{line}"
        );
    }
}

/// Waits for an audit entry (handshake refusals are written after the
/// client has gone).
fn eventually(st: &TestStation, what: impl Fn(&AuditEntry) -> bool) -> bool {
    for _ in 0..100 {
        if log(st).iter().any(&what) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn a_station_key_other_than_the_pinned_one_is_refused_and_audited() {
    let mut st = TestStation::start();
    let original = st.tls.clone();
    let d = st.device(&person("Officer Pin", "73001", Role::Officer, "D9"), None);
    assert_eq!(pin_of(&d.store), Some(st.pin()), "pinned at enrollment");
    let first = d.store.create_report().unwrap();
    d.sync();
    let second = d.store.create_report().unwrap();
    d.store
        .set_field(second, "narrative", Value::Text("kept on the phone".into()))
        .unwrap();
    let before = st.counts();

    // The station comes back with another key (an impostor on its address,
    // or a certificate replaced without its key).
    st.restart_with(Arc::new(StationTls::generate(&[]).unwrap().0));
    assert!(matches!(try_sync(&d), Err(Error::PinMismatch)));
    // An app restart reads the pin from the store: still refused.
    let reopened = SyncClient::for_store(&d.store).unwrap();
    assert!(matches!(
        reopened.sync(
            &d.store,
            &fieldreport_core::sync::NoProgress,
            &Default::default()
        ),
        Err(Error::PinMismatch)
    ));
    assert_eq!(st.counts().changes, before.changes, "nothing was sent");
    assert_eq!(d.store.outbox_len().unwrap(), 2, "nothing marked sent");
    assert!(eventually(&st, |e| e.action == "TLS handshake"
        && e.actor == "anonymous"
        && e.target == "127.0.0.1"
        && e.outcome
            .starts_with("refused: TLS handshake, the client rejected")));

    // Enrolling with the pin printed next to the code: a station with
    // another key never sees the code, which still works afterwards.
    let code = st.code(
        &person("Officer New", "73002", Role::Officer, "D9"),
        600_000,
    );
    let dir = tempfile::tempdir().unwrap();
    let fresh = Store::open(dir.path()).unwrap();
    assert!(matches!(
        SyncClient::enroll_pinned(&fresh, &st.url, &code, Some(original.pin)),
        Err(Error::PinMismatch)
    ));
    assert!(fresh.identity().is_none());
    SyncClient::enroll_pinned(&fresh, &st.url, &code, Some(st.pin())).unwrap();
    // Plain HTTP to another machine is refused before any connection.
    let other = Store::open(tempfile::tempdir().unwrap().path()).unwrap();
    assert!(matches!(
        SyncClient::enroll(&other, "http://192.0.2.1:8787", "code"),
        Err(Error::InsecureUrl { .. })
    ));

    // The real station is back: everything the phone held goes through.
    st.restart_with(original);
    let report = try_sync(&d).unwrap();
    assert_eq!(report.pushed, 2);
    assert_eq!(d.store.outbox_len().unwrap(), 0);
    let all = st.rt.block_on(st.storage.all_reports()).unwrap();
    for r in [first, second] {
        assert!(all.iter().any(|j| j.contains(&r.to_string())), "{r}");
    }
    assert!(all.iter().any(|j| j.contains("kept on the phone")));
}

/// The CSRF token a dashboard page carries in its forms ("" if none).
fn csrf_of(html: &str) -> String {
    html.split("name=csrf value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

/// A supervisor whose signing device is revoked (`fieldreport-station
/// revoke`), or whose credential has expired, is refused at sign-in and on
/// every request and action of a session already open, which then ends;
/// every refusal is in the audit log, as the API's are.
#[test]
fn a_revoked_or_expired_supervisor_cannot_act_in_the_dashboard() {
    use fieldreport_station::clock::ManualClock;
    let clock = ManualClock::at(1_800_000_000_000);
    let st = TestStation::start_with_clock(clock.clone());
    let officer = st.device(&person("Officer Revo", "74001", Role::Officer, "D9"), None);
    let r = officer.store.create_report().unwrap();
    for (p, v) in [
        ("occurred.start", Value::Time(1_799_990_000_000)),
        ("location.address", Value::Text("S Kedzie Ave".into())),
        ("federal_agencies", Value::List(vec!["ice".into()])),
    ] {
        officer.store.set_field(r, p, v).unwrap();
    }
    officer.store.submit(r).unwrap();
    officer.sync();
    let make = |name: &str, star: &str| {
        st.rt
            .block_on(create_account(
                st.storage.as_ref(),
                &st.station_key(),
                name,
                star,
                "D9",
                PASSWORD,
            ))
            .unwrap()
    };
    let revoked = make("Sgt Revoked", "74009");
    let expired = make("Sgt Expired", "74010");
    let code = |secret: &str| totp(secret).unwrap().generate((st.now_ms() / 1000) as u64);
    let get = |cookie: &str, path: &str| {
        client(&st)
            .get(format!("{}{path}", st.url))
            .header("cookie", cookie)
            .send()
            .unwrap()
    };
    let open_session = |star: &str, secret: &str| {
        // A code works once: each sign-in of an account is a step later.
        clock.advance(30_000);
        let (status, cookie) = sign_in(&st, star, PASSWORD, &code(secret));
        assert_eq!(status, 303, "{star} signs in");
        let cookie = cookie.unwrap();
        let page = get(&cookie, &format!("/dashboard/reports/{r}"));
        assert_eq!(page.status().as_u16(), 200);
        let csrf = csrf_of(&page.text().unwrap());
        (cookie, csrf)
    };
    let (a, a_csrf) = open_session("74009", &revoked.totp_secret);
    let (b, _) = open_session("74009", &revoked.totp_secret);
    let (c, _) = open_session("74010", &expired.totp_secret);

    // Session b's live inbox listens to the unit's events.
    let stream = get(&b, "/dashboard/events");
    assert_eq!(stream.status().as_u16(), 200);
    let (closed_tx, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stream = stream;
        let _ = stream.read_to_end(&mut Vec::new());
        let _ = closed_tx.send(());
    });

    // Revoked with the console command, while both sessions are open.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_station-cli"))
        .arg("revoke")
        .args(st.cli_args())
        .args(["--device", &revoked.device_id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = revoked.device_id.to_string();
    // An action is refused and changes nothing.
    let resp = client(&st)
        .post(format!("{}/dashboard/reports/{r}/approve", st.url))
        .header("cookie", &a)
        .form(&[("csrf", a_csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a revoked supervisor's action");
    assert!(has(
        &st,
        &dev,
        "POST /dashboard/reports/{id}/{action}",
        "401 device revoked"
    ));
    officer.sync();
    assert_eq!(
        officer.store.report(r).unwrap().lifecycle,
        fieldreport_core::LifecycleState::Submitted
    );
    // That session has ended: the next page is the sign-in page.
    let resp = get(&a, "/dashboard");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "/dashboard/login");
    // The other session: its data and its pages are refused, and its open
    // event stream closes.
    assert!(closed.try_recv().is_err(), "the stream is open until then");
    assert_eq!(get(&b, "/dashboard/inbox").status().as_u16(), 401);
    assert!(has(&st, &dev, "GET /dashboard/inbox", "401 device revoked"));
    closed
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the ended session's event stream closes");
    assert_eq!(get(&b, "/dashboard/inbox").status().as_u16(), 401);
    assert_eq!(get(&b, "/dashboard").status().as_u16(), 303, "ended");
    // Signing in again, with the right password and a fresh code.
    clock.advance(30_000);
    let (status, cookie) = sign_in(&st, "74009", PASSWORD, &code(&revoked.totp_secret));
    assert_eq!((status, cookie), (401, None));
    assert!(has(
        &st,
        &dev,
        "POST /dashboard/login",
        "401 device revoked"
    ));

    // The other account's credential runs out during its session.
    let dev = expired.device_id.to_string();
    assert_eq!(get(&c, "/dashboard/reviews").status().as_u16(), 200);
    assert!(st
        .rt
        .block_on(
            st.storage
                .set_credential_expiry(expired.device_id, st.now_ms() + 1_000)
        )
        .unwrap());
    clock.advance(2_000);
    assert_eq!(get(&c, "/dashboard/reviews").status().as_u16(), 401);
    assert!(has(
        &st,
        &dev,
        "GET /dashboard/reviews",
        "401 credential expired"
    ));
    assert_eq!(get(&c, "/dashboard").status().as_u16(), 303, "ended");
    clock.advance(30_000);
    let (status, _) = sign_in(&st, "74010", PASSWORD, &code(&expired.totp_secret));
    assert_eq!(status, 401);
    assert!(has(
        &st,
        &dev,
        "POST /dashboard/login",
        "401 credential expired"
    ));
    // Made again, the revoked account gets a new signing device, and its
    // supervisor signs in with the new second factor.
    let again = make("Sgt Revoked", "74009");
    assert_ne!(again.device_id, revoked.device_id);
    clock.advance(30_000);
    let (status, _) = sign_in(&st, "74009", PASSWORD, &code(&again.totp_secret));
    assert_eq!(status, 303);

    // Extended by the admin, the expired account signs in again.
    assert!(st
        .rt
        .block_on(
            st.storage
                .set_credential_expiry(expired.device_id, st.now_ms() + 86_400_000)
        )
        .unwrap());
    clock.advance(30_000);
    let (status, _) = sign_in(&st, "74010", PASSWORD, &code(&expired.totp_secret));
    assert_eq!(status, 303);
}

/// A dashboard account does not expire with the phones' 180-day
/// credentials (nobody holds its device's credential): a year on, the
/// supervisor still signs in.
#[test]
fn a_dashboard_account_still_signs_in_a_year_on() {
    use fieldreport_station::clock::ManualClock;
    let clock = ManualClock::at(1_800_000_000_000);
    let st = TestStation::start_with_clock(clock.clone());
    let account = st
        .rt
        .block_on(create_account(
            st.storage.as_ref(),
            &st.station_key(),
            "Sgt Longserve",
            "75009",
            "D9",
            PASSWORD,
        ))
        .unwrap();
    clock.advance(365 * 86_400_000);
    let code = totp(&account.totp_secret)
        .unwrap()
        .generate((st.now_ms() / 1000) as u64);
    let (status, cookie) = sign_in(&st, "75009", PASSWORD, &code);
    assert_eq!(status, 303, "signed in a year on");
    assert!(cookie.is_some());
}
