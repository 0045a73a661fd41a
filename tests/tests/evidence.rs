//! Evidence packages: a bag exported from a station after two officers'
//! conflicting edits and photos passes `bagit.py --validate`, its PDF passes
//! `qpdf --check` and `pdftotext` finds the report id, the federal
//! supervisor's badge and every photo hash; `verify` accepts it, and names
//! each tampering; exporting is refused to those who may not see a report.
//!
//! The outside tools (bagit.py from PyPI, qpdf, poppler-utils) are
//! installed by `.ci/run`. Without them these checks are skipped with a
//! message, unless `FR_REQUIRE_TOOLS=1` (CI sets it) makes that a failure.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use fieldreport_core::crdt::{Action, Change, ChangeBody, Hlc, Operation, Target};
use fieldreport_core::evidence::package::{
    change_line, verify_package, verify_package_with, write_package, DeviceEnrollment,
    PackageInput, Verdict, VerifyOptions,
};
use fieldreport_core::store::MediaMeta;
use fieldreport_core::tlog::{NoteVerifier, SignedCheckpoint};
use fieldreport_core::{DeviceIdentity, Role, Value};
use fieldreport_e2e::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const T0: i64 = 1_764_000_000_000;
const BADGE_A: &str = "CBP 4471-B";
const BADGE_B: &str = "CBP 4417";
const CLI: &str = env!("CARGO_BIN_EXE_station-cli");

struct Scene {
    st: TestStation,
    report: Uuid,
    photos: Vec<String>,
    officer: Device,
    supervisor: Device,
    other_supervisor: Device,
}

fn photo(d: &Device, r: Uuid, size: usize, seed: u8) -> String {
    let path = d.dir().join(format!("photo-{seed}.jpg"));
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    fs::write(&path, bytes).unwrap();
    d.store
        .attach_media(
            r,
            &path,
            MediaMeta {
                mime_type: "image/jpeg".into(),
                file_name: Some(format!("IMG_{seed}.jpg")),
                ..Default::default()
            },
        )
        .unwrap()
        .sha256
}

/// Two officers of District 9 on one report, offline: shared phone to
/// phone, concurrent badge numbers (a kept conflict), two photos; synced.
fn scene() -> Scene {
    let st = TestStation::start();
    let a = st.device(&person("Ana Alvarez", "11021", Role::Officer, "D9"), None);
    let b = st.device(&person("Ben Brooks", "11544", Role::Officer, "D9"), None);
    let supervisor = st.device(&person("Sam Ortiz", "900", Role::Supervisor, "D9"), None);
    let other_supervisor = st.device(&person("Kim Lee", "901", Role::Supervisor, "D12"), None);
    let r = a.store.create_report().unwrap();
    let s = &a.store;
    s.set_field(r, "occurred.start", Value::Time(T0)).unwrap();
    s.set_field(
        r,
        "occurred.time_zone",
        Value::Text("America/Chicago".into()),
    )
    .unwrap();
    s.set_field(
        r,
        "location.address",
        Value::Text("1800 S Blue Island Ave".into()),
    )
    .unwrap();
    s.set_field(r, "federal_agencies", Value::List(vec!["ice".into()]))
        .unwrap();
    let photos = vec![photo(&a, r, 200_000, 1), photo(&a, r, 150_000, 2)];
    a.hand_over_to(&b);
    let badge = "supervisory_federal_officer.badge_number";
    a.store
        .set_field(r, badge, Value::Text(BADGE_A.into()))
        .unwrap();
    b.store
        .set_field(r, badge, Value::Text(BADGE_B.into()))
        .unwrap();
    b.store
        .set_field(
            r,
            "narrative",
            Value::Text("José was pushed to the ground — 中文 kept in JSON.".into()),
        )
        .unwrap();
    a.store
        .set_field(r, "medical_aid.ems_summoned_at", Value::Time(T0 + 300_000))
        .unwrap();
    a.sync();
    b.sync();
    Scene {
        st,
        report: r,
        photos,
        officer: a,
        supervisor,
        other_supervisor,
    }
}

fn station_data(s: &Scene) -> PathBuf {
    s.st.dir.path().join("station")
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLI).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn export(s: &Scene, reports: &[Uuid], out: &Path) {
    let mut args = vec![
        "export".to_string(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ];
    args.extend(s.st.cli_args());
    for r in reports {
        args.push("--report".into());
        args.push(r.to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = cli(&refs);
    assert!(ok, "export failed: {stdout}{stderr}");
}

fn tool(name: &str) -> Option<PathBuf> {
    outside_tool(name)
}

fn run_ok(tool: &Path, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        tool.display()
    );
    text
}

fn verify(dir: &Path) -> Verdict {
    verify_package(dir, &mut |_, _| {}).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn files_under(root: &Path, rel: &str, out: &mut Vec<String>) {
    for e in fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let child = format!("{rel}/{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            files_under(root, &child, out);
        } else {
            out.push(child);
        }
    }
}

/// What a forger with write access does after tampering: recomputes both
/// manifests and the Payload-Oxum so that BagIt tools see a valid bag.
fn rewrite_manifests(bag: &Path) {
    let mut files = Vec::new();
    files_under(bag, "data", &mut files);
    files.sort();
    let mut manifest = String::new();
    let mut bytes = 0u64;
    for f in &files {
        let b = fs::read(bag.join(f)).unwrap();
        bytes += b.len() as u64;
        manifest.push_str(&format!("{}  {f}\n", hex::encode(Sha256::digest(&b))));
    }
    fs::write(bag.join("manifest-sha256.txt"), &manifest).unwrap();
    let info = fs::read_to_string(bag.join("bag-info.txt")).unwrap();
    let info: String = info
        .lines()
        .map(|l| {
            if l.starts_with("Payload-Oxum:") {
                format!("Payload-Oxum: {bytes}.{}\n", files.len())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(bag.join("bag-info.txt"), &info).unwrap();
    let mut tag = String::new();
    for f in ["bag-info.txt", "bagit.txt", "manifest-sha256.txt"] {
        let b = fs::read(bag.join(f)).unwrap();
        tag.push_str(&format!("{}  {f}\n", hex::encode(Sha256::digest(&b))));
    }
    fs::write(bag.join("tagmanifest-sha256.txt"), tag).unwrap();
}

fn history_path(bag: &Path, r: Uuid) -> PathBuf {
    bag.join(format!("data/reports/{r}/changes.jsonl"))
}

fn history(bag: &Path, r: Uuid) -> Vec<serde_json::Value> {
    fs::read_to_string(history_path(bag, r))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_history(bag: &Path, r: Uuid, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(history_path(bag, r), text).unwrap();
}

fn assert_names(v: &Verdict, file: &str, change: Option<&str>, problem: &str) {
    let hit = v.failures.iter().any(|f| {
        f.file == file
            && change.is_none_or(|c| f.change.map(|x| x.to_string()).as_deref() == Some(c))
            && f.problem.contains(problem)
    });
    assert!(
        hit,
        "expected a finding on {file} (change {change:?}) saying `{problem}`; got:\n{v}"
    );
}

#[test]
fn exported_bag_passes_bagit_qpdf_and_pdftotext_and_verifies() {
    let s = scene();
    let work = tempfile::tempdir().unwrap();
    let bag = work.path().join("bag");
    export(&s, &[s.report], &bag);

    let v = verify(&bag);
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.reports, vec![s.report]);
    assert_eq!(v.devices, 2, "both officers' devices, no one else's");
    assert_eq!(v.media_files, 2);
    // Every change the station holds (one report): both officers' work.
    assert_eq!(v.changes as u64, s.st.counts().changes);
    let (ok, out, _) = cli(&["verify", &bag.to_string_lossy()]);
    assert!(ok && out.starts_with("VERIFIED"), "{out}");

    // The JSON is the officers' report, conflict kept.
    let json: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(bag.join(format!("data/reports/{}/report.json", s.report))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        json["conflicts"][0]["path"],
        "supervisory_federal_officer.badge_number"
    );
    assert_eq!(json["conflicts"][0]["values"].as_array().unwrap().len(), 2);
    assert_eq!(
        json["narrative"],
        "José was pushed to the ground — 中文 kept in JSON."
    );
    // Every photo is in the bag with its bytes.
    for sha in &s.photos {
        let b = fs::read(bag.join(format!("data/media/{sha}"))).unwrap();
        assert_eq!(&hex::encode(Sha256::digest(&b)), sha);
    }

    if let Some(bagit) = tool("bagit.py") {
        run_ok(&bagit, &["--validate", &bag.to_string_lossy()]);
    }
    let pdf = bag.join(format!("data/reports/{}/report.pdf", s.report));
    if let Some(qpdf) = tool("qpdf") {
        run_ok(&qpdf, &["--check", &pdf.to_string_lossy()]);
    }
    if let Some(pdftotext) = tool("pdftotext") {
        let txt = work.path().join("report.txt");
        run_ok(
            &pdftotext,
            &[&pdf.to_string_lossy(), &txt.to_string_lossy()],
        );
        let text = fs::read_to_string(&txt).unwrap();
        assert!(
            text.contains(&s.report.to_string()),
            "report id missing:\n{text}"
        );
        assert!(
            text.contains(BADGE_A) && text.contains(BADGE_B),
            "badges missing:\n{text}"
        );
        for sha in &s.photos {
            assert!(
                text.contains(sha.as_str()),
                "photo hash {sha} missing:\n{text}"
            );
        }
        // Incident time zone and UTC side by side.
        assert!(text.contains("CST (") && text.contains("UTC)"), "{text}");
        assert!(text.contains("Jos\u{e9} was pushed"), "{text}");
    }

    // A second export into the same directory is refused, nothing changed.
    let before = fs::read(bag.join("manifest-sha256.txt")).unwrap();
    let mut args = vec![
        "export".to_string(),
        "--report".into(),
        s.report.to_string(),
        "--out".into(),
        bag.to_string_lossy().into_owned(),
    ];
    args.extend(s.st.cli_args());
    let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && err.contains("not an empty directory"), "{err}");
    assert_eq!(fs::read(bag.join("manifest-sha256.txt")).unwrap(), before);
}

#[test]
fn every_tampering_is_detected_and_named() {
    let s = scene();
    let work = tempfile::tempdir().unwrap();
    let clean = work.path().join("clean");
    export(&s, &[s.report], &clean);
    assert!(verify(&clean).is_ok());
    let r = s.report;
    let hist_rel = format!("data/reports/{r}/changes.jsonl");
    let json_rel = format!("data/reports/{r}/report.json");
    let case = |name: &str| {
        let dir = work.path().join(name);
        copy_dir(&clean, &dir);
        dir
    };
    // The change of A that sets the badge (the one to tamper with).
    let lines = history(&clean, r);
    let badge_line = lines
        .iter()
        .position(|l| {
            l["ops"][0]["target"] == "supervisory_federal_officer.badge_number"
                && l["ops"][0]["value"]["text"] == BADGE_A
        })
        .unwrap();
    let badge_change = lines[badge_line]["change"].as_str().unwrap().to_string();

    // 1. A flipped byte in a photo: the manifest catches it.
    let sha = &s.photos[0];
    let media_rel = format!("data/media/{sha}");
    let bag = case("photo-byte");
    let p = bag.join(&media_rel);
    let mut bytes = fs::read(&p).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(&p, &bytes).unwrap();
    let v = verify(&bag);
    assert_names(&v, &media_rel, None, "manifest-sha256.txt says");
    assert_names(&v, &media_rel, None, "the signed change attaches");
    let (ok, out, _) = cli(&["verify", &bag.to_string_lossy()]);
    assert!(
        !ok && out.starts_with("FAILED") && out.contains(&media_rel),
        "{out}"
    );

    // 2. A flipped byte in a change (a badge digit, inside the signed
    //    bytes), manifests rewritten: the signature catches it.
    let bag = case("change-byte");
    let mut lines = history(&bag, r);
    let body_b64 = lines[badge_line]["body"].as_str().unwrap();
    let mut body = base64::engine::general_purpose::STANDARD
        .decode(body_b64)
        .unwrap();
    let at = body
        .windows(BADGE_A.len())
        .position(|w| w == BADGE_A.as_bytes())
        .unwrap();
    body[at + 5] ^= 0x01; // "4471" -> "5471"
    lines[badge_line]["body"] = base64::engine::general_purpose::STANDARD
        .encode(&body)
        .into();
    write_history(&bag, r, &lines);
    rewrite_manifests(&bag);
    let v = verify(&bag);
    assert_names(
        &v,
        &hist_rel,
        Some(&badge_change),
        "signature does not verify",
    );

    // 3. A flipped byte in the report JSON: the manifest catches it, and
    //    with the manifests rewritten, the replay does.
    let bag = case("json-byte");
    let p = bag.join(&json_rel);
    let original = fs::read_to_string(&p).unwrap();
    // Which of the two concurrent badge numbers won depends on their
    // clocks (the same millisecond falls to the device ids): the flipped
    // one is either the field's value or the kept conflict.
    let flipped_at = if original.find(BADGE_A) < original.find("\"conflicts\"") {
        "differs from the replayed history at `supervisory_federal_officer.badge_number"
    } else {
        "differs from the replayed history at `conflicts.0"
    };
    let text = original.replacen(BADGE_A, "CBP 4471-C", 1);
    fs::write(&p, text).unwrap();
    let v = verify(&bag);
    assert_names(&v, &json_rel, None, "manifest-sha256.txt says");
    rewrite_manifests(&bag);
    let v = verify(&bag);
    assert_eq!(v.failures.len(), 1, "{v}");
    assert_names(&v, &json_rel, None, flipped_at);

    // 4. A change removed from the history, manifests rewritten: the
    //    next change of the same device names the broken chain.
    let bag = case("removed-change");
    let mut lines = history(&bag, r);
    let device = lines[badge_line]["device"].clone();
    let removed = lines
        .iter()
        .position(|l| l["device"] == device && l["seq"].as_u64().unwrap() > 1)
        .unwrap();
    let removed_hash = lines[removed]["hash"].as_str().unwrap().to_string();
    let successor = lines
        .iter()
        .find(|l| l["prev"] == removed_hash.as_str())
        .unwrap()["change"]
        .as_str()
        .unwrap()
        .to_string();
    lines.remove(removed);
    write_history(&bag, r, &lines);
    rewrite_manifests(&bag);
    let v = verify(&bag);
    assert_names(
        &v,
        &hist_rel,
        Some(&successor),
        "missing from the history (chain broken)",
    );

    // 5. A change from a device not in the bag, correctly signed and
    //    chained by its own key, manifests rewritten.
    let bag = case("foreign-device");
    let stranger = DeviceIdentity::generate(person("X", "0", Role::Officer, "D9")).unwrap();
    let forged = Change::sign(
        ChangeBody {
            format: 1,
            report: r,
            device: stranger.device_id(),
            seq: 1,
            hlc: Hlc {
                wall_ms: T0 as u64 + 1_000_000,
                counter: 0,
            },
            wall_clock_ms: T0 + 1_000_000,
            prev: None,
            ops: vec![Operation {
                target: Target::Field("narrative".into()),
                action: Action::Set(Value::Text("Nothing happened.".into())),
                pred: vec![],
            }],
        },
        &stranger.signing_key,
    )
    .unwrap();
    let mut lines = history(&bag, r);
    lines.push(change_line(&forged));
    write_history(&bag, r, &lines);
    rewrite_manifests(&bag);
    let v = verify(&bag);
    assert_names(
        &v,
        &hist_rel,
        Some(&forged.id().to_string()),
        "is not in data/devices.json",
    );

    // 6. A photo swapped for another file under the same name, manifests
    //    rewritten: BagIt tools pass it, the signed hash does not.
    let bag = case("swapped-photo");
    fs::write(bag.join(&media_rel), b"a different picture").unwrap();
    rewrite_manifests(&bag);
    if let Some(bagit) = tool("bagit.py") {
        run_ok(&bagit, &["--validate", &bag.to_string_lossy()]);
    }
    let v = verify(&bag);
    let attaching = s
        .officer
        .store
        .report_changes(r)
        .unwrap()
        .into_iter()
        .find(|c| {
            c.body()
                .ops
                .iter()
                .any(|op| matches!(&op.action, Action::Set(Value::Text(t)) if t == sha))
        })
        .unwrap()
        .id()
        .to_string();
    assert_names(
        &v,
        &media_rel,
        Some(&attaching),
        "the signed change attaches",
    );
    let (ok, out, _) = cli(&["verify", &bag.to_string_lossy()]);
    assert!(!ok && out.contains(&attaching), "{out}");

    // The clean bag still verifies: the cases did not share files.
    assert!(verify(&clean).is_ok());
}

#[test]
fn export_is_refused_to_those_who_may_not_see_the_report() {
    let s = scene();
    let http = s.st.http();
    let get = |cred: Option<&str>, id: &str| {
        let mut req = http.get(format!("{}/v1/reports/{id}/export", s.st.url));
        if let Some(c) = cred {
            req = req.bearer_auth(c);
        }
        req.send().unwrap()
    };
    let id = s.report.to_string();
    assert_eq!(get(None, &id).status(), 401);
    // The author is an officer: packages are for supervisors.
    let officer = s.officer.credential();
    let resp = get(Some(&officer), &id);
    assert_eq!(resp.status(), 403);
    // A supervisor of another unit cannot tell the report exists.
    let other = s.other_supervisor.credential();
    let resp = get(Some(&other), &id);
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "not_found");
    let sup = s.supervisor.credential();
    assert_eq!(get(Some(&sup), "not-a-uuid").status(), 400);
    assert_eq!(get(Some(&sup), &Uuid::new_v4().to_string()).status(), 404);

    // The unit's supervisor gets a tar of the bag, which verifies.
    let resp = get(Some(&sup), &id);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-tar");
    let bytes = resp.bytes().unwrap();
    let work = tempfile::tempdir().unwrap();
    tar::Archive::new(&bytes[..]).unpack(work.path()).unwrap();
    let bag = work.path().join(format!("fieldreport-{id}"));
    let v = verify(&bag);
    assert!(v.is_ok(), "{v}");
    assert_eq!(v.media_files, 2);
    // Nothing is left behind in the station's scratch space.
    let scratch = station_data(&s).join("exports-tmp");
    assert_eq!(fs::read_dir(scratch).unwrap().count(), 0);

    // The console refuses an unknown report clearly.
    let mut args = vec![
        "export".to_string(),
        "--report".into(),
        Uuid::new_v4().to_string(),
        "--out".into(),
        work.path().join("x").to_string_lossy().into_owned(),
    ];
    args.extend(s.st.cli_args());
    let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && err.contains("not found"), "{err}");
    assert!(!work.path().join("x").exists());
}

#[test]
fn a_referral_packs_several_reports_in_one_bag() {
    let s = scene();
    let second = s.officer.store.create_report().unwrap();
    s.officer
        .store
        .set_field(second, "narrative", Value::Text("Second incident.".into()))
        .unwrap();
    s.officer.sync();
    let work = tempfile::tempdir().unwrap();
    let bag = work.path().join("referral");
    export(&s, &[s.report, second], &bag);
    let v = verify(&bag);
    assert!(v.is_ok(), "{v}");
    let mut want = vec![s.report, second];
    want.sort();
    assert_eq!(v.reports, want);
    let info = fs::read_to_string(bag.join("bag-info.txt")).unwrap();
    assert_eq!(info.matches("FieldReport-Report: ").count(), 2);
    if let Some(bagit) = tool("bagit.py") {
        run_ok(&bagit, &["--validate", &bag.to_string_lossy()]);
    }

    // One report dropped whole, every manifest rewritten: the report
    // bag-info.txt names is missing, and verify says so.
    let cut = work.path().join("cut");
    copy_dir(&bag, &cut);
    fs::remove_dir_all(cut.join(format!("data/reports/{second}"))).unwrap();
    rewrite_manifests(&cut);
    let v = verify(&cut);
    assert_names(
        &v,
        &format!("data/reports/{second}"),
        None,
        "named in bag-info.txt (FieldReport-Report) but missing",
    );
}

/// Any single corrupted byte anywhere in the bag (payload, manifest,
/// bag-info, declaration) is found, and the verifier never panics on it.
/// `FR_FLIP_CASES` sets the count (default 300); the seed is printed.
#[test]
fn any_flipped_byte_is_found() {
    let s = scene();
    let work = tempfile::tempdir().unwrap();
    let bag = work.path().join("bag");
    export(&s, &[s.report], &bag);
    let mut files = vec![
        "bagit.txt".to_string(),
        "bag-info.txt".into(),
        "manifest-sha256.txt".into(),
    ];
    files_under(&bag, "data", &mut files);
    files.sort();
    let cases: usize = std::env::var("FR_FLIP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("FR_FLIP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("flip cases: {cases}, seed {seed} (FR_FLIP_SEED to replay)");
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..cases {
        let file = &files[(next() % files.len() as u64) as usize];
        let path = bag.join(file);
        let original = fs::read(&path).unwrap();
        let mut bytes = original.clone();
        let at = (next() % bytes.len() as u64) as usize;
        let mask = (next() % 255 + 1) as u8;
        bytes[at] ^= mask;
        fs::write(&path, &bytes).unwrap();
        let v = verify_package(&bag, &mut |_, _| {}).unwrap();
        assert!(
            !v.is_ok(),
            "case {i} (seed {seed}): byte {at} of {file} xor {mask:#04x} went unnoticed"
        );
        fs::write(&path, &original).unwrap();
    }
    assert!(verify(&bag).is_ok());
}

/// A device revoked after its work reached the station: the package says
/// so and verifies. A receipt moved to after the revocation (manifests
/// rewritten), a missing receipt, and a station database edited to hold a
/// change of the device received at its revocation are each named.
#[test]
fn a_change_received_after_its_devices_revocation_is_named() {
    let s = scene();
    let r = s.report;
    let a = s.officer.store.identity().unwrap().device_id;
    // The phone is lost after it synced: revoked.
    assert!(s.st.rt.block_on(s.st.storage.revoke(a)).unwrap());
    let work = tempfile::tempdir().unwrap();
    let clean = work.path().join("clean");
    export(&s, &[r], &clean);
    let v = verify(&clean);
    assert!(v.is_ok(), "{v}");
    let hist_rel = format!("data/reports/{r}/changes.jsonl");
    let receipts_rel = format!("data/reports/{r}/receipts.jsonl");
    let read_lines = |bag: &Path| -> Vec<serde_json::Value> {
        fs::read_to_string(bag.join(&receipts_rel))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let write_lines = |bag: &Path, lines: &[serde_json::Value]| {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        fs::write(bag.join(&receipts_rel), text).unwrap();
    };
    // One receipt per change, in the history's order.
    let receipts = read_lines(&clean);
    let hist = history(&clean, r);
    assert_eq!(receipts.len(), hist.len());
    for (rc, h) in receipts.iter().zip(&hist) {
        assert_eq!(rc["hash"], h["hash"]);
    }
    // devices.json records the revocation.
    let devices: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(clean.join("data/devices.json")).unwrap())
            .unwrap();
    let revoked_at = devices
        .iter()
        .find(|d| d["device_id"] == a.to_string().as_str())
        .and_then(|d| d["revoked_at"].as_str())
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        .expect("the revoked device's revocation time");
    if let Some(pdftotext) = tool("pdftotext") {
        let pdf = clean.join(format!("data/reports/{r}/report.pdf"));
        let txt = work.path().join("report.txt");
        run_ok(
            &pdftotext,
            &[&pdf.to_string_lossy(), &txt.to_string_lossy()],
        );
        let text = fs::read_to_string(&txt).unwrap();
        assert!(text.contains("Received after revocation"), "{text}");
        assert!(text.contains("Received by the station"), "{text}");
    }
    let case = |name: &str| {
        let dir = work.path().join(name);
        copy_dir(&clean, &dir);
        dir
    };
    let a_prefix = format!("{a}:");

    // 1. One of the device's receipts moved to a second after its
    //    revocation, manifests rewritten: that change is named.
    let bag = case("late-receipt");
    let mut lines = read_lines(&bag);
    let late = lines
        .iter()
        .position(|l| l["change"].as_str().unwrap().starts_with(&a_prefix))
        .unwrap();
    let late_change = lines[late]["change"].as_str().unwrap().to_string();
    lines[late]["received_at"] = (revoked_at + chrono::Duration::seconds(1))
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into();
    write_lines(&bag, &lines);
    rewrite_manifests(&bag);
    let v = verify(&bag);
    assert_names(
        &v,
        &hist_rel,
        Some(&late_change),
        "at or after its device was revoked",
    );
    let (ok, out, _) = cli(&["verify", &bag.to_string_lossy()]);
    assert!(
        !ok && out.starts_with("FAILED") && out.contains(&late_change) && out.contains("revoked"),
        "{out}"
    );

    // 2. A receipt removed: its change is named. The whole file removed:
    //    named too.
    let bag = case("no-receipt");
    let mut lines = read_lines(&bag);
    let gone = lines.remove(0)["change"].as_str().unwrap().to_string();
    write_lines(&bag, &lines);
    rewrite_manifests(&bag);
    assert_names(
        &verify(&bag),
        &hist_rel,
        Some(&gone),
        "has no station receipt time",
    );
    let bag = case("no-receipts");
    fs::remove_file(bag.join(&receipts_rel)).unwrap();
    rewrite_manifests(&bag);
    assert_names(&verify(&bag), &receipts_rel, None, "is missing");

    // 3. The station's database edited to hold a change of the revoked
    //    device, received at the moment of its revocation: the export
    //    refuses to publish the package, naming the change.
    s.officer
        .store
        .set_field(r, "narrative", Value::Text("Nothing happened.".into()))
        .unwrap();
    let forged = s.officer.store.outbox(10).unwrap().pop().unwrap();
    let at = revoked_at.timestamp_millis();
    let counts = s.st.counts();
    match &s.st.database {
        None => {
            let c = rusqlite::Connection::open(station_data(&s).join("station.db")).unwrap();
            fieldreport_core::store::log::insert_change(&c, &forged, true, at).unwrap();
        }
        Some(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let b = forged.body();
            c.execute(
                "INSERT INTO changes (id, hash, device_id, seq, report_id, prev, body, signature, hlc_wall, received_at)
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM changes",
                &[
                    &forged.hash().to_vec(),
                    &b.device,
                    &(b.seq as i64),
                    &b.report,
                    &b.prev.unwrap_or([0; 32]).to_vec(),
                    &forged.bytes(),
                    &forged.signature().to_vec(),
                    &(b.hlc.wall_ms as i64),
                    &at,
                ],
            )
            .unwrap();
        }
    }
    assert_eq!(s.st.counts().changes, counts.changes + 1);
    let out = work.path().join("edited");
    let mut args = vec![
        "export".to_string(),
        "--report".into(),
        r.to_string(),
        "--out".into(),
        out.to_string_lossy().into_owned(),
    ];
    args.extend(s.st.cli_args());
    let (ok, _, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok,
        "an export holding a change received after revocation was published"
    );
    assert!(
        err.contains(&forged.id().to_string())
            && err.contains("at or after its device was revoked"),
        "{err}"
    );
    assert!(!out.exists());
}

/// The bag's tags, as `write_package` reads them back.
fn bag_tag(bag: &Path, key: &str) -> String {
    fs::read_to_string(bag.join("bag-info.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")).map(str::to_string))
        .unwrap()
}

/// A forger's package: the clean bag's report with `drop` left out,
/// rebuilt whole by the package writer (history, receipts, report.json,
/// PDF, manifests all consistent), then given the clean bag's log files.
fn forge_without(clean: &Path, out: &Path, r: Uuid, drop: &str) {
    let changes: Vec<Change> = history(clean, r)
        .iter()
        .filter(|l| l["change"] != drop)
        .map(|l| {
            let b64 = base64::engine::general_purpose::STANDARD;
            let body = b64.decode(l["body"].as_str().unwrap()).unwrap();
            let sig: [u8; 64] = hex::decode(l["signature"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            Change::from_parts(body, sig).unwrap()
        })
        .collect();
    let devices: Vec<DeviceEnrollment> =
        serde_json::from_str(&fs::read_to_string(clean.join("data/devices.json")).unwrap())
            .unwrap();
    let received = fs::read_to_string(clean.join(format!("data/reports/{r}/receipts.jsonl")))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut h = [0u8; 32];
            hex::decode_to_slice(v["hash"].as_str().unwrap(), &mut h).unwrap();
            let at = chrono::DateTime::parse_from_rfc3339(v["received_at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc);
            (h, at)
        })
        .collect();
    let media = fs::read_dir(clean.join("data/media"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.path())
        })
        .collect();
    let input = PackageInput {
        station: bag_tag(clean, "Exporting-Station"),
        exported_at: chrono::DateTime::parse_from_rfc3339(&bag_tag(clean, "Export-Time"))
            .unwrap()
            .with_timezone(&chrono::Utc),
        reports: vec![(r, changes)],
        devices,
        media,
        received,
        log: None,
    };
    write_package(input, out, &mut |_| {}).unwrap();
    fs::create_dir_all(out.join("data/log")).unwrap();
    for f in ["checkpoint.txt", "key.txt", "leaves.txt"] {
        fs::copy(clean.join("data/log").join(f), out.join("data/log").join(f)).unwrap();
    }
    rewrite_manifests(out);
}

#[test]
fn a_dropped_newest_change_an_unlogged_one_and_a_foreign_checkpoint_are_named() {
    let s = scene();
    let work = tempfile::tempdir().unwrap();
    let clean = work.path().join("clean");
    export(&s, &[s.report], &clean);
    let published = NoteVerifier::parse(s.st.get_text("/v1/log/key").trim()).unwrap();
    let with_key = VerifyOptions {
        log_key: Some(published.clone()),
        without_log: false,
        ..Default::default()
    };
    let check =
        |bag: &Path, o: &VerifyOptions| verify_package_with(bag, o, &mut |_, _| {}).unwrap();
    let clean_verdict = check(&clean, &with_key);
    assert!(clean_verdict.is_ok(), "{clean_verdict}");
    let facts = clean_verdict.log.clone().unwrap();
    assert!(facts.published_key && facts.origin == published.name);
    assert!(
        clean_verdict.to_string().contains("Complete:"),
        "{clean_verdict}"
    );
    let r = s.report;
    let hist_rel = format!("data/reports/{r}/changes.jsonl");

    // 1. A device's newest change dropped (no other change names it) and
    //    everything else rewritten to match: the package writer's own
    //    check passes without the log, the log names the entry.
    let lines = history(&clean, r);
    let newest = lines
        .iter()
        .filter(|l| l["ops"][0]["target"] == "narrative")
        .max_by_key(|l| l["seq"].as_u64().unwrap())
        .unwrap();
    let dropped = newest["change"].as_str().unwrap().to_string();
    let hash = newest["hash"].as_str().unwrap();
    assert!(
        lines.iter().all(|l| l["prev"] != hash),
        "a change names the dropped one"
    );
    let cut = work.path().join("tail-cut");
    forge_without(&clean, &cut, r, &dropped);
    let skipped = check(
        &cut,
        &VerifyOptions {
            without_log: true,
            ..Default::default()
        },
    );
    assert!(skipped.is_ok() && skipped.log_skipped, "{skipped}");
    assert!(skipped.to_string().contains("Completeness NOT checked"));
    let v = check(&cut, &with_key);
    assert_eq!(v.failures.len(), 1, "{v}");
    assert_names(
        &v,
        &hist_rel,
        None,
        "that the package does not hold (dropped)",
    );
    let (ok, out, _) = cli(&[
        "verify",
        "--log-key",
        &published.encode(),
        &cut.to_string_lossy(),
    ]);
    assert!(!ok && out.contains("(dropped)"), "{out}");

    // 2. The same, with the entry cut from leaves.txt too: the leaves no
    //    longer give the signed root.
    let leaves_rel = "data/log/leaves.txt";
    let leaves = fs::read_to_string(cut.join(leaves_rel)).unwrap();
    let index: usize = v.failures[0]
        .problem
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let fewer: String = leaves
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    fs::write(cut.join(leaves_rel), &fewer).unwrap();
    rewrite_manifests(&cut);
    assert_names(&check(&cut, &with_key), leaves_rel, None, "holds");

    // 3. ...and a checkpoint of the shorter log signed with another key,
    //    put in the bag with that key: refused against the published key.
    let cp_rel = "data/log/checkpoint.txt";
    let old = SignedCheckpoint::verify(&fs::read(clean.join(cp_rel)).unwrap(), &published).unwrap();
    let other = fieldreport_station::storage::transparency::LogSigner::load_or_create(
        &work.path().join("other.key"),
        Some(&old.origin),
    )
    .unwrap();
    let (n, root) = fieldreport_core::tlog::tree_of_leaves(
        fewer
            .lines()
            .map(|l| base64::engine::general_purpose::STANDARD.decode(l).unwrap())
            .collect::<Vec<_>>()
            .iter()
            .map(Vec::as_slice),
    )
    .unwrap();
    fs::write(cut.join(cp_rel), other.sign(n, root).unwrap().note).unwrap();
    fs::write(
        cut.join("data/log/key.txt"),
        format!("{}\n", other.verifier().encode()),
    )
    .unwrap();
    rewrite_manifests(&cut);
    let v = check(&cut, &with_key);
    assert_names(&v, "data/log/key.txt", None, "not the published");
    assert_names(&v, cp_rel, None, "not signed by the log key");
    // Without the published key the bag's own key is all there is, and
    // the verdict says to compare it.
    let own = check(&cut, &VerifyOptions::default());
    assert!(own.is_ok(), "{own}");
    assert!(own.to_string().contains("NOT ANCHORED"), "{own}");

    // 4. A change the station never logged, added to the history with its
    //    receipt: named as not in the log.
    let extra = work.path().join("inserted");
    copy_dir(&clean, &extra);
    let mut changes = history(&extra, r);
    let a_line = changes
        .iter()
        .filter(|l| l["device"] == changes[0]["device"])
        .max_by_key(|l| l["seq"].as_u64().unwrap())
        .unwrap()
        .clone();
    s.officer
        .store
        .set_field(r, "narrative", Value::Text("Added later.".into()))
        .unwrap();
    let added = s.officer.store.outbox(10).unwrap().pop().unwrap();
    assert_eq!(
        added.device().to_string(),
        a_line["device"].as_str().unwrap()
    );
    changes.push(change_line(&added));
    write_history(&extra, r, &changes);
    let receipts_rel = format!("data/reports/{r}/receipts.jsonl");
    let mut receipts = fs::read_to_string(extra.join(&receipts_rel)).unwrap();
    receipts.push_str(&format!(
        "{}\n",
        fieldreport_core::evidence::package::receipt_line(
            &added,
            chrono::DateTime::from_timestamp_millis(s.st.now_ms()).unwrap()
        )
    ));
    fs::write(extra.join(&receipts_rel), receipts).unwrap();
    rewrite_manifests(&extra);
    let v = check(&extra, &with_key);
    assert_names(
        &v,
        &hist_rel,
        Some(&added.id().to_string()),
        "is not in the station's log",
    );
    assert!(check(&clean, &with_key).is_ok());
}

/// A station with a time-stamp authority and a witness in its config: an
/// export carries the authority's RFC 3161 response over the checkpoint
/// (which `openssl ts -verify` accepts) and the witness's cosignature;
/// `verify` with the authority's root and the witness's key says so, and
/// names a missing or foreign time-stamp, an untrusted authority, a
/// cosignature that does not verify and a quorum not met. An authority
/// that answers for other bytes is refused on receipt, and one that is
/// down leaves the package without a time-stamp (named when required).
#[test]
fn a_time_stamped_and_witnessed_checkpoint_travels_in_the_bag_and_its_faults_are_named() {
    use fieldreport_core::tlog::{CosignerKey, SignedNote};
    use fieldreport_e2e::tsa::{LocalTsa, TsaMode};
    use fieldreport_station::attest::{Attestors, WitnessEndpoint};
    use fieldreport_station::storage::AttestationKind;
    use fieldreport_station::witness::{router, Witness};

    let s = scene();
    let published = NoteVerifier::parse(s.st.get_text("/v1/log/key").trim()).unwrap();
    let tsa = LocalTsa::start(&s.st.rt, "Cook County Test TSA");
    let other_tsa = tempfile::tempdir().unwrap();
    fieldreport_e2e::tsa::make_authority(other_tsa.path(), "Another TSA");
    let witness_dir = tempfile::tempdir().unwrap();
    let witness = std::sync::Arc::new(
        Witness::open(
            witness_dir.path(),
            Some("cook-county-sao"),
            vec![published.clone()],
            s.st.clock.clone(),
        )
        .unwrap(),
    );
    let witness_key = witness.key();
    let listener =
        s.st.rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
    let witness_url = format!("http://{}", listener.local_addr().unwrap());
    let _served = s.st.rt.spawn(async move {
        axum::serve(listener, router(witness)).await.unwrap();
    });
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("station.toml");
    fs::write(
        &config,
        format!(
            "timestamp_url = \"{}\"\ntimestamp_ca = \"{}\"\n\n[[witness]]\nurl = \"{witness_url}\"\nkey = \"{}\"\n",
            tsa.url,
            tsa.ca_pem().display(),
            witness_key.encode()
        ),
    )
    .unwrap();
    let export_with_config = |out: &Path| {
        let mut args = vec![
            "export".to_string(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--out".into(),
            out.to_string_lossy().into_owned(),
            "--report".into(),
            s.report.to_string(),
        ];
        args.extend(s.st.cli_args());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = cli(&refs);
        assert!(ok, "export failed: {stdout}{stderr}");
        format!("{stdout}{stderr}")
    };

    let clean = work.path().join("clean");
    let said = export_with_config(&clean);
    let log = clean.join("data/log");
    assert!(
        log.join("checkpoint.tsr").is_file() && log.join("cosignatures.txt").is_file(),
        "{said}"
    );
    // The outside validator: OpenSSL checks the token against the root.
    let out = Command::new("openssl")
        .args(["ts", "-verify", "-data"])
        .arg(log.join("checkpoint.txt"))
        .arg("-in")
        .arg(log.join("checkpoint.tsr"))
        .arg("-CAfile")
        .arg(tsa.ca_pem())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verification: OK"),
        "openssl ts -verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The station serves the same time-stamp and the cosigned checkpoint.
    let cp = SignedCheckpoint::verify(&fs::read(log.join("checkpoint.txt")).unwrap(), &published)
        .unwrap();
    let served =
        s.st.http()
            .get(format!("{}/v1/log/timestamp?size={}", s.st.url, cp.size))
            .send()
            .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    assert_eq!(
        served.bytes().unwrap().to_vec(),
        fs::read(log.join("checkpoint.tsr")).unwrap()
    );
    let cosigned = s.st.get_text(&format!("/v1/log/cosigned?size={}", cp.size));
    let note = SignedNote::parse(cosigned.as_bytes()).unwrap();
    assert!(note.signed_by(&published) && note.cosigned_by(&witness_key).is_some());

    let full = VerifyOptions {
        log_key: Some(published.clone()),
        timestamp_anchors: tsa.anchors(),
        witnesses: vec![witness_key.clone()],
        witness_quorum: Some(1),
        ..Default::default()
    };
    let check =
        |bag: &Path, o: &VerifyOptions| verify_package_with(bag, o, &mut |_, _| {}).unwrap();
    let v = check(&clean, &full);
    assert!(v.is_ok(), "{v}");
    let facts = v.log.clone().unwrap();
    assert!(facts.timestamp.as_ref().is_some_and(|t| t.trusted));
    assert_eq!(facts.cosigned_by.len(), 1);
    assert!(
        v.to_string().contains("Time-stamped:")
            && v.to_string().contains("Witnessed by cook-county-sao")
    );
    // Without the root and keys, the verdict says what was not checked.
    let plain = check(
        &clean,
        &VerifyOptions {
            log_key: Some(published.clone()),
            ..Default::default()
        },
    );
    assert!(plain.is_ok(), "{plain}");
    assert!(
        plain.to_string().contains("Time-stamp NOT trusted")
            && plain.to_string().contains("1 cosignature(s) NOT checked"),
        "{plain}"
    );
    // The command line, with the root file and the witness key.
    let (ok, stdout, stderr) = cli(&[
        "verify",
        "--log-key",
        &published.encode(),
        "--tsa-cert",
        &tsa.ca_pem().to_string_lossy(),
        "--witness",
        &witness_key.encode(),
        &clean.to_string_lossy(),
    ]);
    assert!(ok && stdout.contains("Witnessed by"), "{stdout}{stderr}");

    let tsr_rel = "data/log/checkpoint.tsr";
    let cosig_rel = "data/log/cosignatures.txt";
    let tampered = |name: &str, edit: &dyn Fn(&Path)| {
        let bag = work.path().join(name);
        copy_dir(&clean, &bag);
        edit(&bag);
        rewrite_manifests(&bag);
        bag
    };
    // 1. The time-stamp removed.
    let bag = tampered("no-tsr", &|b| fs::remove_file(b.join(tsr_rel)).unwrap());
    assert_names(&check(&bag, &full), tsr_rel, None, "is missing");
    // 2. A genuine token of the same authority, over other bytes.
    let bag = tampered("other-tsr", &|b| {
        let q = fieldreport_core::timestamp::request(b"another checkpoint\n", [1; 8]).unwrap();
        fs::write(
            b.join(tsr_rel),
            fieldreport_e2e::tsa::reply(tsa.dir.path(), &q),
        )
        .unwrap();
    });
    assert_names(&check(&bag, &full), tsr_rel, None, "other data");
    // 3. A token from an authority the verifier does not trust.
    let bag = tampered("foreign-tsr", &|b| {
        let q = fieldreport_core::timestamp::request(
            &fs::read(b.join("data/log/checkpoint.txt")).unwrap(),
            [2; 8],
        )
        .unwrap();
        fs::write(
            b.join(tsr_rel),
            fieldreport_e2e::tsa::reply(other_tsa.path(), &q),
        )
        .unwrap();
    });
    assert_names(&check(&bag, &full), tsr_rel, None, "trusted authority");
    // 4. A byte of the token's signature flipped.
    let bag = tampered("flipped-tsr", &|b| {
        let mut t = fs::read(b.join(tsr_rel)).unwrap();
        let n = t.len();
        t[n - 10] ^= 1;
        fs::write(b.join(tsr_rel), t).unwrap();
    });
    assert_names(
        &check(&bag, &full),
        tsr_rel,
        None,
        "is not a good time-stamp",
    );
    // 5. The cosignature altered.
    let bag = tampered("bad-cosig", &|b| {
        let line = fs::read_to_string(b.join(cosig_rel)).unwrap();
        let (head, sig) = line.trim_end().rsplit_once(' ').unwrap();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        let n = raw.len();
        raw[n - 1] ^= 1;
        let forged = format!(
            "{head} {}\n",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        fs::write(b.join(cosig_rel), forged).unwrap();
    });
    let v = check(&bag, &full);
    assert_names(&v, cosig_rel, None, "does not verify with its key");
    assert_names(&v, cosig_rel, None, "fewer than the 1 required");
    // 6. The same line twice counts once; a line of another checkpoint
    //    (the witness's own, of the tree before) does not verify here.
    let bag = tampered("twice", &|b| {
        let line = fs::read_to_string(b.join(cosig_rel)).unwrap();
        fs::write(b.join(cosig_rel), format!("{line}{line}")).unwrap();
    });
    assert!(check(&bag, &full).is_ok());
    let twice_bag = bag;
    // 7. An oversized time-stamp is refused before it is parsed.
    let bag = tampered("huge-tsr", &|b| {
        fs::write(b.join(tsr_rel), vec![0x30; 200_000]).unwrap();
    });
    assert_names(
        &check(&bag, &full),
        tsr_rel,
        None,
        "larger than a time-stamp",
    );
    // 8. A quorum of two named witnesses, one of which never cosigned.
    let absent = CosignerKey::new(
        "inspector-general",
        ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key(),
    )
    .unwrap();
    let v = check(
        &clean,
        &VerifyOptions {
            witnesses: vec![witness_key.clone(), absent.clone()],
            witness_quorum: Some(2),
            ..full.clone()
        },
    );
    assert_eq!(v.failures.len(), 1, "{v}");
    assert_names(
        &v,
        cosig_rel,
        None,
        "1 of the 2 given witnesses, fewer than the 2 required",
    );
    let v = check(
        &twice_bag,
        &VerifyOptions {
            witnesses: vec![witness_key.clone(), absent],
            witness_quorum: Some(2),
            ..full.clone()
        },
    );
    assert_names(
        &v,
        cosig_rel,
        None,
        "1 of the 2 given witnesses, fewer than the 2 required",
    );

    // More changes, then an authority answering for other bytes: refused
    // on receipt (nothing stored); the witness cosigns the larger tree
    // with a consistency proof from the one it cosigned.
    s.officer
        .store
        .set_field(s.report, "narrative", Value::Text("Addendum.".into()))
        .unwrap();
    s.officer.sync();
    tsa.set_mode(TsaMode::OtherData);
    let attestors = Attestors::new(
        Some(tsa.url.clone()),
        tsa.anchors(),
        vec![WitnessEndpoint {
            url: witness_url.clone(),
            key: witness_key.clone(),
        }],
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let round =
        s.st.rt
            .block_on(attestors.attest_newest(s.st.storage.as_ref()))
            .unwrap()
            .unwrap();
    assert!(round.size > cp.size);
    assert_eq!(round.failed.len(), 1, "{round:?}");
    assert!(round.failed[0].1.contains("other data"), "{round:?}");
    assert_eq!(round.got.len(), 1);
    assert_eq!(round.got[0].kind, AttestationKind::Cosignature);
    let kept =
        s.st.rt
            .block_on(s.st.storage.attestations(round.size))
            .unwrap();
    assert!(
        kept.iter().all(|a| a.kind == AttestationKind::Cosignature),
        "{kept:?}"
    );
    // The witness's line of this later tree does not verify over the
    // package's checkpoint.
    let later = round.got[0].body.clone();
    let bag = tampered("other-checkpoint-cosig", &|b| {
        fs::write(b.join(cosig_rel), [later.as_slice(), b"\n"].concat()).unwrap();
    });
    assert_names(
        &check(&bag, &full),
        cosig_rel,
        None,
        "does not verify with its key",
    );
    // The command line refuses a witness named twice.
    let (ok, _, stderr) = cli(&[
        "verify",
        "--witness",
        &witness_key.encode(),
        "--witness",
        &witness_key.encode(),
        &clean.to_string_lossy(),
    ]);
    assert!(!ok && stderr.contains("twice"), "{stderr}");

    // The authority down: the export goes on without a time-stamp, and a
    // verifier that requires one names its absence.
    tsa.set_mode(TsaMode::Down);
    let late = work.path().join("late");
    export_with_config(&late);
    assert!(!late.join(tsr_rel).exists());
    let v = check(&late, &full);
    assert_eq!(v.failures.len(), 1, "{v}");
    assert_names(&v, tsr_rel, None, "is missing");
    tsa.set_mode(TsaMode::Honest);
}
