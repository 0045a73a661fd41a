//! Sync bookkeeping: the outbox of unacknowledged changes, media still to
//! upload, the pull cursor and other values the sync client keeps.

use super::*;

impl Store {
    /// This device's changes the station has not acknowledged yet, oldest
    /// first.
    pub fn outbox(&self, limit: u32) -> Result<Vec<Change>> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(Vec::new());
        };
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT body, signature FROM changes WHERE acked = 0 AND device_id = ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = st.query(params![me.as_bytes().as_slice(), limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(decode_row(r.get(0)?, r.get(1)?)?);
            }
            Ok(out)
        })
    }

    /// Changes a partner's phone handed over that the station has not
    /// acknowledged, of one author, oldest first: this device forwards
    /// them, so that they reach the station even if the partner's phone
    /// never does. One author per batch, so that the station refusing an
    /// author (a revoked phone) refuses no one else's. A change that
    /// attaches media this device does not hold is held back, with the
    /// rest of its author's chain on that report: the station refuses a
    /// change whose media it lacks, and a chain with a gap.
    /// Authors in `skip` are left out (the sync client sets aside, for
    /// the rest of a sync, an author whose batch the station refused).
    pub fn forward_outbox(&self, limit: u32, skip: &BTreeSet<Uuid>) -> Result<Vec<Change>> {
        let limit = limit as usize;
        let mut author = None;
        self.forwardable(
            |c| {
                if skip.contains(&c.device()) {
                    return false;
                }
                let this = *author.get_or_insert(c.device());
                this == c.device()
            },
            limit,
        )
    }

    /// How many changes this device would still send: its own and those
    /// it forwards.
    pub fn outbox_len(&self) -> Result<u64> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(0);
        };
        let own = self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM changes WHERE acked = 0 AND device_id = ?1",
                [me.as_bytes().as_slice()],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })?;
        let forwarded = self.forwardable(|_| true, usize::MAX)?.len() as u64;
        Ok(own + forwarded)
    }

    /// Partners' changes not yet at the station that wait for a photo
    /// they attach (see [`Store::forward_outbox`]).
    pub fn forward_held_back(&self) -> Result<u64> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(0);
        };
        let foreign = self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM changes WHERE acked = 0 AND device_id != ?1",
                [me.as_bytes().as_slice()],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })?;
        let sendable = self.forwardable(|_| true, usize::MAX)?.len() as u64;
        Ok(foreign.saturating_sub(sendable))
    }

    /// Other devices' unacknowledged changes that can be sent now (see
    /// [`Store::forward_outbox`]), in log order, that `take` accepts, up
    /// to `limit`.
    fn forwardable(
        &self,
        mut take: impl FnMut(&Change) -> bool,
        limit: usize,
    ) -> Result<Vec<Change>> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(Vec::new());
        };
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT body, signature FROM changes WHERE acked = 0 AND device_id != ?1 ORDER BY id",
            )?;
            let mut rows = st.query([me.as_bytes().as_slice()])?;
            let mut out = Vec::new();
            let mut held_back: BTreeSet<(Uuid, Uuid)> = BTreeSet::new();
            while let Some(r) = rows.next()? {
                if out.len() >= limit {
                    break;
                }
                let change = decode_row(r.get(0)?, r.get(1)?)?;
                let chain = (change.device(), change.report());
                if held_back.contains(&chain)
                    || crate::model::media_refs(std::slice::from_ref(&change))
                        .iter()
                        .any(|sha| !self.media.contains(sha))
                {
                    held_back.insert(chain);
                    continue;
                }
                if take(&change) {
                    out.push(change);
                }
            }
            Ok(out)
        })
    }

    /// Records that the station refused to take these forwarded changes
    /// (their author's phone was revoked before they reached it): they
    /// stay in this store, as everything does, but are not sent again.
    pub fn mark_forward_refused(&self, ids: &[ChangeId]) -> Result<()> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(());
        };
        let mut w = self.writer()?;
        let tx = w.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE changes SET acked = 2 WHERE device_id = ?1 AND seq = ?2 AND acked = 0 AND device_id != ?3",
            )?;
            for id in ids {
                st.execute(params![
                    id.device.as_bytes().as_slice(),
                    id.seq as i64,
                    me.as_bytes().as_slice()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forwarded changes the station refused (see
    /// [`Store::mark_forward_refused`]).
    pub fn forward_refused_count(&self) -> Result<u64> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM changes WHERE acked = 2", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        })
    }

    /// Records that the station holds these changes.
    pub fn mark_acked(&self, ids: &[ChangeId]) -> Result<()> {
        let mut w = self.writer()?;
        let tx = w.conn.transaction()?;
        {
            let mut st = tx
                .prepare_cached("UPDATE changes SET acked = 1 WHERE device_id = ?1 AND seq = ?2")?;
            for id in ids {
                st.execute(params![id.device.as_bytes().as_slice(), id.seq as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Media not yet uploaded: (sha256, size), oldest first.
    pub fn pending_media(&self) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT sha256, size FROM media WHERE uploaded = 0 ORDER BY stored_at, sha256",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn mark_media_uploaded(&self, sha256: &str) -> Result<()> {
        let w = self.writer()?;
        w.conn
            .execute("UPDATE media SET uploaded = 1 WHERE sha256 = ?1", [sha256])?;
        Ok(())
    }

    /// Records a media file received from the station (already verified and
    /// in the media store).
    pub fn record_downloaded_media(&self, stored: &StoredMedia, mime_type: &str) -> Result<()> {
        let w = self.writer()?;
        w.conn.execute(
            "INSERT OR IGNORE INTO media (sha256, size, mime_type, stored_at, uploaded) VALUES (?1, ?2, ?3, ?4, 1)",
            params![stored.sha256, stored.size as i64, mime_type, self.clock.now_ms()],
        )?;
        Ok(())
    }

    pub fn sync_value(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT value FROM sync_state WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
    }

    pub fn set_sync_value(&self, key: &str, value: &str) -> Result<()> {
        let w = self.writer()?;
        w.conn.execute(
            "INSERT INTO sync_state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    /// Number of changes stored (all reports, all devices).
    pub fn change_count(&self) -> Result<u64> {
        self.read(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM changes", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// Rebuilds every materialised report from its changes (after an
    /// upgrade, or to check the tables against the log).
    pub fn rebuild_materialised(&self) -> Result<usize> {
        let mut guard = self.writer()?;
        let tx = guard.conn.transaction()?;
        let reports: Vec<Uuid> = {
            let mut st = tx.prepare("SELECT DISTINCT report_id FROM changes")?;
            let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            rows.map(|r| uuid_of(r?)).collect::<Result<_>>()?
        };
        for &r in &reports {
            let doc = load_doc(&tx, r)?;
            write_report_row(&tx, r, &doc.materialise())?;
        }
        tx.commit()?;
        Ok(reports.len())
    }
}
