//! Replication: the change log as other devices and the station see it
//! (heads, what a peer is missing, applying received changes, checking
//! the whole log).

use super::*;

impl Store {
    /// All changes of one report, in chain order.
    pub fn report_changes(&self, report: Uuid) -> Result<Vec<Change>> {
        let doc = self.read(|c| load_doc(c, report))?;
        Ok(doc.changes().map(|c| c.as_ref().clone()).collect())
    }

    /// What this replica holds, per (report, device) chain.
    pub fn heads(&self) -> Result<Heads> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT report_id, device_id, MAX(seq) FROM changes GROUP BY report_id, device_id",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            rows.map(|row| {
                let (r, d, s) = row?;
                Ok(((uuid_of(r)?, uuid_of(d)?), s as u64))
            })
            .collect()
        })
    }

    /// The changes a peer with `heads` lacks, in chain order.
    pub fn changes_missing_from(&self, heads: &Heads) -> Result<Vec<Change>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT report_id, device_id, seq, body, signature FROM changes ORDER BY device_id, seq")?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let key = (uuid_of(r.get(0)?)?, uuid_of(r.get(1)?)?);
                let seq = r.get::<_, i64>(2)? as u64;
                if heads.get(&key).is_some_and(|&h| h >= seq) {
                    continue;
                }
                out.push(decode_row(r.get(3)?, r.get(4)?)?);
            }
            Ok(out)
        })
    }

    /// Verifies and stores a batch of changes from a peer or the station.
    /// A batch with any bad change is refused whole; nothing is applied.
    pub fn apply_changes(&self, batch: Vec<Change>, origin: Origin) -> Result<ApplyOutcome> {
        let mut guard = self.writer()?;
        let w = &mut *guard;
        let tx = w.conn.transaction()?;
        let verified = verify_batch(batch, &SqlLookup(&tx))?;
        let now = self.clock.now_ms();
        let mut touched = BTreeSet::new();
        // Follow the peers' clocks, but none that is beyond the bound ahead
        // of this device's own wall clock.
        let mut observed = w.hlc;
        if origin == Origin::Station {
            // A partner's changes we already held are now known to be at
            // the station. This device's own are acknowledged only by a
            // push's checked receipts (a pull must not ack one whose
            // push answer was lost).
            let me = w.identity.as_ref().map(|i| i.device_id());
            let mut st = tx.prepare_cached(
                "UPDATE changes SET acked = 1 WHERE hash = ?1 AND acked = 0 AND device_id != ?2",
            )?;
            let mine: &[u8] = me.as_ref().map(|d| d.as_bytes().as_slice()).unwrap_or(&[]);
            for h in &verified.duplicate_hashes {
                st.execute(rusqlite::params![h.as_slice(), mine])?;
            }
        }
        for c in &verified.new {
            insert_change(&tx, c, origin == Origin::Station, now)?;
            touched.insert(c.report());
            observed = observed.observe(c.body().hlc, now.max(0) as u64);
        }
        let mut docs = Vec::with_capacity(touched.len());
        let mut units = std::collections::HashMap::new();
        for report in touched {
            let doc = load_doc(&tx, report)?;
            let state = Arc::new(doc.materialise());
            write_report_row(&tx, report, &state)?;
            units.insert(
                report,
                (
                    state
                        .field("reporting_officer.unit")
                        .and_then(Value::as_text)
                        .map(str::to_string),
                    state.creations.clone(),
                ),
            );
            docs.push((report, doc, state));
        }
        // Who may have made each change; one refused change refuses the batch.
        let mut people = std::collections::HashMap::new();
        for c in &verified.new {
            let device = c.device();
            if let std::collections::hash_map::Entry::Vacant(slot) = people.entry(device) {
                let record = log::device_record(&tx, device)?.ok_or(Error::UnknownDevice {
                    change: c.id().to_string(),
                })?;
                slot.insert(record);
            }
            let record = &people[&device];
            let person = &record.person;
            let (unit, creations) = units
                .get(&c.report())
                .map(|(u, cr)| (u.as_deref(), cr.as_slice()))
                .unwrap_or((None, &[]));
            workflow::authorize(c.body(), record, unit.unwrap_or(&person.unit))?;
            workflow::authorize_one_creation(c.body(), creations)?;
        }
        if w.identity.is_some() && observed != w.hlc {
            tx.execute(
                "UPDATE identity SET hlc_wall = ?1, hlc_counter = ?2 WHERE id = 1",
                params![observed.wall_ms as i64, observed.counter],
            )?;
        }
        tx.commit()?;
        for (report, doc, state) in docs {
            w.docs.put(report, doc, state);
        }
        w.hlc = observed;
        Ok(ApplyOutcome {
            applied: verified.new.len(),
            duplicates: verified.duplicates,
        })
    }

    /// Media that the changes a peer lacks (see
    /// [`Store::changes_missing_from`]) attach and this store holds: what
    /// to hand over beside them, so that the peer can forward them.
    pub fn media_for(&self, changes: &[Change]) -> Vec<String> {
        let mut shas = crate::model::media_refs(changes);
        shas.sort();
        shas.dedup();
        shas.retain(|sha| self.media.contains(sha));
        shas
    }

    /// Takes a media file a partner's phone handed over with the changes
    /// that attach it. The bytes must hash to `sha256` and a change this
    /// store holds must attach it (hand the changes over first); anything
    /// else is refused and nothing is kept. It is kept as not yet at the
    /// station, so the next sync forwards it with those changes.
    pub fn receive_peer_media(
        &self,
        sha256: &str,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<StoredMedia> {
        let Some(mime) = self.read(|c| attaching_mime_type(c, sha256))? else {
            return Err(Error::MediaNotFound(sha256.to_string()));
        };
        // Already in place (handed over before, the row maybe lost to a
        // crash): the row is made all the same.
        let stored = if self.media.contains(sha256) {
            StoredMedia {
                sha256: sha256.to_string(),
                size: self.media.open_reader(sha256)?.size(),
            }
        } else {
            self.media
                .ingest_expecting(read, sha256)?
                .ok_or_else(|| Error::InvalidValue {
                    path: "media/sha256".into(),
                    reason: "the bytes do not hash to the media's sha256",
                })?
        };
        let w = self.writer()?;
        w.conn.execute(
            "INSERT OR IGNORE INTO media (sha256, size, mime_type, stored_at, uploaded) VALUES (?1, ?2, ?3, ?4, 0)",
            params![stored.sha256, stored.size as i64, mime, self.clock.now_ms()],
        )?;
        Ok(stored)
    }

    pub fn has_change(&self, id: ChangeId) -> Result<bool> {
        self.read(|c| Ok(SqlLookup(c).stored(id)?.is_some()))
    }

    /// Checks the store against its own log: every change decodes and its
    /// signature verifies, every chain is intact, every materialised report
    /// equals a rebuild from its changes, and the next sequence number is
    /// past every change this device made. Returns the number of changes.
    pub fn verify_integrity(&self) -> Result<u64> {
        let w = self.writer()?;
        let c = &w.conn;
        let lookup = SqlLookup(c);
        let mut st = c.prepare(
            "SELECT report_id, body, signature, prev FROM changes ORDER BY device_id, seq",
        )?;
        let mut rows = st.query([])?;
        let mut reports = BTreeSet::new();
        let mut count = 0u64;
        let mut max_own = 0u64;
        let me = w.identity.as_ref().map(|i| i.device_id());
        while let Some(r) = rows.next()? {
            let report = uuid_of(r.get(0)?)?;
            let change = decode_row(r.get(1)?, r.get(2)?)?;
            let key = lookup.device_key(change.device())?.ok_or_else(|| {
                Error::Corrupt(format!("change {} of unknown device", change.id()))
            })?;
            change.verify(&key)?;
            let prev = hash_of(r.get(3)?)?;
            if change.body().prev.unwrap_or(ZERO_HASH) != prev || change.report() != report {
                return Err(Error::Corrupt(format!("change {} columns", change.id())));
            }
            if let Some(p) = change.body().prev {
                match lookup.stored_by_hash(&p)? {
                    Some((d, rep, seq))
                        if d == change.device() && rep == report && seq < change.body().seq => {}
                    _ => return Err(Error::Corrupt(format!("chain of change {}", change.id()))),
                }
            }
            if Some(change.device()) == me {
                max_own = max_own.max(change.body().seq);
            }
            reports.insert(report);
            count += 1;
        }
        if me.is_some() && w.next_seq <= max_own {
            return Err(Error::Corrupt("next sequence number reused".into()));
        }
        for report in reports {
            let doc = load_doc(c, report)?;
            let expected = Report::from_state(report, &doc.materialise()).to_canonical_json();
            let stored: String = c.query_row(
                "SELECT json FROM reports WHERE report_id = ?1",
                [report.as_bytes().as_slice()],
                |r| r.get(0),
            )?;
            if stored != expected {
                return Err(Error::Corrupt(format!("materialised report {report}")));
            }
        }
        Ok(count)
    }
}

/// The MIME type of the media entry a stored change attaches with
/// `sha256`, if any change does.
fn attaching_mime_type(c: &Connection, sha256: &str) -> Result<Option<String>> {
    let mut st = c.prepare("SELECT body, signature FROM changes ORDER BY id")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let change = decode_row(r.get(0)?, r.get(1)?)?;
        let mut entry = None;
        for op in &change.body().ops {
            if let (
                Target::EntryField {
                    collection,
                    entry: e,
                    field,
                },
                Action::Set(Value::Text(h)),
            ) = (&op.target, &op.action)
            {
                if collection == schema::MEDIA_COLLECTION && field == "sha256" && h == sha256 {
                    entry = Some(*e);
                }
            }
        }
        let Some(entry) = entry else { continue };
        let mime = change
            .body()
            .ops
            .iter()
            .find_map(|op| match (&op.target, &op.action) {
                (
                    Target::EntryField {
                        collection,
                        entry: e,
                        field,
                    },
                    Action::Set(Value::Text(m)),
                ) if collection == schema::MEDIA_COLLECTION
                    && *e == entry
                    && field == "mime_type" =>
                {
                    Some(m.clone())
                }
                _ => None,
            });
        return Ok(Some(
            mime.unwrap_or_else(|| "application/octet-stream".into()),
        ));
    }
    Ok(None)
}
