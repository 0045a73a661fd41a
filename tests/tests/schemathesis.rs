//! Schemathesis (PyPI) generates requests from the station's OpenAPI
//! description (made from the handlers' types), valid and invalid, and
//! sends them to a live station with a supervisor's credential, running
//! all of its checks: no server error, every status and body as described,
//! requests outside the description refused, requests inside it accepted
//! (save what `tests/schemathesis.toml` says no schema can express).

use std::process::Command;

use fieldreport_core::store::MediaMeta;
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

#[test]
fn the_station_and_its_description_agree_on_generated_requests() {
    let Some(st_bin) = outside_tool("schemathesis") else {
        return;
    };
    let st = TestStation::start();
    // Some real data behind the endpoints.
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let r = a.store.create_report().unwrap();
    a.store
        .set_field(r, "narrative", Value::Text("x".into()))
        .unwrap();
    let photo = a.dir().join("p.jpg");
    std::fs::write(&photo, vec![3u8; 10_000]).unwrap();
    a.store
        .attach_media(
            r,
            &photo,
            MediaMeta {
                mime_type: "image/jpeg".into(),
                ..Default::default()
            },
        )
        .unwrap();
    a.sync();
    let before = st.counts();

    let work = tempfile::tempdir().unwrap();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let out = Command::new(st_bin)
        .current_dir(work.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/v1/openapi.json", st.url)])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", sup.credential()),
        ])
        .args(["--checks", "all"])
        // One worker: on CPython 3.11, hypothesis parsing lambdas in two
        // threads at once trips "AST constructor recursion depth mismatch"
        // (a runtime error in the tool, not a finding about the station).
        .args(["--max-examples", "25", "--workers", "1", "--max-time", "45"])
        // A seed from FR_SCHEMATHESIS_SEED (printed), so a finding replays.
        .args(["--seed", &test_seed("FR_SCHEMATHESIS_SEED").to_string()])
        // The event stream never ends by design.
        .args(["--exclude-path", "/v1/events"])
        // Verified against the station's own (self-signed) certificate.
        .arg("--tls-verify")
        .arg(fieldreport_station::tls::dev_paths(&st.dir.path().join("station")).0)
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It tested every operation it selected, and selected all but the
    // event stream.
    let number_after = |label: &str| -> Option<(usize, Option<usize>)> {
        let rest = text.split(label).nth(1)?.split_whitespace().next()?;
        let mut parts = rest.split('/');
        let first = parts.next()?.parse().ok()?;
        Some((first, parts.next().and_then(|n| n.parse().ok())))
    };
    let (selected, total) = number_after("Selected: ").expect("a Selected line");
    let (tested, _) = number_after("Tested: ").expect("a Tested line");
    assert_eq!(
        tested, selected,
        "not every selected operation was tested:\n{text}"
    );
    assert_eq!(Some(selected + 1), total, "{text}");
    assert!(selected >= 15, "{text}");
    // Generated pushes are garbage: none may have changed the log.
    assert_eq!(st.counts().changes, before.changes, "{text}");
    eprintln!(
        "{}",
        text.lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The OpenAPI description the station serves (made from the handlers'
/// types) is valid OpenAPI 3.1, as `openapi-spec-validator` (PyPI) judges it.
#[test]
fn the_served_openapi_description_is_valid() {
    let Some(validator) = outside_tool("openapi-spec-validator") else {
        return;
    };
    let st = TestStation::start();
    let doc = st.get_text("/v1/openapi.json");
    let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(parsed["openapi"], "3.1.0");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &doc).unwrap();
    let out = Command::new(validator).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses the served description:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
