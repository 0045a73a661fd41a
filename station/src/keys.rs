//! The station key: 32 random bytes kept apart from the database, in a
//! `0600` file (`<data>/keys/station.key`, made on first use, or the file
//! the configuration names with `station_key`). It seals (AES-256-GCM, the
//! RustCrypto `aes-gcm` crate) what the station keeps but must not hold in
//! the clear: each dashboard account's TOTP secret and the SQLCipher key
//! of its signing store. A dump of the database alone therefore yields no
//! second factor and no signing key.
//!
//! Sealed values are `FRS1 || nonce (12) || ciphertext || tag (16)`, with
//! a random nonce and the value's purpose and owner as associated data, so
//! a sealed value copied into another account's row does not open.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

use crate::error::{Result, StationError};
use crate::storage::StationStorage;

const MAGIC: &[u8; 4] = b"FRS1";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// The station setting holding a value sealed with the station key, which
/// ties a database to its key.
const CHECK_SETTING: &str = "station_key_check";
const CHECK_CONTEXT: &[u8] = b"fieldreport station key check";
const CHECK_PLAIN: &[u8] = b"the key this database was sealed with";

/// Ties `key` to `storage`: the first key a database meets is recorded
/// (as a value sealed with it), and any other key is refused from then on
/// with a clear error, instead of failing every sign-in later. A database
/// from before the check is bound only if `earlier`, one of its sealed
/// values (context, sealed bytes), opens with `key`.
pub async fn bind(
    key: &StationKey,
    storage: &dyn StationStorage,
    earlier: Option<(&[u8], &[u8])>,
) -> Result<()> {
    let wrong = || {
        StationError::Unavailable(
            "the station key is not the one this station's database was sealed with: \
             restore the key file the database was made with"
                .into(),
        )
    };
    let check = match storage.setting(CHECK_SETTING).await? {
        Some(check) => check,
        None => {
            if let Some((context, sealed)) = earlier {
                key.open(context, sealed).map_err(|_| wrong())?;
            }
            storage
                .put_setting_once(CHECK_SETTING, key.seal(CHECK_CONTEXT, CHECK_PLAIN)?)
                .await?
        }
    };
    match key.open(CHECK_CONTEXT, &check) {
        Ok(plain) if plain.as_slice() == CHECK_PLAIN => Ok(()),
        _ => Err(wrong()),
    }
}

/// The associated data a dashboard account's sealed value is bound to:
/// what it is and whose, so a value copied into another row does not open.
pub fn sealed_context(what: &str, star_number: &str, device: uuid::Uuid) -> Vec<u8> {
    format!("fieldreport dashboard {what}\0{star_number}\0{device}").into_bytes()
}

/// Where the station key lives in a data directory unless configured.
pub fn default_path(data: &Path) -> PathBuf {
    data.join("keys").join("station.key")
}

/// The station key. Never logged; zeroed when dropped.
pub struct StationKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for StationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StationKey(..)")
    }
}

impl StationKey {
    /// The key in `path`, made (32 random bytes, `0600`, its directory
    /// `0700`) if there is none yet. Several processes starting together
    /// agree on one key: the new file is written aside and linked into
    /// place only if none appeared meanwhile.
    pub fn load_or_create(path: &Path) -> Result<StationKey> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let dir = path
            .parent()
            .ok_or_else(|| StationError::Internal("station key path".into()))?;
        crate::files::private_dir(dir)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut())
            .map_err(|_| StationError::Internal("no randomness".into()))?;
        let tmp = dir.join(format!(".station-key-{}", uuid::Uuid::new_v4().simple()));
        crate::files::write_new_private(&tmp, key.as_ref())?;
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                std::fs::File::open(dir)?.sync_all()?;
                tracing::info!(path = %path.display(), "station key made");
                Ok(StationKey { key })
            }
            // Another process made it first: use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(e.into()),
        }
    }

    /// The key in `path`, which must exist (a configured key file).
    pub fn load(path: &Path) -> Result<StationKey> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
            StationError::Unavailable(format!(
                "cannot read the station key file {}: {e}",
                path.display()
            ))
        })?);
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            StationError::Unavailable(format!(
                "the station key file {} is not {KEY_LEN} bytes",
                path.display()
            ))
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the station key file is readable by others: chmod 600 it");
            }
        }
        Ok(StationKey {
            key: Zeroizing::new(key),
        })
    }

    /// The station key for `storage`, from `path`. A missing file is made
    /// only when `may_create` and the database holds nothing sealed yet
    /// (no key check, no dashboard account): a station whose key file was
    /// lost refuses to start instead of making a new key, which would lock
    /// every supervisor out. The key is then bound to the database
    /// ([`bind`]).
    pub async fn open_for(
        path: &Path,
        may_create: bool,
        storage: &dyn StationStorage,
    ) -> Result<StationKey> {
        let exists = match std::fs::symlink_metadata(path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        let key = if exists || !may_create {
            Self::load(path)?
        } else {
            if storage.setting(CHECK_SETTING).await?.is_some()
                || !storage.dashboard_accounts().await?.is_empty()
            {
                return Err(StationError::Unavailable(format!(
                    "the station key file {} is missing, but this station's database holds \
                     values sealed with it (dashboard accounts): restore the file from backup; \
                     a new key would lock every supervisor out",
                    path.display()
                )));
            }
            Self::load_or_create(path)?
        };
        let first = storage.dashboard_accounts().await?.into_iter().next();
        let earlier = first.as_ref().map(|a| {
            (
                sealed_context("totp", &a.star_number, a.device_id),
                &a.totp_sealed,
            )
        });
        bind(
            &key,
            storage,
            earlier.as_ref().map(|(c, s)| (c.as_slice(), s.as_slice())),
        )
        .await?;
        Ok(key)
    }

    /// A key from bytes (tests).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> StationKey {
        StationKey {
            key: Zeroizing::new(bytes),
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_ref()))
    }

    /// Seals `plain`; `context` (what it is and whose) must be given again
    /// to open it.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| StationError::Internal("no randomness".into()))?;
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .map_err(|_| StationError::Internal("sealing failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`StationKey::seal`] sealed with the same `context`; an
    /// error if it was sealed under another key or context, or altered.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let bad =
            || StationError::Internal("a sealed value does not open with the station key".into());
        let rest = sealed.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
        if rest.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {

    /// A database meets one station key: another is refused with a clear
    /// error, also for a database from before the key check, whose sealed
    /// values tell which key is right.
    #[tokio::test]
    async fn a_database_opens_with_its_own_station_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::sqlite::SqliteStorage::open(dir.path()).unwrap();
        let a = StationKey::from_bytes([1; 32]);
        let b = StationKey::from_bytes([2; 32]);
        let sealed = a.seal(b"ctx", b"totp").unwrap();
        // Before the check: the earlier sealed value decides.
        let err = bind(&b, &storage, Some((b"ctx", &sealed)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not the one"), "{err}");
        assert!(
            storage.setting(CHECK_SETTING).await.unwrap().is_none(),
            "nothing bound"
        );
        bind(&a, &storage, Some((b"ctx", &sealed))).await.unwrap();
        assert!(storage.setting(CHECK_SETTING).await.unwrap().is_some());
        // From then on, the check decides.
        bind(&a, &storage, None).await.unwrap();
        let err = bind(&b, &storage, None).await.unwrap_err();
        assert!(err.to_string().contains("not the one"), "{err}");
    }

    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let k = StationKey::from_bytes([7; 32]);
        let sealed = k.seal(b"totp 900", b"secret bytes").unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"secret bytes"));
        assert_eq!(
            k.open(b"totp 900", &sealed).unwrap().as_slice(),
            b"secret bytes"
        );
        assert!(k.open(b"totp 901", &sealed).is_err(), "another context");
        assert!(StationKey::from_bytes([8; 32])
            .open(b"totp 900", &sealed)
            .is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(k.open(b"totp 900", &flipped).is_err());
        assert!(k.open(b"totp 900", b"FRS1").is_err());
        assert_ne!(
            sealed,
            k.seal(b"totp 900", b"secret bytes").unwrap(),
            "random nonce"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_made_once_private_and_then_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(dir.path());
        let a = StationKey::load_or_create(&path).unwrap();
        let b = StationKey::load_or_create(&path).unwrap();
        assert_eq!(a.key.as_ref(), b.key.as_ref());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        // A configured file that is missing is an error, not a new key.
        assert!(StationKey::load(&dir.path().join("elsewhere.key")).is_err());
        std::fs::write(&path, b"short").unwrap();
        assert!(StationKey::load_or_create(&path).is_err());
    }
}
