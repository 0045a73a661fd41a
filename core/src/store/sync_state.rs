//! Sync bookkeeping: the outbox of unacknowledged changes, media still to
//! upload, the pull cursor and other values the sync client keeps.

use super::*;

impl Store {
    /// This device's changes the station has not acknowledged yet, oldest
    /// first. Changes received from a partner's phone are not forwarded
    /// (they may attach media this device lacks); they are acknowledged
    /// when they come back from the station.
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

    pub fn outbox_len(&self) -> Result<u64> {
        let Some(me) = self.identity().map(|r| r.device_id) else {
            return Ok(0);
        };
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM changes WHERE acked = 0 AND device_id = ?1",
                [me.as_bytes().as_slice()],
                |r| r.get::<_, i64>(0),
            )? as u64)
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
