//! An online, consistent copy of a store directory while it is in use
//! (the station backs up the dashboard's signing stores with it): the
//! database through SQLite's backup API under one read transaction, so
//! the copy is one committed state; the media files, which never change
//! once in place, as they are.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::{key, open_reader, StoreKey, DB_FILE};
use crate::error::Result;

/// Copies the store in `src` (opened with `key`, as the store is) into
/// `dest`, which must not hold a store yet. The copy opens with the same
/// key. Returns the number of media files copied.
pub fn copy_store(src: &Path, key: Option<&StoreKey>, dest: &Path) -> Result<u64> {
    fs::create_dir_all(dest)?;
    let target = dest.join(DB_FILE);
    if target.exists() {
        return Err(crate::Error::Io(std::io::ErrorKind::AlreadyExists));
    }
    let from = open_reader(&src.join(DB_FILE), key)?;
    let mut to = Connection::open(&target)?;
    if let Some(k) = key {
        key::apply(&to, k)?;
    }
    {
        // Every page in one step: one read transaction, one state.
        let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
        backup.run_to_completion(std::ffi::c_int::MAX, Duration::ZERO, None)?;
    }
    to.pragma_update(None, "journal_mode", "DELETE")?;
    drop(to);
    fs::File::open(&target)?.sync_all()?;
    let mut copied = 0;
    copy_files(&src.join("media"), &dest.join("media"), &mut copied)?;
    fs::File::open(dest)?.sync_all()?;
    Ok(copied)
}

/// Copies the files under `from` into `to` (a store's media: sealed
/// files by hash; its `tmp` holds unfinished ingests and is left out).
fn copy_files(from: &Path, to: &Path, copied: &mut u64) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name != "tmp" {
                copy_files(&entry.path(), &to.join(&name), copied)?;
            }
        } else if kind.is_file() {
            fs::copy(entry.path(), to.join(&name))?;
            fs::File::open(to.join(&name))?.sync_all()?;
            *copied += 1;
        }
    }
    fs::File::open(to)?.sync_all()?;
    Ok(())
}

#[cfg(all(test, feature = "sqlcipher"))]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOptions};
    use crate::{Person, Role, Value};

    #[test]
    fn an_open_encrypted_store_copies_whole_and_opens_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::generate().unwrap();
        let opts = || StoreOptions {
            key: Some(StoreKey::from_bytes(&key.to_vec()).unwrap()),
            ..Default::default()
        };
        let src = dir.path().join("src");
        let store = Store::open_with(&src, opts()).unwrap();
        store
            .create_identity(Person {
                name: "Copyann".into(),
                star_number: "1".into(),
                role: Role::Officer,
                unit: "D1".into(),
            })
            .unwrap();
        let r = store.create_report().unwrap();
        store
            .set_field(r, "narrative", Value::Text("kept".into()))
            .unwrap();
        let photo = dir.path().join("p.jpg");
        std::fs::write(&photo, vec![7u8; 70_000]).unwrap();
        let sha = store
            .attach_media(
                r,
                &photo,
                crate::store::MediaMeta {
                    mime_type: "image/jpeg".into(),
                    ..Default::default()
                },
            )
            .unwrap()
            .sha256;

        // While the store is open and in use.
        let dest = dir.path().join("copy");
        assert_eq!(copy_store(&src, Some(&key), &dest).unwrap(), 1);
        store
            .set_field(r, "narrative", Value::Text("after the copy".into()))
            .unwrap();
        // Not over an existing copy.
        assert!(copy_store(&src, Some(&key), &dest).is_err());

        let copy = Store::open_with(&dest, opts()).unwrap();
        assert_eq!(copy.verify_integrity().unwrap(), 3);
        assert_eq!(
            copy.report_changes(r).unwrap().len(),
            3,
            "not the edit after it"
        );
        assert_eq!(
            copy.media().open_reader(&sha).unwrap().read_all().unwrap(),
            vec![7u8; 70_000]
        );
        drop(copy);
        // Sealed like the original: no key, no store.
        assert!(matches!(
            Store::open_with(&dest, StoreOptions::default()),
            Err(crate::Error::WrongKey)
        ));
    }
}
