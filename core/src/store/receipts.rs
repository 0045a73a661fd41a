//! The station's log as this device saw it: the checkpoints it accepted
//! (checked by the sync client, see [`crate::sync`]) and the receipt of
//! each change it pushed. Nothing here checks a proof; it keeps what was
//! checked, so that the officer can later show what the station signed.

use super::*;
use crate::tlog::CosignerKey;

/// Where the station's log put one of this device's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub change: ChangeId,
    /// The change's leaf index in the log.
    pub index: u64,
    /// The station's receipt time as the leaf holds it (ms).
    pub received_at_ms: i64,
    /// The size of the checkpoint the proof leads to (one this device
    /// holds, see [`Store::log_checkpoint_of`]).
    pub tree_size: u64,
    /// The RFC 6962 inclusion proof: base64 hashes, leaf side first
    /// (kept one per line).
    pub proof: Vec<String>,
}

/// The witnesses whose cosignatures this device requires before it counts
/// a receipt as witnessed, and how many of them (0: none required).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WitnessPolicy {
    pub witnesses: Vec<CosignerKey>,
    pub quorum: u32,
}

impl WitnessPolicy {
    /// Checks the set: distinct witness names, a quorum they can meet.
    pub fn new(witnesses: Vec<CosignerKey>, quorum: u32) -> Result<Self> {
        let names: std::collections::BTreeSet<&str> =
            witnesses.iter().map(|w| w.name.as_str()).collect();
        if names.len() != witnesses.len() {
            return Err(Error::BadWitnesses {
                reason: "a witness is named twice",
            });
        }
        if quorum as usize > witnesses.len() {
            return Err(Error::BadWitnesses {
                reason: "the quorum is larger than the number of witnesses",
            });
        }
        Ok(WitnessPolicy { witnesses, quorum })
    }

    fn encode(&self) -> String {
        let mut s = format!("quorum {}\n", self.quorum);
        for w in &self.witnesses {
            s.push_str(&w.encode());
            s.push('\n');
        }
        s
    }

    fn decode(text: &str) -> Result<Self> {
        let corrupt = || Error::Corrupt("witness policy".into());
        let mut lines = text.lines();
        let quorum = lines
            .next()
            .and_then(|l| l.strip_prefix("quorum "))
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        let witnesses = lines
            .map(|l| CosignerKey::parse(l).map_err(|_| corrupt()))
            .collect::<Result<_>>()?;
        Ok(WitnessPolicy { witnesses, quorum })
    }
}

/// The newest checkpoint this device saw cosigned by its quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedCheckpoint {
    pub size: u64,
    /// The checkpoint with the cosignatures that made the quorum.
    pub note: String,
}

/// How far the witnesses this device requires have seen the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WitnessStatus {
    pub quorum: u32,
    /// The newest tree size the quorum cosigned (0: none yet).
    pub size: u64,
    /// This device's receipts in larger trees: not yet witnessed.
    pub receipts_awaiting: u64,
}

const KEY_WITNESS_POLICY: &str = "witness_policy";
const KEY_WITNESSED: &str = "witnessed_checkpoint";
/// The checkpoints of histories a station lost in a restore.
const KEY_RETIRED: &str = "log_retired_checkpoints";
/// The restore entries this device took in.
const KEY_RESTORES: &str = "log_restores_accepted";

fn size_param(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::Corrupt(format!("log size {n} out of range")))
}

impl Store {
    /// The newest checkpoint accepted: (tree size, signed note).
    pub fn newest_log_checkpoint(&self) -> Result<Option<(u64, String)>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .optional()?)
        })
    }

    /// The accepted checkpoint of one tree size.
    pub fn log_checkpoint_of(&self, size: u64) -> Result<Option<String>> {
        let size = size_param(size)?;
        self.read(|c| {
            Ok(c.query_row(
                "SELECT note FROM log_checkpoints WHERE size = ?1",
                [size],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    /// Keeps a checkpoint the sync client checked against the newest one.
    pub fn record_log_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        let size = size_param(size)?;
        let w = self.writer()?;
        w.conn.execute(
            "INSERT OR IGNORE INTO log_checkpoints (size, note) VALUES (?1, ?2)",
            params![size, note],
        )?;
        Ok(())
    }

    /// Takes in that the station was restored from a backup whose log
    /// ended at `restored_size` (its log says so at entry
    /// `restore_index`, and the sync client checked that the restored
    /// history extends this device's tree of `trusted_size`, the largest
    /// it held up to the restored size). In one transaction: the
    /// checkpoints held of larger trees (the lost history) and a witnessed
    /// checkpoint past the restored size are kept aside, under
    /// `log_retired_checkpoints` in the sync values, and no longer held;
    /// every change the restored station may lack (no receipt inside the
    /// tree of `trusted_size`: only that much of the old history was
    /// checked against the new; every later tree this device held was
    /// checked to extend it) is to be sent again, and every media file
    /// uploaded again (the station answers at once for those it holds);
    /// the pull cursor starts over (the restored station numbers its
    /// changes again); the restore entry is remembered, so that it never
    /// explains a later rollback. Returns how many changes are to be sent
    /// again.
    pub fn accept_station_restore(
        &self,
        restored_size: u64,
        restore_index: u64,
        trusted_size: u64,
        restore_note: &str,
    ) -> Result<u64> {
        let size = size_param(restored_size)?;
        let trusted = size_param(trusted_size.min(restored_size))?;
        let mut w = self.writer()?;
        let tx = w.conn.transaction()?;
        let retired: Vec<String> = tx
            .prepare("SELECT note FROM log_checkpoints WHERE size > ?1 ORDER BY size")?
            .query_map([size], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let value = |key: &str| -> Result<Option<String>> {
            Ok(tx
                .query_row("SELECT value FROM sync_state WHERE key = ?1", [key], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?)
        };
        let mut kept: Vec<String> = value(KEY_RETIRED)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default();
        kept.extend(retired);
        if let Some(witnessed) = value(KEY_WITNESSED)? {
            let past = witnessed
                .split_once('\n')
                .and_then(|(n, _)| n.parse::<u64>().ok())
                .is_none_or(|n| n > restored_size);
            if past {
                kept.push(format!("witnessed: {witnessed}"));
                tx.execute("DELETE FROM sync_state WHERE key = ?1", [KEY_WITNESSED])?;
            }
        }
        kept.push(format!("restore seen: {restore_note}"));
        let mut accepted: Vec<u64> = value(KEY_RESTORES)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default();
        accepted.push(restore_index);
        let set = |key: &str, v: String| -> Result<()> {
            tx.execute(
                "INSERT INTO sync_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, v],
            )?;
            Ok(())
        };
        let json = |e: serde_json::Error| Error::Corrupt(e.to_string());
        set(KEY_RETIRED, serde_json::to_string(&kept).map_err(json)?)?;
        set(
            KEY_RESTORES,
            serde_json::to_string(&accepted).map_err(json)?,
        )?;
        tx.execute("DELETE FROM log_checkpoints WHERE size > ?1", [size])?;
        let resent = tx.execute(
            "UPDATE changes SET acked = 0 WHERE acked = 1 AND NOT EXISTS (
                 SELECT 1 FROM log_receipts r
                 WHERE r.device_id = changes.device_id AND r.seq = changes.seq
                   AND r.log_index < ?1)",
            [trusted],
        )? as u64;
        tx.execute("UPDATE media SET uploaded = 0", [])?;
        tx.execute("DELETE FROM sync_state WHERE key = 'pull_cursor'", [])?;
        tx.commit()?;
        Ok(resent)
    }

    /// The restore entries (log indexes) this device has taken in.
    pub fn accepted_restores(&self) -> Result<Vec<u64>> {
        Ok(self
            .sync_value(KEY_RESTORES)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default())
    }

    /// The newest checkpoint held of a tree of at most `size` entries.
    pub fn log_checkpoints_up_to(&self, size: u64) -> Result<Option<String>> {
        let size = size_param(size)?;
        self.read(|c| {
            Ok(c.query_row(
                "SELECT note FROM log_checkpoints WHERE size <= ?1 ORDER BY size DESC LIMIT 1",
                [size],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    /// The checkpoints of histories a station lost in a restore, and the
    /// restores seen (`restore seen: <checkpoint>`), oldest first.
    pub fn retired_log_checkpoints(&self) -> Result<Vec<String>> {
        Ok(self
            .sync_value(KEY_RETIRED)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default())
    }

    /// Records that the station holds these changes, with the receipts it
    /// gave and the checkpoint they prove inclusion in: one transaction,
    /// so that no change is acknowledged with its receipt half kept.
    pub fn ack_with_receipts(
        &self,
        ids: &[ChangeId],
        checkpoint: Option<(u64, &str)>,
        receipts: &[StoredReceipt],
    ) -> Result<()> {
        let mut w = self.writer()?;
        let tx = w.conn.transaction()?;
        {
            let mut st = tx
                .prepare_cached("UPDATE changes SET acked = 1 WHERE device_id = ?1 AND seq = ?2")?;
            for id in ids {
                st.execute(params![id.device.as_bytes().as_slice(), id.seq as i64])?;
            }
            if let Some((size, note)) = checkpoint {
                tx.execute(
                    "INSERT OR IGNORE INTO log_checkpoints (size, note) VALUES (?1, ?2)",
                    params![size_param(size)?, note],
                )?;
            }
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO log_receipts
                 (device_id, seq, log_index, received_at_ms, checkpoint_size, proof)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in receipts {
                st.execute(params![
                    r.change.device.as_bytes().as_slice(),
                    r.change.seq as i64,
                    size_param(r.index)?,
                    r.received_at_ms,
                    size_param(r.tree_size)?,
                    r.proof.join("\n"),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The witnesses this device requires (none until set).
    pub fn witness_policy(&self) -> Result<WitnessPolicy> {
        self.sync_value(KEY_WITNESS_POLICY)?
            .map(|t| WitnessPolicy::decode(&t))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Sets the witnesses this device requires (the department's app
    /// configuration, never the station: the station is what they watch).
    pub fn set_witness_policy(&self, policy: &WitnessPolicy) -> Result<()> {
        self.set_sync_value(KEY_WITNESS_POLICY, &policy.encode())
    }

    /// The newest checkpoint seen cosigned by the quorum.
    pub fn witnessed_checkpoint(&self) -> Result<Option<WitnessedCheckpoint>> {
        let Some(v) = self.sync_value(KEY_WITNESSED)? else {
            return Ok(None);
        };
        let (size, note) = v
            .split_once('\n')
            .and_then(|(s, n)| Some((s.parse().ok()?, n.to_string())))
            .ok_or_else(|| Error::Corrupt("witnessed checkpoint".into()))?;
        Ok(Some(WitnessedCheckpoint { size, note }))
    }

    /// Keeps `cp` if it is larger than the one kept (checked before by
    /// the sync client); one statement, so a crash keeps one or the other.
    pub fn record_witnessed_checkpoint(&self, cp: &WitnessedCheckpoint) -> Result<()> {
        if self
            .witnessed_checkpoint()?
            .is_some_and(|old| old.size >= cp.size)
        {
            return Ok(());
        }
        self.set_sync_value(KEY_WITNESSED, &format!("{}\n{}", cp.size, cp.note))
    }

    /// Where the required witnesses stand; none when none are required.
    pub fn witness_status(&self) -> Result<Option<WitnessStatus>> {
        let quorum = self.witness_policy()?.quorum;
        if quorum == 0 {
            return Ok(None);
        }
        Ok(Some(WitnessStatus {
            quorum,
            size: self.witnessed_checkpoint()?.map_or(0, |w| w.size),
            receipts_awaiting: self.receipts_awaiting_witness()?,
        }))
    }

    /// Receipts whose checkpoint is larger than the newest one the quorum
    /// cosigned: what the witnesses have not yet seen the station hold.
    pub fn receipts_awaiting_witness(&self) -> Result<u64> {
        let witnessed = self.witnessed_checkpoint()?.map_or(0, |w| w.size);
        let witnessed = size_param(witnessed)?;
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM log_receipts WHERE checkpoint_size > ?1",
                [witnessed],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
    }

    /// The receipts of one report's changes, in log order.
    pub fn receipts_of_report(&self, report: Uuid) -> Result<Vec<StoredReceipt>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT r.device_id, r.seq, r.log_index, r.received_at_ms, r.checkpoint_size, r.proof
                 FROM log_receipts r JOIN changes c ON c.device_id = r.device_id AND c.seq = r.seq
                 WHERE c.report_id = ?1 ORDER BY r.log_index",
            )?;
            let mut rows = st.query([report.as_bytes().as_slice()])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let proof: String = r.get(5)?;
                out.push(StoredReceipt {
                    change: ChangeId {
                        device: uuid_of(r.get(0)?)?,
                        seq: r.get::<_, i64>(1)? as u64,
                    },
                    index: r.get::<_, i64>(2)? as u64,
                    received_at_ms: r.get(3)?,
                    tree_size: r.get::<_, i64>(4)? as u64,
                    proof: proof
                        .split('\n')
                        .filter(|h| !h.is_empty())
                        .map(str::to_string)
                        .collect(),
                });
            }
            Ok(out)
        })
    }
}
