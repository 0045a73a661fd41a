//! A Python client generated from the station's served OpenAPI description
//! (`openapi-python-client`, PyPI) reads a live station: devices, reviews,
//! receipts, media status and the public counts. If the description and the
//! handlers disagreed on a path, a parameter or a body, the generated
//! client would fail to call or to parse.

use std::process::Command;

use fieldreport_core::{Role, Value};
use fieldreport_e2e::*;

const SCRIPT: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from fieldreport_client import AuthenticatedClient, Client
from fieldreport_client.api.default import (
    devices, media_status, public_csv, receipts, reviews,
)

url, token, ca, report, sha = sys.argv[2:7]
client = AuthenticatedClient(base_url=url, token=token, verify_ssl=ca)
anonymous = Client(base_url=url, verify_ssl=ca)
out = {}
d = devices.sync(client=client)
out["devices"] = sorted(x.person.star_number for x in d.devices)
out["roles"] = sorted(x.person.role.value if hasattr(x.person.role, "value") else x.person.role for x in d.devices)
rv = reviews.sync(client=client)
out["reviews"] = [[str(x.report_id), str(x.lifecycle.value if hasattr(x.lifecycle, "value") else x.lifecycle), str(x.status.value if hasattr(x.status, "value") else x.status)] for x in rv]
rc = receipts.sync(client=client, id=report)
out["receipts"] = [str(rc.report_id), len(rc.changes), sorted({str(c.device) for c in rc.changes})]
ms = media_status.sync(client=client, sha=sha)
out["media"] = [ms.sha256, ms.received, ms.complete]
csv = public_csv.sync_detailed(client=anonymous)
out["csv"] = [csv.status_code, csv.content.decode().splitlines()[0]]
# Media never sent: nothing held yet, where an upload starts.
fresh = media_status.sync(client=client, sha="0" * 64)
out["unsent_media"] = [fresh.received, fresh.complete]
# Refusals come back as the described error body.
import uuid
refused = receipts.sync_detailed(client=client, id=uuid.uuid4())
out["unknown_report"] = [refused.status_code, refused.parsed.error]
print(json.dumps(out))
"#;

const INCIDENT: i64 = 1_795_186_800_000; // 2026-11-20T15:00:00Z

#[test]
fn a_generated_python_client_reads_a_live_station() {
    let Some(generator) = outside_tool("openapi-python-client") else {
        return;
    };
    let python = generator.with_file_name("python3");
    // The day the test runs on, whatever the real date: five days after
    // the incident, so its 30-day review is due, not overdue.
    let st = TestStation::start_with_clock(fieldreport_station::clock::ManualClock::at(
        INCIDENT + 5 * 86_400_000,
    ));
    let a = st.device(&person("A", "101", Role::Officer, "D9"), None);
    let sup = st.device(&person("S", "900", Role::Supervisor, "D9"), None);
    let r = a.store.create_report().unwrap();
    for (field, value) in [
        ("occurred.start", Value::Time(INCIDENT)),
        ("location.address", Value::Text("W 26th St".into())),
        ("federal_agencies", Value::List(vec!["ice".into()])),
        ("narrative", Value::Text("x".into())),
    ] {
        a.store.set_field(r, field, value).unwrap();
    }
    let sha = a.attach_photo(r, "p.jpg", vec![3u8; 10_000]);
    a.store.submit(r).unwrap();
    a.sync();
    let pushed = a.store.report_changes(r).unwrap().len();

    // The description as the station serves it, not as the crate builds it.
    let work = tempfile::tempdir().unwrap();
    let doc = st.get_text("/v1/openapi.json");
    let spec = work.path().join("openapi.json");
    std::fs::write(&spec, doc).unwrap();
    let gen = Command::new(&generator)
        .current_dir(work.path())
        .args([
            "generate",
            "--meta",
            "none",
            "--output-path",
            "fieldreport_client",
            "--path",
        ])
        .arg(&spec)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&gen.stdout),
        String::from_utf8_lossy(&gen.stderr)
    );
    assert!(gen.status.success(), "openapi-python-client: {said}");
    // The one thing it may skip: it has no parser for a tar archive (the
    // evidence package), which the test does not read.
    for line in said.lines().filter(|l| l.starts_with("WARNING")) {
        assert_eq!(
            line, "WARNING parsing GET /v1/reports/{id}/export within default.",
            "the generator warned: {said}"
        );
    }

    let ca = fieldreport_station::tls::dev_paths(&st.dir.path().join("station")).0;
    let run = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(work.path())
        .arg(&st.url)
        .arg(sup.credential())
        .arg(&ca)
        .arg(r.to_string())
        .arg(&sha)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the generated client failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(out["devices"], serde_json::json!(["101", "900"]));
    assert_eq!(out["roles"], serde_json::json!(["officer", "supervisor"]));
    assert_eq!(
        out["reviews"],
        serde_json::json!([[r.to_string(), "submitted", "due"]])
    );
    assert_eq!(
        out["receipts"],
        serde_json::json!([
            r.to_string(),
            pushed,
            [a.store.identity().unwrap().device_id.to_string()]
        ])
    );
    assert_eq!(out["media"], serde_json::json!([sha, 10_000, true]));
    assert_eq!(
        out["csv"],
        serde_json::json!([200, "month,district,measure,count"])
    );
    assert_eq!(out["unsent_media"], serde_json::json!([0, false]));
    assert_eq!(out["unknown_report"], serde_json::json!([404, "not_found"]));
}
