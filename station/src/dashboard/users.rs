//! Dashboard accounts and the signing devices behind them.
//!
//! A supervisor's dashboard account is a name, star number, unit and an
//! Argon2 password hash, kept in `<data>/dashboard/users.json` (written
//! whole and renamed into place). Every account also owns a device of its
//! own, enrolled like a phone, whose core store lives in
//! `<data>/dashboard/<device-id>/`: a lifecycle action taken in the browser
//! is made by that store (the same core rules and a signature like any
//! other change) and pushed into the station's storage. So the dashboard
//! never writes a report any other way than a phone does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fieldreport_core::store::{Origin, Store};
use fieldreport_core::{DeviceIdentity, Person, Role};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StationError};
use crate::storage::{Enrolled, PushOutcome, StationStorage};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub star_number: String,
    pub unit: String,
    pub password_hash: String,
    /// The account's signing device (its store is `<dashboard>/<device_id>`).
    pub device_id: uuid::Uuid,
    /// That device's bearer credential with the station storage.
    pub credential: String,
    /// The second factor: an RFC 6238 TOTP secret (base32), shown once to
    /// the supervisor's authenticator app when the account is made. An
    /// account without one cannot sign in until it is made again.
    #[serde(default)]
    pub totp_secret: String,
}

/// TOTP as authenticator apps use it: HMAC-SHA-1, 6 digits, 30 s steps,
/// one step of clock drift either way.
pub fn totp(secret_base32: &str) -> Option<totp_rs::TOTP> {
    let bytes = totp_rs::Secret::Encoded(secret_base32.to_string())
        .to_bytes()
        .ok()?;
    totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes).ok()
}

/// The `otpauth://` address an authenticator app scans or imports.
pub fn totp_uri(account: &Account) -> String {
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

fn new_totp_secret() -> Result<String> {
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|_| StationError::Internal("no randomness".into()))?;
    match totp_rs::Secret::Raw(raw.to_vec()).to_encoded() {
        totp_rs::Secret::Encoded(s) => Ok(s),
        totp_rs::Secret::Raw(_) => Err(StationError::Internal("totp secret".into())),
    }
}

pub fn dashboard_dir(storage: &dyn StationStorage) -> PathBuf {
    storage
        .scratch_dir()
        .parent()
        .map(|p| p.join("dashboard"))
        .unwrap_or_else(|| PathBuf::from("dashboard"))
}

fn users_file(dir: &Path) -> PathBuf {
    dir.join("users.json")
}

pub fn load(dir: &Path) -> Result<Vec<Account>> {
    match std::fs::read(users_file(dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|_| StationError::Internal("dashboard users file does not parse".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn save(dir: &Path, accounts: &[Account]) -> Result<()> {
    let tmp = dir.join("users.json.tmp");
    let json = serde_json::to_vec_pretty(accounts)
        .map_err(|_| StationError::Internal("dashboard users".into()))?;
    std::fs::write(&tmp, json)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, users_file(dir))?;
    Ok(())
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

/// Creates (or, for the same star number, replaces the password of) a
/// supervisor's dashboard account, enrolling its signing device.
pub async fn create_account(
    storage: &dyn StationStorage,
    name: &str,
    star_number: &str,
    unit: &str,
    password: &str,
) -> Result<Account> {
    if password.chars().count() < 12 {
        return Err(StationError::BadRequest(
            "weak_password",
            "a dashboard password has at least 12 characters".into(),
        ));
    }
    let dir = dashboard_dir(storage);
    std::fs::create_dir_all(&dir)?;
    let mut accounts = load(&dir)?;
    let password_hash = hash_password(password)?;
    let totp_secret = new_totp_secret()?;
    if let Some(a) = accounts.iter_mut().find(|a| a.star_number == star_number) {
        // Made again: new password and new second factor.
        a.password_hash = password_hash;
        a.totp_secret = totp_secret;
        let a = a.clone();
        save(&dir, &accounts)?;
        return Ok(a);
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
    let (_, credential) = storage
        .enroll(&code, identity.device_id(), identity.record.public_key)
        .await?;
    let device_id = identity.device_id();
    let store_dir = dir.join(device_id.to_string());
    tokio::task::spawn_blocking(move || -> Result<()> {
        Store::open(&store_dir)?.install_identity(identity)?;
        Ok(())
    })
    .await
    .map_err(|_| StationError::Internal("blocking task failed".into()))??;
    let account = Account {
        name: name.into(),
        star_number: star_number.into(),
        unit: unit.into(),
        password_hash,
        device_id,
        credential,
        totp_secret,
    };
    accounts.push(account.clone());
    save(&dir, &accounts)?;
    Ok(account)
}

/// The signing stores of signed-in accounts, opened once.
#[derive(Default)]
pub struct Stores {
    open: Mutex<std::collections::HashMap<uuid::Uuid, Arc<Store>>>,
}

impl Stores {
    fn get(&self, dir: &Path, device: uuid::Uuid) -> Result<Arc<Store>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = open.get(&device) {
            return Ok(s.clone());
        }
        let s = Arc::new(Store::open(dir.join(device.to_string()))?);
        open.insert(device, s.clone());
        Ok(s)
    }
}

/// Takes one action on a report as the account's device: brings its store
/// up to date with the report, runs `action` there (the core's rules
/// apply), and pushes the resulting signed change into the station.
pub async fn act(
    storage: &Arc<dyn StationStorage>,
    stores: &Stores,
    who: &Enrolled,
    account: &Account,
    report: uuid::Uuid,
    action: impl FnOnce(&Store) -> fieldreport_core::Result<()> + Send + 'static,
) -> Result<PushOutcome> {
    let changes = storage.report_changes(who, report).await?;
    let devices = storage.devices().await?;
    let store = stores.get(&dashboard_dir(storage.as_ref()), account.device_id)?;
    let outbox = tokio::task::spawn_blocking(move || -> Result<_> {
        for d in &devices {
            store.add_known_device(d)?;
        }
        store.apply_changes(changes, Origin::Station)?;
        action(&store)?;
        Ok((store.outbox(1000)?, store))
    })
    .await
    .map_err(|_| StationError::Internal("blocking task failed".into()))??;
    let (changes, store) = outbox;
    let ids: Vec<_> = changes.iter().map(|c| c.id()).collect();
    let outcome = storage.push(changes).await?;
    tokio::task::spawn_blocking(move || store.mark_acked(&ids))
        .await
        .map_err(|_| StationError::Internal("blocking task failed".into()))??;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    /// RFC 6238 appendix B, SHA-1: the secret "12345678901234567890" gives
    /// 94287082 at T = 59 s and 07081804 at 1111111109 s (8 digits there;
    /// the last 6 digits are what a 6-digit code shows).
    #[test]
    fn totp_matches_rfc_6238_vectors() {
        let secret = match totp_rs::Secret::Raw(b"12345678901234567890".to_vec()).to_encoded() {
            totp_rs::Secret::Encoded(s) => s,
            totp_rs::Secret::Raw(_) => unreachable!(),
        };
        let t = super::totp(&secret).unwrap();
        assert_eq!(t.generate(59), "287082");
        assert_eq!(t.generate(1_111_111_109), "081804");
        assert_eq!(t.generate(1_234_567_890), "005924");
        assert!(t.check("287082", 59 + 30), "one step of drift is accepted");
        assert!(!t.check("287082", 59 + 90), "older codes are not");
        assert!(super::totp("not base32!").is_none());
    }
}
