//! Dashboard accounts and the signing devices behind them.
//!
//! A supervisor's dashboard account is kept in the station's storage
//! (`dashboard_accounts`): star number, Argon2 password hash, the TOTP
//! secret and the signing store's key, both sealed with the station key
//! ([`crate::keys`], a file kept apart from the database). Name, unit and
//! role are the account device's enrollment record.
//!
//! Every account owns a device of its own, enrolled like a phone, whose
//! core store lives in `<data>/dashboard/<device-id>/`, encrypted with
//! SQLCipher under the account's store key: a lifecycle action taken in
//! the browser is made by that store (the same core rules and a signature
//! like any other change) and pushed into the station's storage. So the
//! dashboard never writes a report any other way than a phone does. That
//! device's bearer credential is never kept: the dashboard looks the
//! device up by id, and the credential made at enrollment is retired.
//!
//! Accounts of earlier builds (`<data>/dashboard/users.json`, with the
//! credential and TOTP secret in the clear, and plain signing stores) are
//! imported once by [`prepare`], which then removes the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fieldreport_core::store::{Origin, Store, StoreKey, StoreOptions, WallClock};
use fieldreport_core::{DeviceIdentity, Person, Role};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::error::{Result, StationError};
use crate::keys::StationKey;
use crate::storage::common::blocking;
use crate::storage::{DashboardAccount, Enrolled, PushOutcome, StationStorage};

/// A new account, as `dashboard-user` shows it once: the TOTP secret is in
/// the clear here and nowhere else.
pub struct NewAccount {
    pub star_number: String,
    /// The account's signing device (`revoke --device` ends the account).
    pub device_id: uuid::Uuid,
    /// The RFC 6238 secret (base32) for the supervisor's authenticator app.
    pub totp_secret: String,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// TOTP as authenticator apps use it: HMAC-SHA-1, 6 digits, 30 s steps,
/// one step of clock drift either way.
pub fn totp(secret_base32: &str) -> Option<totp_rs::TOTP> {
    let bytes = totp_rs::Secret::Encoded(secret_base32.to_string())
        .to_bytes()
        .ok()?;
    totp_from_bytes(&bytes)
}

fn totp_from_bytes(raw: &[u8]) -> Option<totp_rs::TOTP> {
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, raw.to_vec()).ok()
}

/// The `otpauth://` address an authenticator app scans or imports.
pub fn totp_uri(account: &NewAccount) -> String {
    format!(
        "otpauth://totp/FieldReport:{}?secret={}&issuer=FieldReport&algorithm=SHA1&digits=6&period=30",
        account
            .star_number
            .bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(char::from)
            .collect::<String>(),
        account.totp_secret
    )
}

fn base32(raw: &[u8]) -> Result<String> {
    match totp_rs::Secret::Raw(raw.to_vec()).to_encoded() {
        totp_rs::Secret::Encoded(s) => Ok(s),
        totp_rs::Secret::Raw(_) => Err(StationError::Internal("totp secret".into())),
    }
}

fn new_totp_secret() -> Result<Zeroizing<Vec<u8>>> {
    let mut raw = Zeroizing::new(vec![0u8; 20]);
    getrandom::fill(&mut raw).map_err(|_| StationError::Internal("no randomness".into()))?;
    Ok(raw)
}

// What a sealed value is, and whose (the associated data it is sealed
// with), so it opens only in its own account's row.
use crate::keys::sealed_context as context;

/// The account's second factor; `None` when it has none (an account from
/// an earlier build made without one signs in only once made again).
pub fn second_factor(key: &StationKey, a: &DashboardAccount) -> Result<Option<totp_rs::TOTP>> {
    let raw = key.open(
        &context("totp", &a.star_number, a.device_id),
        &a.totp_sealed,
    )?;
    if raw.is_empty() {
        return Ok(None);
    }
    Ok(totp_from_bytes(&raw))
}

/// The SQLCipher key of the account's signing store.
pub fn signing_store_key(key: &StationKey, a: &DashboardAccount) -> Result<StoreKey> {
    let raw = key.open(
        &context("store key", &a.star_number, a.device_id),
        &a.store_key_sealed,
    )?;
    Ok(StoreKey::from_bytes(&raw)?)
}

fn seal_totp(
    key: &StationKey,
    star_number: &str,
    device: uuid::Uuid,
    raw: &[u8],
) -> Result<Vec<u8>> {
    key.seal(&context("totp", star_number, device), raw)
}

fn seal_store_key(
    key: &StationKey,
    star_number: &str,
    device: uuid::Uuid,
    store_key: &StoreKey,
) -> Result<Vec<u8>> {
    key.seal(
        &context("store key", star_number, device),
        &Zeroizing::new(store_key.to_vec()),
    )
}

/// Where the signing stores live.
pub fn dashboard_dir(storage: &dyn StationStorage) -> PathBuf {
    storage.data_dir().join("dashboard")
}

pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| StationError::Internal("no randomness".into()))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|_| StationError::Internal("password salt".into()))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|_| StationError::Internal("password hash".into()))?
        .to_string())
}

pub fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The station's clock, as a core store's wall clock (the signing stores
/// stamp their changes by it).
struct StationWallClock(Arc<dyn Clock>);

impl WallClock for StationWallClock {
    fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

fn store_options(storage: &dyn StationStorage, key: StoreKey) -> StoreOptions {
    StoreOptions {
        clock: Arc::new(StationWallClock(storage.clock())),
        key: Some(key),
        ..StoreOptions::default()
    }
}

/// Creates a supervisor's dashboard account, enrolling its signing device;
/// for a star number that has one, sets a new password and a new second
/// factor (the device and its store stay, unless the device was revoked:
/// then the account gets a new one).
pub async fn create_account(
    storage: &dyn StationStorage,
    key: &Arc<StationKey>,
    name: &str,
    star_number: &str,
    unit: &str,
    password: &str,
) -> Result<NewAccount> {
    if password.chars().count() < 12 {
        return Err(StationError::BadRequest(
            "weak_password",
            "a dashboard password has at least 12 characters".into(),
        ));
    }
    prepare(storage, key).await?;
    let password = password.to_string();
    let password_hash = blocking(move || hash_password(&password)).await?;
    let raw = new_totp_secret()?;
    let totp_secret = base32(&raw)?;
    let existing = storage.dashboard_account(star_number).await?;
    let revoked = match &existing {
        Some(a) => storage.device(a.device_id).await?.is_none_or(|d| d.revoked),
        None => false,
    };
    if let Some(mut a) = existing.clone().filter(|_| !revoked) {
        // Made again: new password and new second factor.
        a.password_hash = password_hash;
        a.totp_sealed = seal_totp(key, star_number, a.device_id, &raw)?;
        a.updated_at = storage.clock().now_ms();
        let device_id = a.device_id;
        storage.put_dashboard_account(a, true).await?;
        return Ok(NewAccount {
            star_number: star_number.into(),
            device_id,
            totp_secret,
        });
    }
    let person = Person {
        name: name.into(),
        star_number: star_number.into(),
        role: Role::Supervisor,
        unit: unit.into(),
    };
    let (code, _) = storage
        .create_enrollment(person.clone(), 10 * 60_000)
        .await?;
    let identity = DeviceIdentity::generate(person)?;
    let device_id = identity.device_id();
    let (_, credential) = storage
        .enroll(&code, device_id, identity.record.public_key)
        .await?;
    // Never used: the dashboard finds its device by id.
    drop(Zeroizing::new(credential));
    storage.retire_credential(device_id).await?;
    storage
        .set_credential_expiry(device_id, dashboard_device_expiry(storage))
        .await?;
    let store_key = StoreKey::generate()?;
    let account = DashboardAccount {
        star_number: star_number.into(),
        device_id,
        password_hash,
        totp_sealed: seal_totp(key, star_number, device_id, &raw)?,
        store_key_sealed: seal_store_key(key, star_number, device_id, &store_key)?,
        updated_at: storage.clock().now_ms(),
    };
    let store_dir = dashboard_dir(storage).join(device_id.to_string());
    let options = store_options(storage, store_key);
    blocking(move || {
        crate::files::private_dir(store_dir.parent().unwrap_or(&store_dir))?;
        Store::open_with(&store_dir, options)?.install_identity(identity)?;
        Ok(())
    })
    .await?;
    // A revoked device's account is replaced; otherwise one made meanwhile
    // (by another process) is not.
    if !storage.put_dashboard_account(account, revoked).await? {
        return Err(StationError::Conflict(
            "account_exists",
            "an account with this star number was made meanwhile".into(),
        ));
    }
    Ok(NewAccount {
        star_number: star_number.into(),
        device_id,
        totp_secret,
    })
}

/// An account as an earlier build kept it in `users.json`.
#[derive(Deserialize)]
struct LegacyAccount {
    star_number: String,
    password_hash: String,
    device_id: uuid::Uuid,
    #[serde(default)]
    totp_secret: String,
}

fn is_plain_sqlite(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 16];
    match std::fs::File::open(path) {
        Ok(mut f) => Ok(f.read_exact(&mut head).is_ok() && &head == b"SQLite format 3\0"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// When a dashboard account's signing device expires: in a century.
/// Nobody holds its credential, so the phones' 180 days mean nothing here;
/// the account's access ends when an administrator ends it (`revoke`, or
/// `credential --expires-in-days`).
fn dashboard_device_expiry(storage: &dyn StationStorage) -> i64 {
    storage
        .clock()
        .now_ms()
        .saturating_add(100 * 365 * 86_400_000)
}

/// Readies the dashboard's accounts on a data directory: imports the
/// `users.json` of an earlier build once (secrets sealed, the bearer
/// credential it held retired, then the file removed) and encrypts any
/// signing store still plain; binds the database to `key`, and once gives
/// accounts of an earlier build the dashboard expiry. Runs when the station
/// starts and before an account is made; processes sharing a data
/// directory take turns.
pub async fn prepare(storage: &dyn StationStorage, key: &Arc<StationKey>) -> Result<()> {
    let dir = dashboard_dir(storage);
    crate::files::private_dir(&dir)?;
    let lock_path = dir.join(".prepare.lock");
    let lock = blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)?;
        f.lock()?;
        Ok(f)
    })
    .await?;
    let result = prepare_locked(storage, key, &dir).await;
    drop(lock);
    result
}

async fn prepare_locked(
    storage: &dyn StationStorage,
    key: &Arc<StationKey>,
    dir: &Path,
) -> Result<()> {
    // The database is this key's: a database from before the key check
    // is bound only if its first account's second factor opens.
    let first = storage.dashboard_accounts().await?.into_iter().next();
    let earlier = first
        .as_ref()
        .map(|a| (context("totp", &a.star_number, a.device_id), &a.totp_sealed));
    crate::keys::bind(
        key,
        storage,
        earlier.as_ref().map(|(c, s)| (c.as_slice(), s.as_slice())),
    )
    .await?;
    let users = dir.join("users.json");
    let legacy: Vec<LegacyAccount> = match std::fs::read(&users) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            serde_json::from_slice(&bytes).map_err(|_| {
                StationError::Unavailable(format!(
                    "{} (an earlier build's dashboard accounts) does not parse; nothing was imported",
                    users.display()
                ))
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let imported = !legacy.is_empty() || users.exists();
    for old in legacy {
        if storage.device(old.device_id).await?.is_none() {
            tracing::warn!(device = %old.device_id, "dashboard account of an unknown device not imported");
            continue;
        }
        let raw = match old.totp_secret.as_str() {
            "" => Zeroizing::new(Vec::new()),
            s => Zeroizing::new(totp_rs::Secret::Encoded(s.to_string()).to_bytes().map_err(
                |_| {
                    StationError::Unavailable(format!(
                        "device {}: its TOTP secret in users.json is not base32",
                        old.device_id
                    ))
                },
            )?),
        };
        let store_key = StoreKey::generate()?;
        let account = DashboardAccount {
            totp_sealed: seal_totp(key, &old.star_number, old.device_id, &raw)?,
            store_key_sealed: seal_store_key(key, &old.star_number, old.device_id, &store_key)?,
            star_number: old.star_number,
            device_id: old.device_id,
            password_hash: old.password_hash,
            updated_at: storage.clock().now_ms(),
        };
        // An account made again since (or imported by another process)
        // is kept as it is.
        storage.put_dashboard_account(account, false).await?;
        // The file held the credential in the clear: whoever read it must
        // not be able to use it.
        storage.retire_credential(old.device_id).await?;
    }
    // Accounts made by an earlier build (or imported just now) got the
    // phones' 180 days: once, they get what `create_account` gives.
    const EXPIRY_SETTING: &str = "dashboard_devices_do_not_expire";
    if imported || storage.setting(EXPIRY_SETTING).await?.is_none() {
        for a in storage.dashboard_accounts().await? {
            storage
                .set_credential_expiry(a.device_id, dashboard_device_expiry(storage))
                .await?;
        }
        storage.put_setting_once(EXPIRY_SETTING, vec![1]).await?;
    }
    // Any signing store still plain (imported just now, or an import cut
    // short) is encrypted under its account's key.
    for a in storage.dashboard_accounts().await? {
        let store_dir = dir.join(a.device_id.to_string());
        if is_plain_sqlite(&store_dir.join("fieldreport.db"))? {
            let options = store_options(storage, signing_store_key(key, &a)?);
            blocking(move || {
                drop(Store::open_with(&store_dir, options)?);
                Ok(())
            })
            .await?;
            tracing::info!(device = %a.device_id, "dashboard signing store encrypted");
        }
    }
    if imported {
        for f in ["users.json", "users.json.tmp"] {
            match std::fs::remove_file(dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        std::fs::File::open(dir)?.sync_all()?;
        tracing::info!("dashboard accounts imported from users.json, which is removed");
    }
    Ok(())
}

/// The signing stores of signed-in accounts, opened once.
#[derive(Default)]
pub struct Stores {
    open: Mutex<std::collections::HashMap<uuid::Uuid, Arc<Store>>>,
}

impl Stores {
    fn get(
        &self,
        storage: &dyn StationStorage,
        key: &StationKey,
        account: &DashboardAccount,
    ) -> Result<Arc<Store>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = open.get(&account.device_id) {
            return Ok(s.clone());
        }
        let dir = dashboard_dir(storage).join(account.device_id.to_string());
        let options = store_options(storage, signing_store_key(key, account)?);
        let s = Arc::new(Store::open_with(dir, options)?);
        open.insert(account.device_id, s.clone());
        Ok(s)
    }
}

/// Takes one action on a report as the account's device: brings its store
/// up to date with the report, runs `action` there (the core's rules
/// apply), and pushes the resulting signed change into the station.
/// `who` is that device, found live (not revoked, credential not expired).
pub async fn act(
    storage: &Arc<dyn StationStorage>,
    stores: &Arc<Stores>,
    key: &Arc<StationKey>,
    who: &Enrolled,
    account: &DashboardAccount,
    report: uuid::Uuid,
    action: impl FnOnce(&Store) -> fieldreport_core::Result<()> + Send + 'static,
) -> Result<PushOutcome> {
    let changes = storage.report_changes(who, report).await?;
    let devices = storage.devices().await?;
    let (storage2, stores, key, account) = (
        storage.clone(),
        stores.clone(),
        key.clone(),
        account.clone(),
    );
    let (changes, store) = blocking(move || {
        let store = stores.get(storage2.as_ref(), &key, &account)?;
        for d in &devices {
            store.add_known_device(d)?;
        }
        let at_station: std::collections::HashSet<_> = changes.iter().map(|c| c.id()).collect();
        store.apply_changes(changes, Origin::Station)?;
        action(&store)?;
        // This account's changes to the report that the station lacks, in
        // chain order, then the rest of its outbox: a station restored
        // from a backup made before this store's last copy lacks some it
        // had acknowledged, and would refuse the next one's chain.
        let me = account.device_id;
        let mut push: Vec<_> = store
            .report_changes(report)?
            .into_iter()
            .filter(|c| c.device() == me && !at_station.contains(&c.id()))
            .collect();
        for c in store.outbox(1000)? {
            if !push.iter().any(|p| p.id() == c.id()) {
                push.push(c);
            }
        }
        Ok((push, store))
    })
    .await?;
    let ids: Vec<_> = changes.iter().map(|c| c.id()).collect();
    let outcome = storage.push(changes).await?;
    blocking(move || Ok(store.mark_acked(&ids)?)).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    /// RFC 6238 appendix B, SHA-1: the secret "12345678901234567890" gives
    /// 94287082 at T = 59 s and 07081804 at 1111111109 s (8 digits there;
    /// the last 6 digits are what a 6-digit code shows).
    #[test]
    fn totp_matches_rfc_6238_vectors() {
        let secret = super::base32(b"12345678901234567890").unwrap();
        let t = super::totp(&secret).unwrap();
        assert_eq!(t.generate(59), "287082");
        assert_eq!(t.generate(1_111_111_109), "081804");
        assert_eq!(t.generate(1_234_567_890), "005924");
        assert!(t.check("287082", 59 + 30), "one step of drift is accepted");
        assert!(!t.check("287082", 59 + 90), "older codes are not");
        assert!(super::totp("not base32!").is_none());
    }
}
