//! The supervisor dashboard: sign-in and sessions over HTTP, its security
//! headers and the refusal of cross-origin or tokenless POSTs, and the
//! whole supervisor journey in headless Chromium driven by Playwright
//! (tests/browser/dashboard.mjs): a report appears live after an officer's
//! device syncs, is returned with a comment, resubmitted, approved and
//! referred, under the Content-Security-Policy and with another origin
//! unable to post the forms or frame the pages. Screenshots go to
//! target/artifacts/.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use fieldreport_core::model::LifecycleState;
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;
use fieldreport_station::accounts::create_account;
use reqwest::blocking::Client;
use reqwest::redirect::Policy;

const PASSWORD: &str = "correct horse battery staple";

/// Makes an account; its TOTP secret.
fn account(st: &TestStation, star: &str, unit: &str) -> String {
    st.rt
        .block_on(create_account(
            st.storage.as_ref(),
            &st.station_key(),
            "Sgt. D. Ashboard",
            star,
            unit,
            PASSWORD,
        ))
        .unwrap()
        .totp_secret
}

/// The code an authenticator app holding `secret` shows at the station's now.
fn code(st: &TestStation, secret: &str) -> String {
    fieldreport_station::accounts::totp(secret)
        .unwrap()
        .generate((st.now_ms() / 1000) as u64)
}

fn client(st: &TestStation) -> Client {
    st.http_builder().redirect(Policy::none()).build().unwrap()
}

/// Signs in; the session cookie.
fn sign_in(st: &TestStation, star: &str, password: &str, code: &str) -> Option<String> {
    let resp = client(st)
        .post(format!("{}/dashboard/login", st.url))
        .form(&[("star", star), ("password", password), ("code", code)])
        .send()
        .unwrap();
    if resp.status().as_u16() != 303 {
        assert_eq!(resp.status().as_u16(), 401);
        return None;
    }
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    Some(cookie.split(';').next().unwrap().to_string())
}

fn ready_report(d: &Device) -> uuid::Uuid {
    ready_report_with(d, false)
}

/// A submitted report, with a photo when `photo`.
fn ready_report_with(d: &Device, photo: bool) -> uuid::Uuid {
    let r = d.store.create_report().unwrap();
    if photo {
        let file = d.dir().join("scene.jpg");
        std::fs::write(&file, vec![0xd8u8; 30_000]).unwrap();
        d.store
            .attach_media(
                r,
                &file,
                fieldreport_core::store::MediaMeta {
                    mime_type: "image/jpeg".into(),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    d.store
        .set_field(r, "occurred.start", Value::Time(1_795_705_200_000))
        .unwrap();
    d.store
        .set_field(
            r,
            "location.address",
            Value::Text("W 26th St & S Pulaski Rd".into()),
        )
        .unwrap();
    d.store
        .set_field(r, "federal_agencies", Value::List(vec!["ice".into()]))
        .unwrap();
    d.store
        .set_field(
            r,
            "narrative",
            Value::Text("Agents detained a man at the bus stop.".into()),
        )
        .unwrap();
    d.store.submit(r).unwrap();
    r
}

#[test]
fn sign_in_sessions_and_actions_over_http() {
    let st = TestStation::start();
    let secret = account(&st, "900", "D9");
    let officer = st.device(&person("O", "101", Role::Officer, "D9"), None);
    let r = ready_report(&officer);
    officer.sync();

    // Not signed in: pages send you to the sign-in page, data is refused.
    let resp = client(&st)
        .get(format!("{}/dashboard", st.url))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "/dashboard/login");
    assert_eq!(
        client(&st)
            .get(format!("{}/dashboard/inbox", st.url))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    // A device credential is not a dashboard session.
    let resp = client(&st)
        .get(format!("{}/dashboard/inbox", st.url))
        .bearer_auth(officer.credential())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        sign_in(&st, "900", "wrong password!", &code(&st, &secret)),
        None
    );
    assert_eq!(sign_in(&st, "999", PASSWORD, &code(&st, &secret)), None);

    let cookie = sign_in(&st, "900", PASSWORD, &code(&st, &secret)).unwrap();
    let get = |path: &str| {
        client(&st)
            .get(format!("{}{path}", st.url))
            .header("cookie", &cookie)
            .send()
            .unwrap()
    };
    let inbox = get("/dashboard/inbox").text().unwrap();
    assert!(inbox.contains(&r.to_string()), "{inbox}");
    let page = get(&format!("/dashboard/reports/{r}")).text().unwrap();
    assert!(page.contains("Agents detained a man") && page.contains("Return to officer"));

    // An action out of turn is refused by the core and changes nothing.
    // (Every form carries the session's CSRF token.)
    let csrf = csrf_of(&page);
    let post = |path: &str, form: &[(&str, &str)]| {
        let mut form = form.to_vec();
        form.push(("csrf", &csrf));
        client(&st)
            .post(format!("{}{path}", st.url))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .unwrap()
    };
    let resp = post(&format!("/dashboard/reports/{r}/close"), &[]);
    assert_eq!(resp.status().as_u16(), 409);
    assert!(resp.text().unwrap().contains("not allowed"));
    let resp = post(&format!("/dashboard/reports/{r}/approve"), &[]);
    assert_eq!(resp.status().as_u16(), 303);
    let resp = post(
        &format!("/dashboard/reports/{r}/review"),
        &[
            ("findings", "Prompt report."),
            ("cpd_conduct", "Kept distance."),
            ("dispatch_knew", "no"),
        ],
    );
    assert_eq!(resp.status().as_u16(), 303);
    officer.sync();
    let rep = officer.store.report(r).unwrap();
    assert_eq!(rep.lifecycle, LifecycleState::Approved);
    assert_eq!(rep.review.findings.as_deref(), Some("Prompt report."));
    // Signed by the account's own device, enrolled as the supervisor.
    let approver = rep.lifecycle_history.last().unwrap().change.device;
    let dev = officer
        .store
        .known_devices()
        .unwrap()
        .into_iter()
        .find(|d| d.device_id == approver)
        .unwrap();
    assert_eq!(dev.person.star_number, "900");
    assert_eq!(dev.person.role, Role::Supervisor);

    // The evidence package downloads; another unit's supervisor sees nothing.
    let tar = get(&format!("/dashboard/reports/{r}/export"));
    assert_eq!(tar.status().as_u16(), 200);
    assert!(tar.bytes().unwrap().len() > 1024);
    let other_secret = account(&st, "800", "D2");
    let other = sign_in(&st, "800", PASSWORD, &code(&st, &other_secret)).unwrap();
    let resp = client(&st)
        .get(format!("{}/dashboard/reports/{r}", st.url))
        .header("cookie", &other)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Signing out ends the session.
    let resp = post("/dashboard/logout", &[]);
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(get("/dashboard/inbox").status().as_u16(), 401);
}

fn playwright_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FR_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fieldreport/playwright"))
        })?;
    if dir.join("node_modules/playwright-core").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("FR_REQUIRE_TOOLS").is_some() {
        panic!(
            "playwright-core is required (FR_REQUIRE_TOOLS is set); scripts/test.sh installs it"
        );
    }
    eprintln!("SKIPPED: playwright-core is not installed; scripts/test.sh installs it");
    None
}

#[test]
fn supervisor_journey_in_headless_chromium() {
    let Some(chromium) = outside_tool("chromium") else {
        return;
    };
    let Some(node) = outside_tool("node") else {
        return;
    };
    let Some(pw) = playwright_dir() else { return };
    let st = TestStation::start();
    let secret = account(&st, "900", "D9");
    let officer = st.device(&person("Officer K. Test", "101", Role::Officer, "D9"), None);

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = root.join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    // The script imports playwright-core from its cache directory.
    let script = pw.join("dashboard.mjs");
    std::fs::copy(root.join("tests/browser/dashboard.mjs"), &script).unwrap();
    let mut child = Command::new(node)
        .arg(&script)
        .env("FR_URL", &st.url)
        .env("FR_STAR", "900")
        .env("FR_PASSWORD", PASSWORD)
        .env("FR_CODE", code(&st, &secret))
        .env("FR_SCREENSHOT", &shot)
        .env("FR_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut expect = |want: &str| -> String {
        let line = out.next().expect("the browser script ended").unwrap();
        if !line.starts_with(want) {
            let _ = child.kill();
            panic!("browser: {line}");
        }
        line
    };

    expect("READY");
    let r = ready_report_with(&officer, true);
    officer.sync();
    let seen = expect("SEEN");
    assert_eq!(seen, format!("SEEN {r}"));
    expect("RETURNED");
    officer.sync();
    let rep = officer.store.report(r).unwrap();
    assert_eq!(rep.lifecycle, LifecycleState::Returned);
    assert_eq!(
        rep.return_comment.as_deref(),
        Some("Add the supervising agent's badge number.")
    );
    officer
        .store
        .set_field(
            r,
            "supervisory_federal_officer.badge_number",
            Value::Text("CBP 4471-B".into()),
        )
        .unwrap();
    officer.store.submit(r).unwrap();
    officer.sync();
    writeln!(stdin, "resubmitted").unwrap();
    expect("DONE");
    drop(stdin);
    assert!(child.wait().unwrap().success());
    officer.sync();
    let rep = officer.store.report(r).unwrap();
    assert_eq!(rep.lifecycle, LifecycleState::Referred);
    assert_eq!(rep.referral.reference.as_deref(), Some("SA-2026-0114"));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot saved"
    );
}

/// The CSRF token a dashboard page carries in its forms ("" if none).
fn csrf_of(html: &str) -> String {
    html.split("name=csrf value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

fn audited(st: &TestStation, action: &str, outcome: &str) -> bool {
    st.rt
        .block_on(st.storage.audit_log(0, 100_000))
        .unwrap()
        .iter()
        .any(|e| e.action == action && e.outcome == outcome)
}

/// Every dashboard response carries a Content-Security-Policy without
/// inline script or style (and `frame-ancestors 'none'`), `nosniff`, and
/// reports, photos and data are not kept in the browser's cache. A POST
/// without the session's CSRF token, or from another origin, is refused
/// with 403 and audited, and changes nothing.
#[test]
fn security_headers_and_cross_site_posts() {
    let st = TestStation::start();
    let secret = account(&st, "900", "D9");
    let officer = st.device(&person("O", "101", Role::Officer, "D9"), None);
    let r = ready_report(&officer);
    let photo = officer.dir().join("p.jpg");
    std::fs::write(&photo, vec![9u8; 20_000]).unwrap();
    let sha = officer
        .store
        .attach_media(
            r,
            &photo,
            fieldreport_core::store::MediaMeta {
                mime_type: "image/jpeg".into(),
                ..Default::default()
            },
        )
        .unwrap()
        .sha256;
    officer.sync();
    let cookie = sign_in(&st, "900", PASSWORD, &code(&st, &secret)).unwrap();
    let get = |path: &str| {
        client(&st)
            .get(format!("{}{path}", st.url))
            .header("cookie", &cookie)
            .send()
            .unwrap()
    };
    let header = |resp: &reqwest::blocking::Response, name: &str| -> String {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let private = [
        "/dashboard".to_string(),
        format!("/dashboard/reports/{r}"),
        format!("/dashboard/media/{sha}"),
        format!("/dashboard/reports/{r}/export"),
        "/dashboard/inbox".to_string(),
        "/dashboard/reviews".to_string(),
        "/dashboard/login".to_string(),
    ];
    for path in &private {
        let resp = get(path);
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let csp = header(&resp, "content-security-policy");
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(part), "{path}: CSP `{csp}` lacks {part}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&resp, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&resp, "cache-control"), "no-store", "{path}");
        if header(&resp, "content-type").starts_with("text/html") {
            let html = resp.text().unwrap();
            assert!(
                !html.contains("<script>") && !html.contains("<style>") && !html.contains("style="),
                "{path}: inline script or style"
            );
        }
    }
    // The script and style are files of their own.
    for (path, mime) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let resp = get(path);
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        assert!(header(&resp, "content-type").starts_with(mime), "{path}");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    }
    let page = get(&format!("/dashboard/reports/{r}")).text().unwrap();
    assert!(page.contains("<script src=\"/dashboard/app.js\""), "{page}");
    let csrf = csrf_of(&page);
    assert!(
        csrf.len() >= 32,
        "the report page's forms carry a CSRF token"
    );

    let post = |path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]| {
        let mut req = client(&st)
            .post(format!("{}{path}", st.url))
            .header("cookie", &cookie)
            .form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().unwrap().status().as_u16()
    };
    let approve = format!("/dashboard/reports/{r}/approve");
    let action = "POST /dashboard/reports/{id}/{action}";
    // No token, a wrong one, another origin, a cross-site fetch: refused.
    assert_eq!(post(&approve, &[], &[]), 403);
    assert!(audited(&st, action, "403 no CSRF token"));
    assert_eq!(post(&approve, &[("csrf", "0123456789abcdef")], &[]), 403);
    assert!(audited(&st, action, "403 wrong CSRF token"));
    let own = st.url.clone();
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("origin", "https://127.0.0.1:1")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        assert_eq!(
            post(&approve, &[("csrf", &csrf)], &headers),
            403,
            "{headers:?}"
        );
    }
    assert!(audited(&st, action, "403 cross-origin request"));
    assert_eq!(post("/dashboard/logout", &[], &[]), 403);
    assert!(audited(&st, "POST /dashboard/logout", "403 no CSRF token"));
    // A sign-in posted from another origin is refused before it is checked.
    let resp = client(&st)
        .post(format!("{}/dashboard/login", st.url))
        .header("origin", "https://evil.example")
        .form(&[("star", "900"), ("password", PASSWORD), ("code", "000000")])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(audited(
        &st,
        "POST /dashboard/login",
        "403 cross-origin request"
    ));
    officer.sync();
    assert_eq!(
        officer.store.report(r).unwrap().lifecycle,
        LifecycleState::Submitted,
        "nothing refused changed the report"
    );
    // The dashboard's own form, from its own origin, goes through; and
    // the session outlived the refused sign-out.
    assert_eq!(
        post(
            &approve,
            &[("csrf", &csrf)],
            &[("origin", &own), ("sec-fetch-site", "same-origin")]
        ),
        303
    );
    officer.sync();
    assert_eq!(
        officer.store.report(r).unwrap().lifecycle,
        LifecycleState::Approved
    );
    assert_eq!(post("/dashboard/logout", &[("csrf", &csrf)], &[]), 303);
    assert_eq!(get("/dashboard/inbox").status().as_u16(), 401);
}
