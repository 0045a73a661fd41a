//! Schemathesis (PyPI) generates requests from the station's OpenAPI
//! description, valid and invalid, and sends them to a live station with a
//! supervisor's credential: no response may be a server error (5xx).

use std::process::Command;

use fieldreport_core::store::MediaMeta;
use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

#[test]
fn generated_requests_never_get_a_server_error() {
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
    let out = Command::new(st_bin)
        .current_dir(work.path())
        .args(["run", &format!("{}/v1/openapi.json", st.url)])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", sup.credential()),
        ])
        .args(["--checks", "not_a_server_error"])
        // One worker: on CPython 3.11, hypothesis parsing lambdas in two
        // threads at once trips "AST constructor recursion depth mismatch"
        // (a runtime error in the tool, not a finding about the station).
        .args(["--max-examples", "25", "--workers", "1", "--max-time", "45"])
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

/// The OpenAPI description the station serves is valid for the version it
/// declares, as `openapi-spec-validator` (PyPI) judges it.
#[test]
fn the_openapi_description_is_valid() {
    let Some(validator) = outside_tool("openapi-spec-validator") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, fieldreport_station::api::OPENAPI).unwrap();
    let out = Command::new(validator).arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses station/openapi.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
