//! Device key pairs and the directory records that tie a public key to a
//! person.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::enums::Role;

/// Who holds a device, from enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Person {
    pub name: String,
    pub star_number: String,
    pub role: Role,
    /// Unit or district.
    pub unit: String,
}

/// A known device: its public key and its person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceRecord {
    pub device_id: Uuid,
    #[serde(with = "hex_key")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[0-9a-f]{64}$"))]
    pub public_key: [u8; 32],
    pub person: Person,
    /// Set when the station left this device's name and star number out
    /// of the directory it gave a phone (docs/sync.md): a digest of them,
    /// so the phone can still check a claimed reporting officer
    /// ([`DeviceRecord::is_person`]) without holding the roster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_digest: Option<String>,
    /// The device's person secret (32 random bytes, hex), which the
    /// station makes at enrollment and gives only to the device itself.
    /// The digest other phones hold is keyed with it, and the device's
    /// creation changes reveal it (`reporting_officer.proof`): a phone can
    /// check the officer a creation names, but cannot test a roster of
    /// candidate names against the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_secret: Option<String>,
}

/// Digest of a device's person, keyed with its person secret (and salted
/// with its id): without the secret, a roster of candidates cannot be
/// tested against it.
fn person_digest(device: Uuid, name: &str, star_number: &str, unit: &str, secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        b"fieldreport person v2".as_slice(),
        device.as_bytes(),
        secret.as_bytes(),
        name.as_bytes(),
        star_number.as_bytes(),
        unit.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// A new person secret: 32 random bytes, hex.
pub fn new_person_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Error::Corrupt("no randomness".into()))?;
    Ok(hex::encode(bytes))
}

impl DeviceRecord {
    pub fn new(device_id: Uuid, public_key: [u8; 32], person: Person) -> DeviceRecord {
        DeviceRecord {
            device_id,
            public_key,
            person,
            person_digest: None,
            person_secret: None,
        }
    }

    /// The record without name, star number and secret: what a phone that
    /// may not know the person receives. It keeps a digest of the person
    /// keyed with the secret, which the device's creations open; a device
    /// enrolled before person secrets gets no digest (nothing to test a
    /// roster against, and nothing a phone can check a claim with).
    pub fn without_name(mut self) -> DeviceRecord {
        if self.person_digest.is_none() {
            let p = &self.person;
            self.person_digest = self.person_secret.as_deref().map(|secret| {
                person_digest(self.device_id, &p.name, &p.star_number, &p.unit, secret)
            });
        }
        self.person.name.clear();
        self.person.star_number.clear();
        self.person_secret = None;
        self
    }

    /// The record as another device may hold it, named: without the
    /// person secret, which only the device itself holds.
    pub fn without_secret(mut self) -> DeviceRecord {
        self.person_secret = None;
        self
    }

    /// Whether this device's person is (name, star number, unit): from the
    /// names when the record has them, else from the digest and `proof`,
    /// the person secret the device's creation reveals. A record without
    /// names or digest proves nothing.
    pub fn is_person(
        &self,
        name: &str,
        star_number: &str,
        unit: &str,
        proof: Option<&str>,
    ) -> bool {
        if unit != self.person.unit {
            return false;
        }
        match (&self.person_digest, proof) {
            (Some(d), Some(secret)) => {
                *d == person_digest(self.device_id, name, star_number, unit, secret)
            }
            (Some(_), None) => false,
            (None, _) => {
                !self.person.name.is_empty()
                    && name == self.person.name
                    && star_number == self.person.star_number
            }
        }
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey> {
        VerifyingKey::from_bytes(&self.public_key)
            .map_err(|_| Error::Corrupt(format!("public key of device {}", self.device_id)))
    }
}

/// This device: its id, secret key and person.
pub struct DeviceIdentity {
    pub record: DeviceRecord,
    pub signing_key: SigningKey,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.record.device_id)
            .finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// A fresh key pair from the OS random source.
    pub fn generate(person: Person) -> Result<Self> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
        Ok(Self::from_secret(Uuid::new_v4(), secret, person))
    }

    pub fn from_secret(device_id: Uuid, secret: [u8; 32], person: Person) -> Self {
        let signing_key = SigningKey::from_bytes(&secret);
        DeviceIdentity {
            record: DeviceRecord::new(device_id, signing_key.verifying_key().to_bytes(), person),
            signing_key,
        }
    }

    pub fn device_id(&self) -> Uuid {
        self.record.device_id
    }
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_name_tells_its_person_only_with_the_proof() {
        let person = Person {
            name: "A. Alvarez".into(),
            star_number: "11021".into(),
            role: Role::Officer,
            unit: "District 9".into(),
        };
        let mut full = DeviceRecord::new(Uuid::from_u128(7), [1; 32], person);
        full.person_secret = Some(new_person_secret().unwrap());
        let secret = full.person_secret.clone().unwrap();
        let bare = full.clone().without_name();
        assert!(bare.person.name.is_empty() && bare.person.star_number.is_empty());
        assert!(bare.person_secret.is_none());
        let json = serde_json::to_string(&bare).unwrap();
        assert!(
            !json.contains("Alvarez") && !json.contains("11021") && !json.contains(&secret),
            "{json}"
        );
        for (r, proof) in [(&full, None), (&bare, Some(secret.as_str()))] {
            assert!(r.is_person("A. Alvarez", "11021", "District 9", proof));
            assert!(!r.is_person("A. Alvarez", "11022", "District 9", proof));
            assert!(!r.is_person("B. Alvarez", "11021", "District 9", proof));
            assert!(!r.is_person("A. Alvarez", "11021", "District 2", proof));
            assert!(!r.is_person("", "", "District 9", proof));
        }
        // Without the secret, the digest confirms no candidate, not even
        // the right one: a roster cannot be tested against it.
        assert!(!bare.is_person("A. Alvarez", "11021", "District 9", None));
        let guess = new_person_secret().unwrap();
        assert!(!bare.is_person("A. Alvarez", "11021", "District 9", Some(&guess)));
        // A record from before person secrets gets no digest at all.
        let legacy = DeviceRecord::new(Uuid::from_u128(9), [1; 32], full.person.clone());
        let legacy_bare = legacy.without_name();
        assert!(legacy_bare.person_digest.is_none());
        assert!(!legacy_bare.is_person("A. Alvarez", "11021", "District 9", None));
        // The same person on another device has another digest.
        let mut other = DeviceRecord::new(Uuid::from_u128(8), [1; 32], full.person.clone());
        other.person_secret = Some(secret.clone());
        assert_ne!(other.without_name().person_digest, bare.person_digest);
        // Full records without a secret serialise as before.
        let plain = DeviceRecord::new(Uuid::from_u128(7), [1; 32], full.person.clone());
        let plain = serde_json::to_string(&plain).unwrap();
        assert!(!plain.contains("person_digest") && !plain.contains("person_secret"));
    }
}
