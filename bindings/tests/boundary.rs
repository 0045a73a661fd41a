//! The boundary itself, from Rust: error mapping, panics, and that error
//! messages never carry what the officer typed.

use fieldreport_core::{Person, Role};
use fieldreport_ffi::{FieldReportError, FieldReportStore, FieldValue};

#[test]
fn panics_become_internal_errors() {
    assert!(matches!(
        fieldreport_ffi::debug_trigger_panic(),
        Err(FieldReportError::Internal)
    ));
}

#[test]
fn bad_input_is_typed_and_quotes_no_values() {
    let dir = tempfile::tempdir().unwrap();
    let key = fieldreport_ffi::generate_store_key().unwrap();
    assert_eq!(key.len(), 32);
    let store =
        FieldReportStore::open(dir.path().join("s").to_string_lossy().into(), key.clone()).unwrap();
    assert!(matches!(
        store.create_report(),
        Err(FieldReportError::NotEnrolled { .. })
    ));
    assert!(matches!(
        store.report("nope".into()),
        Err(FieldReportError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.list_reports(Some("bogus".into()), 0, None),
        Err(FieldReportError::InvalidInput { .. })
    ));
    assert!(matches!(
        FieldReportStore::open(String::new(), key.clone()),
        Err(FieldReportError::InvalidInput { .. })
    ));
    drop(store);
    // A short key is bad input; a wrong key is `WrongKey`.
    let s_path: String = dir.path().join("s").to_string_lossy().into();
    assert!(matches!(
        FieldReportStore::open(s_path.clone(), vec![1; 16]),
        Err(FieldReportError::InvalidInput { .. })
    ));
    assert!(matches!(
        FieldReportStore::open(s_path, vec![1; 32]),
        Err(FieldReportError::WrongKey)
    ));

    // An identity as enrollment would leave it.
    let path = dir.path().join("s");
    fieldreport_core::Store::open_encrypted(
        &path,
        fieldreport_core::store::StoreKey::from_bytes(&key).unwrap(),
    )
    .unwrap()
    .create_identity(Person {
        name: "Officer T. Test".into(),
        star_number: "1".into(),
        role: Role::Officer,
        unit: "D9".into(),
    })
    .unwrap();
    let store = FieldReportStore::open(path.to_string_lossy().into(), key).unwrap();
    let text = |s: &str| FieldValue::Text { value: s.into() };
    let missing = "00000000-0000-4000-8000-000000000000".to_string();
    let e = store
        .set_field(
            missing,
            "supervisory_federal_officer.name".into(),
            text("Agent Maria Quintero-Lopez"),
        )
        .unwrap_err();
    assert!(matches!(e, FieldReportError::NotFound { .. }), "{e:?}");
    let r = store.create_report().unwrap();
    let long = "Quintero ".repeat(10_000);
    for (path, value) in [
        ("narrative", text(&long)),
        ("no_such_field", text("Agent Maria Quintero-Lopez")),
        ("occurred.start", text("Agent Maria Quintero-Lopez")),
    ] {
        let e = store.set_field(r.clone(), path.into(), value).unwrap_err();
        assert!(matches!(e, FieldReportError::InvalidInput { .. }), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("Quintero"), "{e:?}");
    }
    let e = store.submit(r.clone()).unwrap_err();
    assert!(
        matches!(&e, FieldReportError::MissingRequired { fields } if fields.contains(&"occurred.start".to_string())),
        "{e:?}"
    );
    // Nothing refused was written.
    assert_eq!(store.field(r.clone(), "narrative".into()).unwrap(), None);
    let e = store
        .set_field(
            r,
            "no_such_field".into(),
            text("Agent Maria Quintero-Lopez"),
        )
        .unwrap_err();
    assert!(matches!(e, FieldReportError::InvalidInput { .. }), "{e:?}");
    // A name that is not a media hash never reaches the file system.
    assert!(matches!(
        store.read_media("../../etc/passwd".into(), 0, 10),
        Err(FieldReportError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.read_media("ab".repeat(32), 0, 10),
        Err(FieldReportError::NotFound { .. })
    ));
    // Wipe refuses while the report is unsynced, then forced, and the
    // object reports `Wiped` from then on.
    assert!(matches!(
        store.wipe(false),
        Err(FieldReportError::UnsyncedWork {
            changes: 1,
            media: 0
        })
    ));
    let out = store.wipe(true).unwrap();
    assert_eq!(out.unsynced_changes, 1);
    assert!(!path.exists());
    assert!(matches!(
        store.create_report(),
        Err(FieldReportError::Wiped)
    ));
}

#[test]
fn required_witnesses_are_checked_before_they_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = fieldreport_ffi::generate_store_key().unwrap();
    let store = FieldReportStore::open(dir.path().join("s").to_string_lossy().into(), key).unwrap();
    let sk = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let witness = fieldreport_core::tlog::CosignerKey::new("sao.example/w", sk.verifying_key())
        .unwrap()
        .encode();
    assert!(store.witness_status().unwrap().is_none());
    for (keys, quorum) in [
        (vec!["not a key".to_string()], 1),
        (vec![witness.clone()], 2),
        (vec![witness.clone(), witness.clone()], 1),
    ] {
        let e = store.set_required_witnesses(keys, quorum).unwrap_err();
        assert!(matches!(e, FieldReportError::InvalidInput { .. }), "{e:?}");
        assert!(store.witness_status().unwrap().is_none());
    }
    store
        .set_required_witnesses(vec![format!("{witness}\n")], 1)
        .unwrap();
    let s = store.witness_status().unwrap().unwrap();
    assert_eq!((s.quorum, s.witnessed_size, s.receipts_awaiting), (1, 0, 0));
    // Quorum 0: none required again.
    store.set_required_witnesses(Vec::new(), 0).unwrap();
    assert!(store.witness_status().unwrap().is_none());
}
