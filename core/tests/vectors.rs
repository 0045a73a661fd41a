//! Canonical-encoding test vectors: change body → bytes → SHA-256 → Ed25519
//! signature. If the format drifts (a serde attribute, a postcard upgrade, a
//! reordered field), these fail. Regenerate only for a deliberate format
//! change, with a new FORMAT_VERSION: `FR_WRITE_VECTORS=1 cargo test --test vectors`.

use fieldreport_core::crdt::{Action, ChangeBody, Hlc, OpId, Operation, Target};
use fieldreport_core::evidence::DeviceIdentity;
use fieldreport_core::{Change, Person, Role, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Vector {
    name: String,
    body_hex: String,
    sha256_hex: String,
    signature_hex: String,
}

fn identity() -> DeviceIdentity {
    DeviceIdentity::from_secret(
        Uuid::from_u128(0x0123_4567_89ab_4def_8123_4567_89ab_cdef),
        [7u8; 32],
        Person {
            name: "Vector".into(),
            star_number: "1".into(),
            role: Role::Officer,
            unit: "U".into(),
        },
    )
}

fn bodies() -> Vec<(&'static str, ChangeBody)> {
    let id = identity();
    let report = Uuid::from_u128(0xfeed_beef_0000_4000_8000_0000_0000_0001);
    let entry = Uuid::from_u128(0xfeed_beef_0000_4000_8000_0000_0000_0002);
    let base = |seq, prev, ops| ChangeBody {
        format: 1,
        report,
        device: id.device_id(),
        seq,
        hlc: Hlc {
            wall_ms: 1_764_000_000_000 + seq,
            counter: seq as u32,
        },
        wall_clock_ms: 1_764_000_000_000,
        prev,
        ops,
    };
    let op = |target, action, pred| Operation {
        target,
        action,
        pred,
    };
    vec![
        (
            "create",
            base(
                1,
                None,
                vec![op(
                    Target::Field("lifecycle.state".into()),
                    Action::Set(Value::Text("draft".into())),
                    vec![],
                )],
            ),
        ),
        (
            "all_value_kinds",
            base(
                2,
                Some([0xab; 32]),
                vec![
                    op(
                        Target::Field("narrative".into()),
                        Action::Set(Value::Null),
                        vec![OpId {
                            device: id.device_id(),
                            seq: 1,
                            index: 0,
                        }],
                    ),
                    op(
                        Target::Field("body_camera.recording".into()),
                        Action::Set(Value::Bool(true)),
                        vec![],
                    ),
                    op(
                        Target::Field("location.latitude".into()),
                        Action::Set(Value::Float(41.8781)),
                        vec![],
                    ),
                    op(
                        Target::Field("occurred.start".into()),
                        Action::Set(Value::Time(1_764_000_000_000)),
                        vec![],
                    ),
                    op(
                        Target::Field("cpd_units".into()),
                        Action::Set(Value::List(vec!["1234".into(), "5678".into()])),
                        vec![],
                    ),
                ],
            ),
        ),
        (
            "entries",
            base(
                3,
                Some([0xcd; 32]),
                vec![
                    op(
                        Target::Entry {
                            collection: "force".into(),
                            entry,
                        },
                        Action::Add,
                        vec![],
                    ),
                    op(
                        Target::EntryField {
                            collection: "media".into(),
                            entry,
                            field: "size".into(),
                        },
                        Action::Set(Value::Int(2_000_000)),
                        vec![],
                    ),
                    op(
                        Target::Entry {
                            collection: "witnesses".into(),
                            entry,
                        },
                        Action::Remove,
                        vec![OpId {
                            device: id.device_id(),
                            seq: 2,
                            index: 3,
                        }],
                    ),
                ],
            ),
        ),
    ]
}

#[test]
fn canonical_encoding_matches_committed_vectors() {
    let id = identity();
    let got: Vec<Vector> = bodies()
        .into_iter()
        .map(|(name, body)| {
            let c = Change::sign(body, &id.signing_key).unwrap();
            c.verify(&id.signing_key.verifying_key()).unwrap();
            Vector {
                name: name.into(),
                body_hex: hex::encode(c.bytes()),
                sha256_hex: hex::encode(c.hash()),
                signature_hex: hex::encode(c.signature()),
            }
        })
        .collect();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/change_vectors.json");
    if std::env::var("FR_WRITE_VECTORS").is_ok() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Vec<Vector> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(got, want);
    // And the committed bytes decode back to the same change.
    for v in &want {
        let c = Change::from_parts(
            hex::decode(&v.body_hex).unwrap(),
            hex::decode(&v.signature_hex).unwrap().try_into().unwrap(),
        )
        .unwrap();
        assert_eq!(hex::encode(c.hash()), v.sha256_hex);
    }
}
