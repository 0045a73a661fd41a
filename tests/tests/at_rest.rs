//! The station's files at rest, on both engines: after real use (devices
//! enroll, an officer syncs a report with a photo, a dashboard account is
//! made, supervisors sign in and act, the evidence package is downloaded)
//! every file and directory under the data directory is readable by the
//! station's own user only, and neither any file there nor a dump of every
//! table of the database holds a second-factor secret, a device
//! credential, a password or a supervisor's signing key in the clear.
//!
//! The station starts on the layout an earlier build left (accounts in a
//! `users.json` readable by all, a plain signing store, `0644` files),
//! which the same search finds the secrets in, so the search is real; the
//! station imports that file once, removes it, retires the credential it
//! held and encrypts the signing store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fieldreport_core::store::Store;
use fieldreport_core::{DeviceIdentity, LifecycleState, Role, Value};
use fieldreport_e2e::*;
use fieldreport_station::accounts;
use fieldreport_station::clock::SystemClock;
use reqwest::redirect::Policy;

const LEGACY_PASSWORD: &str = "an older build's password";
const FRESH_PASSWORD: &str = "a freshly made password";

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every directory under `dir`, itself included.
fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        for e in std::fs::read_dir(&out[i]).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push(p);
            }
        }
        i += 1;
    }
    out
}

/// A secret and the forms it could be written in.
struct Needle {
    name: String,
    forms: Vec<Vec<u8>>,
}

impl Needle {
    fn text(name: &str, s: &str) -> Needle {
        Needle {
            name: name.into(),
            forms: vec![s.as_bytes().to_vec()],
        }
    }
    /// Raw bytes, and their hex (lower and upper case), as a dump shows them.
    fn bytes(name: &str, b: &[u8]) -> Needle {
        Needle {
            name: name.into(),
            forms: vec![
                b.to_vec(),
                hex::encode(b).into_bytes(),
                hex::encode_upper(b).into_bytes(),
            ],
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The needles found in `hay`, by name.
fn found_in(hay: &[u8], needles: &[Needle]) -> Vec<String> {
    needles
        .iter()
        .filter(|n| n.forms.iter().any(|f| contains(hay, f)))
        .map(|n| n.name.clone())
        .collect()
}

/// Which needle is in which file under `dir`.
fn search_files(dir: &Path, needles: &[Needle]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files(dir) {
        let bytes = std::fs::read(&f).unwrap();
        for n in found_in(&bytes, needles) {
            out.push(format!("{n} in {}", f.display()));
        }
    }
    out
}

/// Every row of every table of the station's database, as bytes: SQLite
/// values as they are (blobs raw and in hex), PostgreSQL rows as text.
fn dump_database(st: &TestStation) -> Vec<u8> {
    let mut out = Vec::new();
    match &st.database {
        Some(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let tables: Vec<String> = c
                .query(
                    "SELECT table_name::text FROM information_schema.tables
                     WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(tables.len() > 5, "{tables:?}");
            for t in tables {
                for row in c
                    .query(&format!("SELECT t::text FROM \"{t}\" t"), &[])
                    .unwrap()
                {
                    out.extend_from_slice(row.get::<_, String>(0).as_bytes());
                    out.push(b'\n');
                }
            }
        }
        None => {
            let c = rusqlite::Connection::open_with_flags(
                st.dir.path().join("station/station.db"),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let tables: Vec<String> = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(tables.len() > 5, "{tables:?}");
            for t in tables {
                let mut stmt = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
                let n = stmt.column_count();
                let mut rows = stmt.query([]).unwrap();
                while let Some(row) = rows.next().unwrap() {
                    for i in 0..n {
                        use rusqlite::types::ValueRef;
                        match row.get_ref(i).unwrap() {
                            ValueRef::Null => {}
                            ValueRef::Integer(v) => out.extend(v.to_string().bytes()),
                            ValueRef::Real(v) => out.extend(v.to_string().bytes()),
                            ValueRef::Text(b) => out.extend_from_slice(b),
                            ValueRef::Blob(b) => {
                                out.extend_from_slice(b);
                                out.extend(hex::encode(b).bytes());
                            }
                        }
                        out.push(b'\t');
                    }
                    out.push(b'\n');
                }
            }
        }
    }
    out
}

fn base32_of(raw: &[u8]) -> String {
    match totp_rs::Secret::Raw(raw.to_vec()).to_encoded() {
        totp_rs::Secret::Encoded(s) => s,
        totp_rs::Secret::Raw(_) => unreachable!(),
    }
}

fn raw_of(base32: &str) -> Vec<u8> {
    totp_rs::Secret::Encoded(base32.to_string())
        .to_bytes()
        .unwrap()
}

/// The signing key a dashboard account's store holds (`key`: the store's
/// SQLCipher key, when encrypted).
fn store_secret(store_db: &Path, key: Option<&fieldreport_core::store::StoreKey>) -> Vec<u8> {
    let c = rusqlite::Connection::open(store_db).unwrap();
    if let Some(k) = key {
        c.pragma_update(None, "key", format!("x'{}'", hex::encode(k.to_vec())))
            .unwrap();
    }
    c.query_row("SELECT secret_key FROM identity", [], |r| r.get(0))
        .unwrap()
}

/// What the earlier build's layout held, for the search.
struct Legacy {
    device_id: uuid::Uuid,
    credential: String,
    totp_secret: String,
    signing_secret: [u8; 32],
}

/// Writes the data directory as an earlier build left it: the account in
/// `dashboard/users.json` with its device's bearer credential and TOTP
/// secret, its signing store a plain SQLite file, everything `0644` and
/// `0755`.
fn legacy_layout(p: &Prepared) -> Legacy {
    let storage = p.open_storage();
    let person = person("Sgt L. Egacy", "75009", Role::Supervisor, "D9");
    let (code, _) =
        p.rt.block_on(storage.create_enrollment(person.clone(), 600_000))
            .unwrap();
    let mut signing_secret = [0u8; 32];
    getrandom::fill(&mut signing_secret).unwrap();
    let identity =
        DeviceIdentity::from_secret(uuid::Uuid::new_v4(), signing_secret, person.clone());
    let device_id = identity.device_id();
    let (_, credential) =
        p.rt.block_on(storage.enroll(&code, device_id, identity.record.public_key))
            .unwrap();
    drop(storage);
    let dash = p.data.join("dashboard");
    Store::open(dash.join(device_id.to_string()))
        .unwrap()
        .install_identity(identity)
        .unwrap();
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).unwrap();
    let totp_secret = base32_of(&raw);
    let users = serde_json::json!([{
        "name": person.name,
        "star_number": person.star_number,
        "unit": person.unit,
        "password_hash": accounts::hash_password(LEGACY_PASSWORD).unwrap(),
        "device_id": device_id,
        "credential": credential,
        "totp_secret": totp_secret,
    }]);
    std::fs::write(
        dash.join("users.json"),
        serde_json::to_vec_pretty(&users).unwrap(),
    )
    .unwrap();
    for d in dirs(p.data) {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in files(p.data) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    Legacy {
        device_id,
        credential,
        totp_secret,
        signing_secret,
    }
}

#[test]
fn no_secret_in_the_clear_and_no_file_readable_by_others() {
    let mut legacy = None;
    let st = TestStation::start_prepared(SystemClock::shared().expect("the test clock"), |p| {
        let l = legacy_layout(p);
        // The search finds the earlier build's secrets in its files.
        let needles = [
            Needle::text("TOTP secret", &l.totp_secret),
            Needle::text("credential", &l.credential),
            Needle::bytes("signing key", &l.signing_secret),
        ];
        let found = search_files(p.data, &needles);
        for n in ["TOTP secret in", "credential in", "signing key in"] {
            assert!(
                found.iter().any(|f| f.starts_with(n)),
                "the search missed the old layout's {n}: {found:?}"
            );
        }
        legacy = Some(l);
    });
    let legacy = legacy.unwrap();
    let data = st.dir.path().join("station");

    // Real use: an officer syncs a report with a photo.
    let officer = st.device(
        &person("Officer At Rest", "75001", Role::Officer, "D9"),
        None,
    );
    let r = officer.store.create_report().unwrap();
    for (p, v) in [
        ("occurred.start", Value::Time(1_795_705_200_000)),
        ("location.address", Value::Text("W Cermak Rd".into())),
        ("federal_agencies", Value::List(vec!["ice".into()])),
    ] {
        officer.store.set_field(r, p, v).unwrap();
    }
    let sha = officer.attach_photo(r, "photo.jpg", vec![0x5au8; 150_000]);
    officer.store.submit(r).unwrap();
    officer.sync();
    // A new dashboard account.
    let fresh = st
        .rt
        .block_on(accounts::create_account(
            st.storage.as_ref(),
            &st.station_key(),
            "Sgt F. Resh",
            "75010",
            "D9",
            FRESH_PASSWORD,
        ))
        .unwrap();

    // Both supervisors sign in and act; the imported account with the
    // password and authenticator it had.
    let http = st.http_builder().redirect(Policy::none()).build().unwrap();
    let sign_in = |star: &str, password: &str, secret: &str| -> String {
        let code = accounts::totp(secret)
            .unwrap()
            .generate((st.now_ms() / 1000) as u64);
        let resp = http
            .post(format!("{}/dashboard/login", st.url))
            .form(&[("star", star), ("password", password), ("code", &code)])
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 303, "{star} signs in");
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let act = |cookie: &str, action: &str, form: &[(&str, &str)]| {
        let page = http
            .get(format!("{}/dashboard/reports/{r}", st.url))
            .header("cookie", cookie)
            .send()
            .unwrap()
            .text()
            .unwrap();
        let csrf = page
            .split("name=csrf value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_string();
        let mut form = form.to_vec();
        form.push(("csrf", &csrf));
        let resp = http
            .post(format!("{}/dashboard/reports/{r}/{action}", st.url))
            .header("cookie", cookie)
            .form(&form)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 303, "{action}");
    };
    let old_cookie = sign_in("75009", LEGACY_PASSWORD, &legacy.totp_secret);
    act(&old_cookie, "approve", &[]);
    let new_cookie = sign_in("75010", FRESH_PASSWORD, &fresh.totp_secret);
    act(
        &new_cookie,
        "review",
        &[
            ("findings", "Reviewed at rest."),
            ("cpd_conduct", "None."),
            ("dispatch_knew", "no"),
        ],
    );
    for path in [
        format!("/dashboard/media/{sha}"),
        format!("/dashboard/reports/{r}/export"),
    ] {
        let resp = http
            .get(format!("{}{path}", st.url))
            .header("cookie", &new_cookie)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        assert!(resp.bytes().unwrap().len() > 1000);
    }
    officer.sync();
    let rep = officer.store.report(r).unwrap();
    assert_eq!(rep.lifecycle, LifecycleState::Approved);
    assert_eq!(rep.review.findings.as_deref(), Some("Reviewed at rest."));

    // Modes: nothing under the data directory is readable by others.
    let mut wrong = Vec::new();
    for d in dirs(&data) {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        if mode != 0o700 {
            wrong.push(format!("{:o} {}", mode, d.display()));
        }
    }
    for f in files(&data) {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        if mode != 0o600 {
            wrong.push(format!("{:o} {}", mode, f.display()));
        }
    }

    let legacy_db = data.join(format!("dashboard/{}/fieldreport.db", legacy.device_id));
    let fresh_db = data.join(format!("dashboard/{}/fieldreport.db", fresh.device_id));
    // The new account's signing key, read from its store with the store's
    // key (which the station key opens).
    let row = st
        .rt
        .block_on(st.storage.dashboard_account("75010"))
        .unwrap()
        .unwrap();
    let store_key = accounts::signing_store_key(&st.station_key(), &row).unwrap();
    let fresh_secret = store_secret(&fresh_db, Some(&store_key));
    assert_eq!(fresh_secret.len(), 32);

    // The search: every file and every table.
    let needles = vec![
        Needle::text("imported TOTP secret", &legacy.totp_secret),
        Needle::bytes("imported TOTP secret bytes", &raw_of(&legacy.totp_secret)),
        Needle::text("new TOTP secret", &fresh.totp_secret),
        Needle::bytes("new TOTP secret bytes", &raw_of(&fresh.totp_secret)),
        Needle::text("imported device credential", &legacy.credential),
        Needle::bytes(
            "imported device credential bytes",
            &hex::decode(&legacy.credential).unwrap(),
        ),
        Needle::text("imported password", LEGACY_PASSWORD),
        Needle::text("new password", FRESH_PASSWORD),
        Needle::bytes("imported signing key", &legacy.signing_secret),
        Needle::bytes("new signing key", &fresh_secret),
    ];
    // (The new account's device credential is known to nobody: the station
    // drops it at enrollment and keeps only the hash of one it retired it
    // for.)
    let mut found = search_files(&data, &needles);
    found.extend(
        found_in(&dump_database(&st), &needles)
            .into_iter()
            .map(|n| format!("{n} in the database")),
    );
    assert!(
        wrong.is_empty() && found.is_empty(),
        "readable by others: {wrong:#?}\nsecrets in the clear: {found:#?}"
    );

    // The signing stores are encrypted: SQLite cannot read them without
    // their keys (the key opened the new one above).
    for db in [&legacy_db, &fresh_db] {
        let head = std::fs::read(db).unwrap();
        assert!(
            !head.starts_with(b"SQLite format 3\0"),
            "{} is plain",
            db.display()
        );
    }
    // Imported once: the file is gone, and the credential it held (read
    // by whoever could read that file) no longer opens the API.
    assert!(!data.join("dashboard/users.json").exists());
    let resp = http
        .get(format!("{}/v1/devices", st.url))
        .bearer_auth(&legacy.credential)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "the old credential is retired");
}
