//! Encryption at rest: the SQLCipher store and the sealed media files hold
//! none of a report's words or a photo's bytes, a wrong key is a typed
//! error that changes nothing, rekey and the upgrade of a plain store keep
//! every record, and "sign out and wipe" refuses to lose unsynced work.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use common::{person, tempdir};
use fieldreport_core::store::{MediaMeta, MediaStore, Store, StoreKey, StoreOptions};
use fieldreport_core::{Error, Role, Value};
use proptest::prelude::*;

const WORDS: &[&str] = &["Zebracorn", "tangerine-Oskarsson", "Quillfeather"];

fn key(b: u8) -> StoreKey {
    StoreKey::from_bytes(&[b; 32]).unwrap()
}

fn open(dir: &Path, k: Option<StoreKey>) -> Result<Store, Error> {
    Store::open_with(
        dir,
        StoreOptions {
            key: k,
            ..StoreOptions::default()
        },
    )
}

/// Random bytes that are unlikely to appear anywhere by chance.
fn photo_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Fills a store: one report with the words in its narrative and an agent
/// entry, and one photo. Returns the photo's bytes and hash.
fn fill(store: &Store, dir: &Path) -> (Vec<u8>, String, uuid::Uuid) {
    store
        .create_identity(person("Officer Quillfeather", Role::Officer))
        .unwrap();
    let r = store.create_report().unwrap();
    store
        .set_field(r, "narrative", Value::Text(WORDS.join(" ")))
        .unwrap();
    let photo = photo_bytes(300_000, 7);
    let src = dir.with_extension("photo.jpg");
    std::fs::write(&src, &photo).unwrap();
    let m = store
        .attach_media(
            r,
            &src,
            MediaMeta {
                mime_type: "image/jpeg".into(),
                ..MediaMeta::default()
            },
        )
        .unwrap();
    std::fs::remove_file(&src).unwrap();
    (photo, m.sha256, r)
}

/// The narrative and the photo [`fill`] wrote read back whole.
fn assert_holds_what_fill_wrote(store: &Store, r: uuid::Uuid, sha: &str, photo: &[u8]) {
    assert_eq!(
        store.field_value(r, "narrative").unwrap(),
        Some(Value::Text(WORDS.join(" ")))
    );
    assert_eq!(
        store.media().open_reader(sha).unwrap().read_all().unwrap(),
        photo
    );
}

fn all_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Asserts no file holds a word (in UTF-8) or any 16-byte piece of the
/// photo taken at 64 offsets across it.
fn assert_nothing_readable(dir: &Path, photo: &[u8]) {
    let files = all_files(dir);
    assert!(files.keys().any(|k| k.starts_with("media/")), "{files:?}");
    for (name, bytes) in &files {
        for w in WORDS {
            assert!(!contains(bytes, w.as_bytes()), "{name} holds a report word");
        }
        for i in 0..64 {
            let at = i * (photo.len() - 16) / 63;
            assert!(
                !contains(bytes, &photo[at..at + 16]),
                "{name} holds photo bytes at {at}"
            );
        }
    }
}

#[test]
fn encrypted_store_and_media_hold_no_plain_words_or_photo_bytes() {
    let d = tempdir();
    let dir = d.path().join("store");
    let (photo, sha, r) = {
        let store = open(&dir, Some(key(1))).unwrap();
        assert!(store.is_encrypted() && store.media().is_encrypted());
        let filled = fill(&store, &dir);
        // Reads give the plain bytes back.
        let back = store
            .media()
            .open_reader(&filled.1)
            .unwrap()
            .read_all()
            .unwrap();
        assert_eq!(back, filled.0);
        filled
    };
    // With the WAL still holding pages (no clean checkpoint) and after.
    assert_nothing_readable(&dir, &photo);
    let store = open(&dir, Some(key(1))).unwrap();
    assert_holds_what_fill_wrote(&store, r, &sha, &photo);
    drop(store);
    assert_nothing_readable(&dir, &photo);

    // Plain SQLite (what the stock sqlite3 is) cannot read it.
    let plain = rusqlite::Connection::open(dir.join("fieldreport.db")).unwrap();
    let err = plain
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_err();
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase)
    );
    // And the stock command-line tool, when this machine has it (CI does).
    if let Ok(out) = std::process::Command::new("sqlite3")
        .arg(dir.join("fieldreport.db"))
        .arg("SELECT count(*) FROM sqlite_master;")
        .output()
    {
        assert!(!out.status.success(), "stock sqlite3 opened the store");
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains("not a database"), "{msg}");
    } else if std::env::var_os("FR_REQUIRE_TOOLS").is_some() {
        panic!("sqlite3 is not installed");
    }
}

#[test]
fn wrong_or_missing_key_is_a_typed_error_and_changes_nothing() {
    let d = tempdir();
    let dir = d.path().join("store");
    {
        let store = open(&dir, Some(key(1))).unwrap();
        fill(&store, &dir);
    }
    let before = all_files(&dir);
    assert!(matches!(open(&dir, Some(key(2))), Err(Error::WrongKey)));
    assert!(matches!(open(&dir, None), Err(Error::WrongKey)));
    let after = all_files(&dir);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "a refused open changed {name}");
    }
    // Bad keys are refused before any file is touched.
    assert!(matches!(
        StoreKey::from_bytes(&[1; 31]),
        Err(Error::BadKey { .. })
    ));
    assert!(matches!(
        StoreKey::from_bytes(&[0; 32]),
        Err(Error::BadKey { .. })
    ));
    // Nothing of the key appears in its Debug or the error's text.
    assert_eq!(format!("{:?}", key(0xAB)), "StoreKey(..)");
    assert!(!Error::WrongKey.to_string().contains("ab"));
    open(&dir, Some(key(1))).unwrap();
}

/// A crash leaves committed changes in the WAL only; a wrong key tried on
/// that store must not checkpoint or delete it.
#[test]
fn wrong_key_after_a_crash_leaves_the_wal_alone() {
    let d = tempdir();
    let dir = d.path().join("store");
    let crashed = d.path().join("crashed");
    let store = open(&dir, Some(key(1))).unwrap();
    let (_, _, r) = fill(&store, &dir);
    // What a power cut would leave: the files as they are while open.
    std::fs::create_dir_all(&crashed).unwrap();
    for (name, bytes) in all_files(&dir) {
        let p = crashed.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    drop(store);
    let wal = std::fs::read(crashed.join("fieldreport.db-wal")).unwrap();
    assert!(!wal.is_empty(), "the changes should still be in the WAL");
    let before = all_files(&crashed);
    for _ in 0..2 {
        assert!(matches!(open(&crashed, Some(key(2))), Err(Error::WrongKey)));
        assert!(matches!(open(&crashed, None), Err(Error::WrongKey)));
    }
    let after = all_files(&crashed);
    for name in ["fieldreport.db", "fieldreport.db-wal"] {
        assert!(after.get(name) == before.get(name), "{name} changed");
    }
    let store = open(&crashed, Some(key(1))).unwrap();
    assert_eq!(
        store.field_value(r, "narrative").unwrap(),
        Some(Value::Text(WORDS.join(" ")))
    );
}

#[test]
fn rekey_keeps_every_record_and_retires_the_old_key() {
    let d = tempdir();
    let dir = d.path().join("store");
    let store = open(&dir, Some(key(1))).unwrap();
    let (photo, sha, r) = fill(&store, &dir);
    store.rekey(key(3)).unwrap();
    // The open store keeps working, readers included, on the new key.
    store
        .set_field(r, "location.address", Value::Text("after rekey".into()))
        .unwrap();
    assert_eq!(
        store.report(r).unwrap().location.address.as_deref(),
        Some("after rekey")
    );
    drop(store);
    assert!(matches!(open(&dir, Some(key(1))), Err(Error::WrongKey)));
    let store = open(&dir, Some(key(3))).unwrap();
    assert_eq!(store.change_count().unwrap(), 4);
    assert_eq!(
        store.media().open_reader(&sha).unwrap().read_all().unwrap(),
        photo
    );
    assert_eq!(store.verify_integrity().unwrap(), 4);
    // A plain store has no key to change.
    let plain = open(&d.path().join("plain"), None).unwrap();
    assert!(matches!(plain.rekey(key(4)), Err(Error::NotEncrypted)));
}

#[test]
fn a_plain_store_opened_with_a_key_is_encrypted_in_place_with_nothing_lost() {
    let d = tempdir();
    let dir = d.path().join("store");
    let (photo, sha, r) = {
        let store = open(&dir, None).unwrap();
        fill(&store, &dir)
    };
    // The plain store does hold the words: the search below is real.
    let plain_files = all_files(&dir);
    assert!(plain_files
        .values()
        .any(|b| contains(b, WORDS[0].as_bytes())));
    let store = open(&dir, Some(key(5))).unwrap();
    assert_holds_what_fill_wrote(&store, r, &sha, &photo);
    assert_eq!(store.verify_integrity().unwrap(), 3);
    drop(store);
    assert_nothing_readable(&dir, &photo);
    assert!(matches!(open(&dir, None), Err(Error::WrongKey)));
}

#[test]
fn wipe_refuses_unsynced_work_unless_forced() {
    let d = tempdir();
    let dir = d.path().join("store");
    let store = open(&dir, Some(key(1))).unwrap();
    let (_, sha, r) = fill(&store, &dir);
    match store.wipe(false) {
        Err(Error::UnsyncedWork { changes, media }) => {
            assert_eq!((changes, media), (3, 1));
        }
        other => panic!("{other:?}"),
    }
    // Refused means untouched.
    assert!(store.report(r).is_ok());
    // Once everything is at the station, a plain wipe goes through.
    let ids: Vec<_> = store.outbox(100).unwrap().iter().map(|c| c.id()).collect();
    store.mark_acked(&ids).unwrap();
    match store.wipe(false) {
        Err(Error::UnsyncedWork { changes, media }) => assert_eq!((changes, media), (0, 1)),
        other => panic!("{other:?}"),
    }
    store.mark_media_uploaded(&sha).unwrap();
    let out = store.wipe(false).unwrap();
    assert_eq!((out.unsynced_changes, out.unsynced_media), (0, 0));
    assert!(!dir.exists());
    assert!(matches!(store.report(r), Err(Error::Wiped)));
    assert!(matches!(store.create_report(), Err(Error::Wiped)));
    assert!(store.identity().is_none());

    // Forced, with unsynced work: gone, and the count of what was lost.
    let dir2 = d.path().join("store2");
    let store = open(&dir2, Some(key(1))).unwrap();
    fill(&store, &dir2);
    let out = store.wipe(true).unwrap();
    assert_eq!((out.unsynced_changes, out.unsynced_media), (3, 1));
    assert!(!dir2.exists());
    // The directory can hold a new store afterwards.
    drop(store);
    let again = open(&dir2, Some(key(2))).unwrap();
    assert_eq!(again.change_count().unwrap(), 0);
}

fn sealed_store(dir: &Path) -> MediaStore {
    let k = fieldreport_core::store::MediaKey::from_bytes(&[9; 32]).unwrap();
    MediaStore::open_with(dir.to_path_buf(), Some(k)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any size, any seek: the plain bytes come back; any flipped byte,
    /// truncation or extension of the sealed file fails authentication.
    #[test]
    fn sealed_media_round_trip_and_tamper(
        len in prop_oneof![0usize..3, 65_530usize..65_545, 0usize..300_000],
        seek in 0usize..300_000,
        flip in any::<prop::sample::Index>(),
    ) {
        let d = tempdir();
        let media = sealed_store(d.path());
        let bytes = photo_bytes(len, len as u64 + 11);
        let mut at = 0;
        let mut read = |buf: &mut [u8]| {
            let n = buf.len().min(bytes.len() - at);
            buf[..n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            Ok(n)
        };
        let stored = media.ingest_from(&mut read).unwrap();
        let mut reader = media.open_reader(&stored.sha256).unwrap();
        prop_assert_eq!(reader.size(), len as u64);
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        prop_assert!(back == bytes);
        let from = seek.min(len);
        reader.seek(SeekFrom::Start(from as u64)).unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).unwrap();
        prop_assert!(tail[..] == bytes[from..]);

        let path = media.path_of(&stored.sha256);
        let sealed = std::fs::read(&path).unwrap();
        let mut tampered = sealed.clone();
        let i = flip.index(tampered.len());
        tampered[i] ^= 0x20;
        std::fs::write(&path, &tampered).unwrap();
        let r = media.open_reader(&stored.sha256).and_then(|r| r.read_all());
        prop_assert!(matches!(r, Err(Error::Corrupt(_))), "flipped byte {} read back", i);
        for cut in [sealed.len() - 1, sealed.len().saturating_sub(65_552), 16] {
            if cut >= sealed.len() || cut < 15 { continue; }
            std::fs::write(&path, &sealed[..cut]).unwrap();
            let r = media.open_reader(&stored.sha256).and_then(|r| r.read_all());
            prop_assert!(r.is_err(), "truncated to {} read back", cut);
        }
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0; 17]);
        std::fs::write(&path, &longer).unwrap();
        let r = media.open_reader(&stored.sha256).and_then(|r| r.read_all());
        prop_assert!(r.is_err(), "extended file read back");
    }
}
