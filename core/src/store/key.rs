//! Encryption at rest for a device store: the app's key (from Android
//! Keystore or the iOS Keychain) opens the SQLCipher database; the database
//! holds a random media key that seals the media files (`media.rs`).
//!
//! The key is used raw (`x'…'`), so opening costs no key derivation: the
//! platform key store already guards it. A wrong key is detected before
//! anything is written, and the store is left exactly as it was.

use std::path::Path;

use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// 32 bytes supplied by the app. Never logged, zeroed when dropped.
#[derive(Clone)]
pub struct StoreKey(Zeroizing<[u8; 32]>);

impl StoreKey {
    pub const LEN: usize = 32;

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::BadKey {
            reason: "a store key is exactly 32 bytes",
        })?;
        if arr.iter().all(|b| *b == 0) {
            return Err(Error::BadKey {
                reason: "an all-zero key is refused",
            });
        }
        Ok(StoreKey(Zeroizing::new(arr)))
    }

    /// A new random key (for apps; tests use `from_bytes`).
    pub fn generate() -> Result<Self> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
        Ok(StoreKey(k))
    }

    /// The raw bytes, for the app to wrap and keep.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// The SQLCipher pragma value: a raw key, no passphrase derivation.
    fn pragma_value(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("x'{}'", hex::encode(self.0.as_ref())))
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// True when SQLCipher is compiled in.
pub const fn encryption_available() -> bool {
    cfg!(feature = "sqlcipher")
}

/// Applies `key` to a freshly opened connection (before any other use).
pub(crate) fn apply(conn: &Connection, key: &StoreKey) -> Result<()> {
    if !encryption_available() {
        return Err(Error::EncryptionUnavailable);
    }
    let value = key.pragma_value();
    conn.pragma_update(None, "key", value.as_str())?;
    Ok(())
}

/// Changes the key of an open connection that is not in WAL mode.
pub(crate) fn rekey(conn: &Connection, key: &StoreKey) -> Result<()> {
    let value = key.pragma_value();
    conn.pragma_update(None, "rekey", value.as_str())?;
    Ok(())
}

/// Reads the schema, which fails on a wrong key (the first page does not
/// decrypt) and maps that failure to `WrongKey`.
pub(crate) fn check_readable(conn: &Connection) -> Result<()> {
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(e) if is_not_a_database(&e) => Err(Error::WrongKey),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn is_not_a_database(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase)
}

/// Whether the file is a plain (unencrypted) SQLite database.
pub(crate) fn is_plain_sqlite(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut head = [0u8; 16];
    match f.read_exact(&mut head) {
        Ok(()) => Ok(&head == b"SQLite format 3\0"),
        // Shorter than a header: an empty file SQLite will initialise.
        Err(_) => Ok(false),
    }
}

/// Encrypts a plain store (from a build before encryption) under `key`:
/// the database is exported into a new encrypted file, which replaces the
/// plain one only once it is complete and on disk. A crash before the
/// rename leaves the plain store as it was; after it, the encrypted one.
pub(crate) fn encrypt_plain_store(path: &Path, key: &StoreKey) -> Result<()> {
    if !encryption_available() {
        return Err(Error::EncryptionUnavailable);
    }
    let tmp = path.with_extension("db-encrypting");
    let _ = std::fs::remove_file(&tmp);
    {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let tmp_str = tmp
            .to_str()
            .ok_or_else(|| Error::Corrupt("store path is not UTF-8".into()))?;
        let value = key.pragma_value();
        conn.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            rusqlite::params![tmp_str, value.as_str()],
        )?;
        conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        conn.pragma_update(Some("encrypted"), "user_version", version)?;
        conn.execute_batch("DETACH DATABASE encrypted")?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
