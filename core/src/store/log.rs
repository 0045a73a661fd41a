//! The change-log tables as SQL: the layout of `changes` and `devices`
//! shared by the device store and the station's SQLite engine, and the
//! helpers that read and write them. Both sides thereby verify and merge
//! with the same code.
//!
//! `changes`: `hash` (unique), `device_id`, `seq`, `report_id`, `prev` (32
//! zero bytes for a chain root), `body`, `signature`, `hlc_wall`, `acked`,
//! `received_at`; unique `(device_id, seq)` and `(report_id, device_id, prev)`.
//! `devices`: `device_id`, `public_key`, `record` (JSON `DeviceRecord`).

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::crdt::{Change, ChangeId, Hash, ReportDoc};
use crate::error::{Error, Result};
use crate::evidence::{ChainLookup, DeviceRecord, Person};

pub const ZERO_HASH: Hash = [0u8; 32];

pub fn uuid_of(bytes: Vec<u8>) -> Result<Uuid> {
    Uuid::from_slice(&bytes).map_err(|_| Error::Corrupt("uuid column".into()))
}

pub fn hash_of(bytes: Vec<u8>) -> Result<Hash> {
    bytes
        .try_into()
        .map_err(|_| Error::Corrupt("hash column".into()))
}

pub fn upsert_device(conn: &Connection, record: &DeviceRecord) -> Result<()> {
    let json = serde_json::to_string(record).map_err(|_| Error::Corrupt("device record".into()))?;
    conn.execute(
        "INSERT INTO devices (device_id, public_key, record) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key, record = excluded.record",
        params![record.device_id.as_bytes().as_slice(), record.public_key.as_slice(), json],
    )?;
    Ok(())
}

/// The directory record of a known device.
pub fn device_record(conn: &Connection, device: Uuid) -> Result<Option<DeviceRecord>> {
    let json: Option<String> = conn
        .query_row(
            "SELECT record FROM devices WHERE device_id = ?1",
            [device.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .optional()?;
    json.map(|j| {
        serde_json::from_str::<DeviceRecord>(&j).map_err(|_| Error::Corrupt("device record".into()))
    })
    .transpose()
}

/// The person of a known device.
pub fn device_person(conn: &Connection, device: Uuid) -> Result<Option<Person>> {
    Ok(device_record(conn, device)?.map(|r| r.person))
}

pub fn decode_row(body: Vec<u8>, signature: Vec<u8>) -> Result<Change> {
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| Error::Corrupt("signature column".into()))?;
    Change::from_parts(body, sig).map_err(|_| Error::Corrupt("stored change".into()))
}

pub fn load_doc(conn: &Connection, report: Uuid) -> Result<ReportDoc> {
    let mut st = conn.prepare_cached("SELECT body, signature FROM changes WHERE report_id = ?1")?;
    let mut rows = st.query([report.as_bytes().as_slice()])?;
    let mut doc = ReportDoc::new();
    while let Some(r) = rows.next()? {
        doc.insert(Arc::new(decode_row(r.get(0)?, r.get(1)?)?));
    }
    Ok(doc)
}

pub fn insert_change(conn: &Connection, c: &Change, acked: bool, now: i64) -> Result<()> {
    let b = c.body();
    let mut st = conn.prepare_cached(
        "INSERT INTO changes (hash, device_id, seq, report_id, prev, body, signature, hlc_wall, acked, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    st.execute(params![
        c.hash().as_slice(),
        b.device.as_bytes().as_slice(),
        b.seq as i64,
        b.report.as_bytes().as_slice(),
        b.prev.as_ref().unwrap_or(&ZERO_HASH).as_slice(),
        c.bytes(),
        c.signature().as_slice(),
        b.hlc.wall_ms as i64,
        acked,
        now
    ])?;
    Ok(())
}

/// Chain lookups against a database with the layout above (use inside
/// the applying transaction).
pub struct SqlLookup<'a>(pub &'a Connection);

impl ChainLookup for SqlLookup<'_> {
    fn stored(&self, id: ChangeId) -> Result<Option<(Hash, [u8; 64])>> {
        let mut st = self.0.prepare_cached(
            "SELECT hash, signature FROM changes WHERE device_id = ?1 AND seq = ?2",
        )?;
        let row = st
            .query_row(
                params![id.device.as_bytes().as_slice(), id.seq as i64],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()?;
        row.map(|(h, s)| {
            let sig: [u8; 64] = s
                .try_into()
                .map_err(|_| Error::Corrupt("signature column".into()))?;
            Ok((hash_of(h)?, sig))
        })
        .transpose()
    }

    fn stored_by_hash(&self, hash: &Hash) -> Result<Option<(Uuid, Uuid, u64)>> {
        let mut st = self
            .0
            .prepare_cached("SELECT device_id, report_id, seq FROM changes WHERE hash = ?1")?;
        let row = st
            .query_row([hash.as_slice()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        row.map(|(d, r, s)| Ok((uuid_of(d)?, uuid_of(r)?, s as u64)))
            .transpose()
    }

    fn has_stored_child(&self, device: Uuid, report: Uuid, prev: Option<&Hash>) -> Result<bool> {
        let mut st = self.0.prepare_cached(
            "SELECT 1 FROM changes WHERE report_id = ?1 AND device_id = ?2 AND prev = ?3",
        )?;
        Ok(st
            .query_row(
                params![
                    report.as_bytes().as_slice(),
                    device.as_bytes().as_slice(),
                    prev.unwrap_or(&ZERO_HASH).as_slice()
                ],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn device_key(&self, device: Uuid) -> Result<Option<VerifyingKey>> {
        let mut st = self
            .0
            .prepare_cached("SELECT public_key FROM devices WHERE device_id = ?1")?;
        let key = st
            .query_row([device.as_bytes().as_slice()], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        key.map(|k| {
            let k: [u8; 32] = k
                .try_into()
                .map_err(|_| Error::Corrupt("public key".into()))?;
            VerifyingKey::from_bytes(&k).map_err(|_| Error::Corrupt("public key".into()))
        })
        .transpose()
    }
}
