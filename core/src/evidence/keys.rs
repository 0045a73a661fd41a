//! Device key pairs and the directory records that tie a public key to a
//! person.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::enums::Role;

/// Who holds a device, from enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    pub star_number: String,
    pub role: Role,
    /// Unit or district.
    pub unit: String,
}

/// A known device: its public key and its person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device_id: Uuid,
    #[serde(with = "hex_key")]
    pub public_key: [u8; 32],
    pub person: Person,
}

impl DeviceRecord {
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
            record: DeviceRecord {
                device_id,
                public_key: signing_key.verifying_key().to_bytes(),
                person,
            },
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
