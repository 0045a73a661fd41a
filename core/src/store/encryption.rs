//! Encryption at rest: opening an encrypted store, changing its key,
//! and wiping it (the key and the database gone, nothing left to open).

use super::*;

impl Store {
    /// Opens an encrypted store (creating it if needed).
    pub fn open_encrypted(dir: impl AsRef<Path>, key: StoreKey) -> Result<Store> {
        Self::open_with(
            dir,
            StoreOptions {
                key: Some(key),
                ..StoreOptions::default()
            },
        )
    }

    /// Whether the store is encrypted at rest.
    pub fn is_encrypted(&self) -> bool {
        lock(&self.key).is_some()
    }

    /// Changes the store key. The database is re-encrypted in one
    /// transaction (a crash leaves it under the old key or the new one);
    /// media stay sealed with the media key, which the database holds.
    pub fn rekey(&self, new_key: StoreKey) -> Result<()> {
        let mut key_slot = lock(&self.key);
        let old_key = key_slot.clone().ok_or(Error::NotEncrypted)?;
        let w = self.writer()?;
        let path = self.dir.join(DB_FILE);
        // Leaving WAL mode needs the only connection: park the readers.
        let mut readers: Vec<_> = self.readers.iter().map(lock).collect();
        for r in readers.iter_mut() {
            **r = Connection::open_in_memory()?;
        }
        let result = (|| -> Result<()> {
            w.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            let mode: String =
                w.conn
                    .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("delete") {
                return Err(Error::Corrupt("cannot leave WAL to rekey".into()));
            }
            let rekeyed = key::rekey(&w.conn, &new_key);
            // Back to WAL whatever happened, under whichever key is current.
            w.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
            rekeyed
        })();
        let current = if result.is_ok() { &new_key } else { &old_key };
        for r in readers.iter_mut() {
            **r = open_reader(&path, Some(current))?;
        }
        result?;
        *key_slot = Some(new_key);
        Ok(())
    }

    /// Signs this device out and removes the store: database, media and
    /// the directory itself. Refused with `UnsyncedWork` while changes or
    /// media have not reached the station, unless `force` is set. After a
    /// wipe every call on this `Store` fails with `Wiped`. Media and
    /// database are encrypted, so once the app also deletes the key from
    /// the platform key store, any copy left in flash is unreadable.
    pub fn wipe(&self, force: bool) -> Result<WipeOutcome> {
        let mut w = self.writer()?;
        let changes: u64 =
            w.conn
                .query_row("SELECT COUNT(*) FROM changes WHERE acked != 1", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
        let media: u64 =
            w.conn
                .query_row("SELECT COUNT(*) FROM media WHERE uploaded = 0", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64;
        if (changes > 0 || media > 0) && !force {
            return Err(Error::UnsyncedWork { changes, media });
        }
        self.wiped.store(true, Ordering::SeqCst);
        for r in &self.readers {
            *lock(r) = Connection::open_in_memory()?;
        }
        w.conn = Connection::open_in_memory()?;
        w.identity = None;
        w.docs = DocCache::default();
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(parent) = self.dir.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(WipeOutcome {
            unsynced_changes: changes,
            unsynced_media: media,
        })
    }
}
