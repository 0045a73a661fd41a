//! The station's storage logic, once for every engine: enrollment and
//! credentials, visibility, verifying and authorizing pushes, materialising
//! reports, resumable media uploads, receipts, and what an evidence
//! package is made of. [`Service`] implements [`StationStorage`] over an
//! [`Engine`], which only runs SQL.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use fieldreport_core::crdt::{Change, ReportDoc};
use fieldreport_core::evidence::package::{DeviceEnrollment, LogMaterial};
use fieldreport_core::evidence::{verify_batch, DeviceRecord, Person};
use fieldreport_core::model::media_refs;
use fieldreport_core::store::MediaStore;
use fieldreport_core::sync::wire::{
    ConsistencyResponse, InclusionResponse, LogReceipt, MediaStatus, PushLog, Receipt,
    ReceiptsResponse, ReportEvent,
};
use fieldreport_core::tlog::{
    encode_hashes, report_commitment, Leaf, LeafView, NoteVerifier, SignedCheckpoint,
};
use fieldreport_core::{Report, Role};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::common::*;
use super::engine::{
    Engine, MediaRow, NewDevice, ReportRow, StoredChange, TxKind, Visibility, WriteTx,
};
use super::transparency::{self, LogSigner};
use super::{
    Attestation, AttestationKind, AuditEntry, Counts, DashboardAccount, Enrolled, ExportMaterial,
    PullPage, PushOutcome, StationStorage, CREDENTIAL_LIFETIME_MS,
};
use crate::clock::Clock;
use crate::error::{Result, StationError};

/// The station's storage: an engine's rows, the media files beside them,
/// and the rules.
pub struct Service<E> {
    engine: Arc<E>,
    media: MediaStore,
    partial_dir: PathBuf,
    scratch: PathBuf,
    data: PathBuf,
    clock: Arc<dyn Clock>,
    log: Arc<LogSigner>,
    /// Off only in the benchmark's baseline ([`Service::without_log_for_benchmark`]).
    log_on: bool,
}

impl<E> Clone for Service<E> {
    fn clone(&self) -> Self {
        Service {
            engine: self.engine.clone(),
            media: self.media.clone(),
            partial_dir: self.partial_dir.clone(),
            scratch: self.scratch.clone(),
            data: self.data.clone(),
            clock: self.clock.clone(),
            log: self.log.clone(),
            log_on: self.log_on,
        }
    }
}

/// Runs a write to completion on a task of its own: a request cancelled
/// mid-way (the device hung up) neither cuts a transaction off between two
/// statements nor leaves a media file half adopted.
async fn to_completion<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(f)
        .await
        .map_err(|_| StationError::Internal("storage task failed".into()))?
}

impl<E: Engine> Service<E> {
    /// The storage of `engine` with media files under `data/media`.
    pub fn new(engine: E, data: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        let media = MediaStore::open(data.join("media"))?;
        let partial_dir = data.join("media").join("partial");
        crate::files::private_dir(&partial_dir)?;
        // Exports are built here. Another process (the `export` command
        // beside a running server) may be using it, so only leftovers of a
        // crash, a day old, are removed.
        let scratch = data.join("exports-tmp");
        crate::files::private_dir(&scratch)?;
        remove_stale(&scratch, Duration::from_secs(24 * 3600));
        let log = Arc::new(LogSigner::load_or_create(
            &data.join(crate::storage::transparency::LOG_KEY_FILE),
            None,
        )?);
        Ok(Service {
            log,
            engine: Arc::new(engine),
            media,
            partial_dir,
            scratch,
            data: data.to_path_buf(),
            clock,
            log_on: true,
        })
    }

    /// The same station with its transparency log off: pushes store
    /// changes without logging them. Only the benchmark's baseline uses
    /// it (the log's cost is measured against it in the same run); no
    /// configuration, flag or command reaches it, and a station run so
    /// would fail `log-check`.
    #[doc(hidden)]
    pub fn without_log_for_benchmark(mut self) -> Self {
        self.log_on = false;
        self
    }

    /// The engine underneath (tests reach its rows through it).
    #[doc(hidden)]
    pub fn engine(&self) -> &E {
        &self.engine
    }

    async fn require_visible(&self, who: &Enrolled, report: Uuid) -> Result<()> {
        // A report one may not see is indistinguishable from one that
        // does not exist.
        if self.engine.is_visible(&visibility(who), report).await? {
            Ok(())
        } else {
            Err(StationError::NotFound)
        }
    }
}

/// What the visibility SQL needs of a device.
pub fn visibility(who: &Enrolled) -> Visibility {
    Visibility {
        person_key: person_key(&who.record.person),
        supervisor: who.role() == Role::Supervisor,
        unit: who.unit().to_string(),
    }
}

/// Re-materialises `report` from all its changes inside `tx`; returns its
/// facts (unit, creations) and whether it is new.
async fn write_report(tx: &mut dyn WriteTx, report: Uuid) -> Result<(ReportFacts, bool)> {
    let changes = tx.report_changes(report).await?;
    // The merge is CPU work: off the async workers.
    let (mut row, creations) = blocking(move || {
        let mut doc = ReportDoc::new();
        for c in changes {
            doc.insert(Arc::new(c));
        }
        let state = doc.materialise();
        let r = Report::from_state(report, &state);
        let creator = r
            .created_by_device
            .ok_or_else(|| StationError::Internal("report without changes".into()))?;
        Ok((
            ReportRow {
                report_id: report,
                unit: String::new(),
                created_by: creator,
                lifecycle: r.lifecycle.as_str().to_string(),
                updated_ms: state.updated.map(|h| h.wall_ms as i64).unwrap_or(0),
                json: r.to_canonical_json(),
            },
            state.creations,
        ))
    })
    .await?;
    // A report belongs to its creator's unit.
    row.unit = tx.device_unit(row.created_by).await?.unwrap_or_default();
    let unit = row.unit.clone();
    let new = tx.put_report(row).await?;
    Ok((ReportFacts { unit, creations }, new))
}

fn parse_record(json: &str) -> Result<DeviceRecord> {
    serde_json::from_str(json).map_err(|_| StationError::Internal("device record".into()))
}

impl<E: Engine> Service<E> {
    async fn enroll_now(
        &self,
        code: String,
        device_id: Uuid,
        public_key: [u8; 32],
    ) -> Result<(DeviceRecord, String)> {
        let code = code.trim().to_ascii_lowercase();
        let key = ed25519_key(&public_key)?;
        let code_hash = digest(&code);
        let mut tx = self.engine.begin(TxKind::Log).await?;
        let Some(row) = tx.code(&code_hash).await? else {
            return Err(StationError::Unprocessable(
                "invalid_code",
                "unknown enrollment code".into(),
            ));
        };
        if row.used_at.is_some() {
            return Err(StationError::Unprocessable(
                "code_used",
                "enrollment code already used".into(),
            ));
        }
        let now = self.clock.now_ms();
        if row.expires_at <= now {
            return Err(StationError::Unprocessable(
                "code_expired",
                "enrollment code expired".into(),
            ));
        }
        let person: Person = serde_json::from_str(&row.person)
            .map_err(|_| StationError::Internal("person".into()))?;
        let mut record = DeviceRecord::new(device_id, key, person);
        // Only the device gets it; its creations reveal it (docs/sync.md).
        record.person_secret =
            Some(fieldreport_core::evidence::new_person_secret().map_err(StationError::Core)?);
        let credential = random_token(32)?;
        let json =
            serde_json::to_string(&record).map_err(|_| StationError::Internal("record".into()))?;
        let inserted = tx
            .insert_device(NewDevice {
                device_id,
                public_key,
                record: json,
                person_key: person_key(&record.person),
                role: record.person.role.as_str().to_string(),
                unit: record.person.unit.clone(),
                credential_hash: digest(&credential),
                enrolled_at: now,
                credential_expires_at: now.saturating_add(CREDENTIAL_LIFETIME_MS),
            })
            .await?;
        if !inserted {
            return Err(StationError::Conflict(
                "device_exists",
                "device id already enrolled".into(),
            ));
        }
        tx.mark_code_used(&code_hash, now, device_id).await?;
        tx.commit().await?;
        Ok((record, credential))
    }
    async fn push_now(&self, changes: Vec<Change>) -> Result<PushOutcome> {
        let mut tx = self.engine.begin(TxKind::Log).await?;
        // Log order is commit order: one pusher numbers changes at a time,
        // and a revocation (which takes the same lock) is ordered before
        // or after this push.
        tx.lock_log().await?;
        let facts = tx.chain_facts(&changes).await?;
        // Signature checks are the heavy part: off the async workers.
        let mut verified = blocking(move || Ok(verify_batch(changes, &facts)?)).await?;
        let authors: Vec<Uuid> = verified
            .new
            .iter()
            .map(|c| c.device())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        refuse_revoked(&verified.new, &tx.revoked_among(&authors).await?)?;
        // A change may attach media only once the station holds it.
        let shas = media_refs(&verified.new);
        if !shas.is_empty() {
            let complete = tx.complete_among(&shas).await?;
            if let Some(sha) = shas.iter().find(|s| !complete.contains(*s)) {
                return Err(StationError::Conflict(
                    "media_missing",
                    format!("media {sha} must be uploaded before the change that attaches it"),
                ));
            }
        }
        if verified.new.is_empty() {
            tx.commit().await?;
            // A push sent again (its answer lost) gets its receipts again.
            let log = self
                .receipts_best_effort(None, &verified.duplicate_hashes)
                .await;
            return Ok(PushOutcome {
                applied: 0,
                duplicates: verified.duplicates,
                events: Vec::new(),
                log,
            });
        }
        let duplicate_hashes = std::mem::take(&mut verified.duplicate_hashes);
        let received_at = self.clock.now_ms();
        let log_id = tx.append_changes(&verified.new, received_at).await?;
        // Both engines number a push's changes consecutively up to the head
        // they return (under the log lock).
        let first_id = log_id - verified.new.len() as i64 + 1;
        let stored: Vec<(i64, StoredChange)> = verified
            .new
            .iter()
            .enumerate()
            .map(|(k, c)| {
                (
                    first_id + k as i64,
                    StoredChange {
                        change: c.clone(),
                        received_at,
                    },
                )
            })
            .collect();
        // Authors see their reports; media are tied to reports.
        let pairs: Vec<(Uuid, Uuid)> = verified
            .new
            .iter()
            .map(|c| (c.device(), c.report()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        tx.grant_author_access(&pairs).await?;
        let refs: Vec<(String, Uuid)> = verified
            .new
            .iter()
            .flat_map(|c| {
                media_refs(std::slice::from_ref(c))
                    .into_iter()
                    .map(|sha| (sha, c.report()))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !refs.is_empty() {
            tx.add_media_refs(&refs).await?;
        }
        let touched: BTreeSet<Uuid> = verified.new.iter().map(|c| c.report()).collect();
        let mut events = Vec::new();
        let mut reports = HashMap::new();
        for report in touched {
            let (facts, new) = write_report(tx.as_mut(), report).await?;
            let event = (
                facts.unit.clone(),
                ReportEvent {
                    report_id: report,
                    log_id,
                    kind: if new { "new" } else { "changed" }.into(),
                },
            );
            tx.publish(&event).await?;
            events.push(event);
            reports.insert(report, facts);
        }
        let mut people = HashMap::new();
        for (device, record) in tx.device_records_of(&authors).await? {
            people.insert(device, parse_record(&record)?);
        }
        let (applied, duplicates) = (verified.new.len(), verified.duplicates);
        blocking(move || authorize_changes(&verified.new, &people, &reports)).await?;
        // The log takes the changes in the transaction that stores them:
        // a stored change is a logged one.
        let extended = if self.log_on {
            transparency::extend(tx.as_mut(), &self.log, stored).await?
        } else {
            None
        };
        tx.commit().await?;
        let log = self.receipts_best_effort(extended, &duplicate_hashes).await;
        Ok(PushOutcome {
            applied,
            duplicates,
            events,
            log,
        })
    }
    /// A push's receipts, or none if they cannot be read: the push is
    /// stored and committed, and must not turn into an error the phone
    /// would retry (the phone keeps such a batch and sends it again,
    /// which answers with the receipts).
    async fn receipts_best_effort(
        &self,
        extended: Option<transparency::Extended>,
        duplicates: &[[u8; 32]],
    ) -> Option<PushLog> {
        match self.receipts_of(extended, duplicates).await {
            Ok(log) => log,
            Err(e) => {
                tracing::warn!(error = %e, "push stored, but its log receipts could not be read");
                None
            }
        }
    }

    /// Each pushed change's inclusion proof to one checkpoint: the one that
    /// logged the push's new changes, else the newest. Stored hashes never
    /// change, so this is read after the commit.
    async fn receipts_of(
        &self,
        extended: Option<transparency::Extended>,
        duplicates: &[[u8; 32]],
    ) -> Result<Option<PushLog>> {
        if extended.is_none() && duplicates.is_empty() {
            return Ok(None);
        }
        let mut entries: Vec<(u64, Uuid, u64, i64)> = Vec::new();
        let (size, note) = match extended {
            Some(x) => {
                for (index, leaf) in x.changes {
                    if let Leaf::Change {
                        device,
                        seq,
                        received_at_ms,
                        ..
                    } = leaf
                    {
                        entries.push((index, device, seq, received_at_ms));
                    }
                }
                (x.checkpoint.size, x.checkpoint.note)
            }
            None => match self.engine.checkpoint(None).await? {
                Some(cp) => cp,
                None => return Ok(None),
            },
        };
        if !duplicates.is_empty() {
            entries.extend(
                self.engine
                    .logged_changes(duplicates)
                    .await?
                    .into_iter()
                    .filter(|(index, ..)| *index < size),
            );
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let indexes: Vec<u64> = entries.iter().map(|e| e.0).collect();
        let proofs = transparency::inclusion_proofs(self.engine.as_ref(), &indexes, size).await?;
        let receipts = entries
            .into_iter()
            .zip(proofs)
            .map(|((index, device, seq, received_at_ms), proof)| LogReceipt {
                device,
                seq,
                index,
                received_at_ms,
                proof: encode_hashes(&proof),
            })
            .collect();
        Ok(Some(PushLog {
            checkpoint: note,
            receipts,
        }))
    }

    async fn media_append_now(
        &self,
        sha256: String,
        offset: u64,
        total: u64,
        bytes: Vec<u8>,
    ) -> Result<MediaStatus> {
        let sha = sha256;
        let mut tx = self.engine.begin(TxKind::Media).await?;
        // Uploads of one file, from any process, one at a time.
        tx.lock_media(&sha).await?;
        let held = status(&sha, tx.media_row(&sha).await?);
        if held.complete {
            return Ok(held);
        }
        if offset != held.received {
            return Err(StationError::Conflict(
                "offset_mismatch",
                format!("the station holds {} bytes; send from there", held.received),
            ));
        }
        let partial = self.partial_dir.join(&sha);
        let received = blocking(move || write_chunk(&partial, offset, &bytes)).await?;
        if received < total {
            tx.put_media(
                &sha,
                MediaRow {
                    total,
                    received,
                    complete: false,
                },
            )
            .await?;
            tx.commit().await?;
            return Ok(MediaStatus {
                sha256: sha,
                received,
                complete: false,
            });
        }
        // Complete: the bytes must hash to the name.
        let media = self.media.clone();
        let (partial, name) = (self.partial_dir.join(&sha), sha.clone());
        if blocking(move || Ok(media.adopt(&partial, &name)?))
            .await?
            .is_none()
        {
            tx.delete_media(&sha).await?;
            tx.commit().await?;
            return Err(StationError::Unprocessable(
                "hash_mismatch",
                "the uploaded bytes do not match the hash; upload again from 0".into(),
            ));
        }
        tx.put_media(
            &sha,
            MediaRow {
                total,
                received: total,
                complete: true,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(MediaStatus {
            sha256: sha,
            received: total,
            complete: true,
        })
    }
}

#[async_trait]
impl<E: Engine> StationStorage for Service<E> {
    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    async fn create_enrollment(&self, person: Person, ttl_ms: i64) -> Result<(String, i64)> {
        // 10 bytes = 20 hex characters, typed by hand at enrollment.
        let code = random_token(10)?;
        let now = self.clock.now_ms();
        let expires = now.checked_add(ttl_ms).ok_or_else(|| {
            StationError::BadRequest("bad_ttl", "a code's lifetime is out of range".into())
        })?;
        let person =
            serde_json::to_string(&person).map_err(|_| StationError::Internal("person".into()))?;
        self.engine
            .insert_code(digest(&code), person, now, expires)
            .await?;
        Ok((code, expires))
    }

    async fn enroll(
        &self,
        code: &str,
        device_id: Uuid,
        public_key: [u8; 32],
    ) -> Result<(DeviceRecord, String)> {
        let (this, code) = (self.clone(), code.to_string());
        to_completion(async move { this.enroll_now(code, device_id, public_key).await }).await
    }

    async fn authenticate(&self, credential: &str) -> Result<Option<Enrolled>> {
        self.engine
            .device_by_credential(digest(credential))
            .await?
            .map(|r| enrolled_from_row(r.record, r.revoked_at, r.credential_expires_at))
            .transpose()
    }

    async fn device(&self, device: Uuid) -> Result<Option<Enrolled>> {
        self.engine
            .device(device)
            .await?
            .map(|r| enrolled_from_row(r.record, r.revoked_at, r.credential_expires_at))
            .transpose()
    }

    async fn retire_credential(&self, device: Uuid) -> Result<bool> {
        let unknown = digest(&random_token(32)?);
        self.engine.set_credential_hash(device, unknown).await
    }

    async fn dashboard_account(&self, star_number: &str) -> Result<Option<DashboardAccount>> {
        self.engine.dashboard_account(star_number).await
    }

    async fn dashboard_accounts(&self) -> Result<Vec<DashboardAccount>> {
        self.engine.dashboard_accounts().await
    }

    async fn put_dashboard_account(
        &self,
        account: DashboardAccount,
        replace: bool,
    ) -> Result<bool> {
        self.engine.put_dashboard_account(account, replace).await
    }

    async fn forget_sealed(&self) -> Result<Vec<Uuid>> {
        self.engine.forget_sealed().await
    }

    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.engine.setting(name).await
    }

    async fn put_setting_once(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        self.engine.put_setting_once(name, value).await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>> {
        self.engine
            .device_records()
            .await?
            .iter()
            .map(|r| parse_record(r).map(DeviceRecord::without_secret))
            .collect()
    }

    async fn directory(&self, who: &Enrolled) -> Result<Vec<DeviceRecord>> {
        let me = who.record.device_id;
        self.engine
            .directory_rows(&visibility(who), me)
            .await?
            .iter()
            .map(|(record, named)| directory_entry(record, *named, me))
            .collect()
    }

    async fn revoke(&self, device: Uuid) -> Result<bool> {
        self.engine.revoke(device, self.clock.now_ms()).await
    }

    async fn set_credential_expiry(&self, device: Uuid, expires_at_ms: i64) -> Result<bool> {
        self.engine
            .set_credential_expiry(device, expires_at_ms)
            .await
    }

    async fn push(&self, changes: Vec<Change>) -> Result<PushOutcome> {
        let this = self.clone();
        to_completion(async move { this.push_now(changes).await }).await
    }

    async fn pull(&self, who: &Enrolled, after: i64, limit: u32) -> Result<PullPage> {
        let (rows, head) = self
            .engine
            .pull_rows(&visibility(who), after, limit.saturating_add(1))
            .await?;
        let more = rows.len() > limit as usize;
        let mut changes = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last = after;
        for (id, change) in rows.into_iter().take(limit as usize) {
            last = id;
            changes.push(change);
        }
        // Nothing more is visible in this snapshot: skip past invisible
        // changes too (every lower id is committed).
        let next = if more { last } else { head.max(after) };
        Ok(PullPage {
            changes,
            next,
            more,
        })
    }

    async fn report_changes(&self, who: &Enrolled, report: Uuid) -> Result<Vec<Change>> {
        self.require_visible(who, report).await?;
        Ok(self
            .engine
            .report_changes(report)
            .await?
            .into_iter()
            .map(|s| s.change)
            .collect())
    }

    async fn report_json(&self, who: &Enrolled, report: Uuid) -> Result<String> {
        self.require_visible(who, report).await?;
        self.engine
            .report_json(report)
            .await?
            .ok_or(StationError::NotFound)
    }

    async fn audit(&self, entry: AuditEntry) -> Result<()> {
        self.engine.append_audit(entry).await
    }

    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.engine.audit_log(after, limit).await
    }

    async fn visible_reports(&self, who: &Enrolled) -> Result<Vec<String>> {
        self.engine.visible_report_jsons(&visibility(who)).await
    }

    async fn all_reports(&self) -> Result<Vec<String>> {
        self.engine.all_report_jsons().await
    }

    async fn media_status(&self, sha256: &str) -> Result<MediaStatus> {
        if !valid_sha(sha256) {
            return Err(bad_hash());
        }
        Ok(status(sha256, self.engine.media_row(sha256).await?))
    }

    async fn media_append(
        &self,
        sha256: &str,
        offset: u64,
        total: u64,
        bytes: &[u8],
    ) -> Result<MediaStatus> {
        check_chunk(sha256, offset, total, bytes.len())?;
        let (this, sha, bytes) = (self.clone(), sha256.to_string(), bytes.to_vec());
        to_completion(async move { this.media_append_now(sha, offset, total, bytes).await }).await
    }

    async fn media_path(&self, who: &Enrolled, sha256: &str) -> Result<PathBuf> {
        if !valid_sha(sha256) {
            return Err(bad_hash());
        }
        if !self.engine.media_visible(&visibility(who), sha256).await? {
            return Err(StationError::NotFound);
        }
        Ok(self.media.path_of(sha256))
    }

    async fn record_rejection(
        &self,
        device: Option<Uuid>,
        reason: &str,
        bytes: &[u8],
    ) -> Result<()> {
        self.engine
            .record_rejection(
                self.clock.now_ms(),
                device,
                reason.to_string(),
                bytes.to_vec(),
            )
            .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.engine.counts().await
    }

    fn scratch_dir(&self) -> PathBuf {
        self.scratch.clone()
    }

    fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    async fn record_clock_skew(
        &self,
        device: Uuid,
        reports: Vec<Uuid>,
        skew_ms: i64,
    ) -> Result<()> {
        self.engine
            .record_clock_skew(device, reports, skew_ms, self.clock.now_ms())
            .await
    }

    async fn receipts(&self, who: &Enrolled, report: Uuid) -> Result<ReceiptsResponse> {
        self.require_visible(who, report).await?;
        let changes = self
            .engine
            .report_changes(report)
            .await?
            .into_iter()
            .map(|s| Receipt {
                device: s.change.device(),
                seq: s.change.body().seq,
                received_at_ms: s.received_at,
                device_clock_ms: s.change.body().wall_clock_ms,
            })
            .collect();
        Ok(ReceiptsResponse {
            report_id: report,
            changes,
            clock_skew: self.engine.clock_skew(report).await?,
        })
    }

    fn log_verifier(&self) -> NoteVerifier {
        self.log.verifier()
    }

    async fn seal_log(&self) -> Result<Option<u64>> {
        if !self.log_on {
            return Ok(None);
        }
        // A log key that did not sign the log's checkpoints (lost and made
        // anew, or another station's) must not sign more of them.
        if let Some((size, note)) = self.engine.checkpoint(None).await? {
            SignedCheckpoint::verify(note.as_bytes(), &self.log.verifier()).map_err(|e| {
                StationError::Unavailable(format!(
                    "the log key does not verify the log's checkpoint {size} ({e}): restore the data directory's log.key (docs/log.md)"
                ))
            })?;
        }
        let this = self.clone();
        to_completion(async move {
            let mut tx = this.engine.begin(TxKind::Log).await?;
            tx.lock_log().await?;
            let x = transparency::extend(tx.as_mut(), &this.log, Vec::new()).await?;
            tx.commit().await?;
            Ok(x.map(|x| x.checkpoint.size))
        })
        .await
    }

    async fn checkpoint(&self) -> Result<Option<String>> {
        Ok(self.engine.checkpoint(None).await?.map(|(_, note)| note))
    }

    async fn checkpoint_of(&self, size: u64) -> Result<Option<String>> {
        Ok(self
            .engine
            .checkpoint(Some(size))
            .await?
            .map(|(_, note)| note))
    }

    async fn inclusion(&self, who: &Enrolled, index: u64, size: u64) -> Result<InclusionResponse> {
        if self.engine.checkpoint(Some(size)).await?.is_none() {
            return Err(transparency::unknown_size(size));
        }
        if index >= size {
            // No such entry in that tree.
            return Err(StationError::NotFound);
        }
        let row = self
            .engine
            .log_leaves(index, index.saturating_add(1))
            .await?
            .into_iter()
            .next()
            .ok_or(StationError::NotFound)?;
        // A change's leaf can be matched to its report by whoever knows the
        // report's id: only for those who may see the report (as if it did
        // not exist otherwise).
        if let Some(id) = row.1 {
            let stored = self.engine.changes_after(id.saturating_sub(1), 1).await?;
            match stored.first() {
                Some((sid, c)) if *sid == id => {
                    self.require_visible(who, c.change.report()).await?
                }
                _ => return Err(StationError::NotFound),
            }
        }
        let leaf = row.3;
        let proof = transparency::inclusion_proofs(self.engine.as_ref(), &[index], size)
            .await?
            .pop()
            .unwrap_or_default();
        Ok(InclusionResponse {
            index,
            size,
            leaf: B64.encode(leaf),
            proof: encode_hashes(&proof),
        })
    }

    async fn consistency(&self, old: u64, new: u64) -> Result<ConsistencyResponse> {
        if old > new {
            return Err(StationError::BadRequest(
                "bad_query",
                "the old size must not exceed the new one".into(),
            ));
        }
        for size in [old, new] {
            if size != 0 && self.engine.checkpoint(Some(size)).await?.is_none() {
                return Err(transparency::unknown_size(size));
            }
        }
        let proof = transparency::consistency_proof(self.engine.as_ref(), old, new).await?;
        Ok(ConsistencyResponse {
            old_size: old,
            new_size: new,
            proof: encode_hashes(&proof),
        })
    }

    async fn add_attestation(&self, a: Attestation) -> Result<()> {
        if self.engine.checkpoint(Some(a.size)).await?.is_none() {
            return Err(transparency::unknown_size(a.size));
        }
        self.engine.add_attestation(a).await
    }

    async fn attestations(&self, size: u64) -> Result<Vec<Attestation>> {
        let mut all = self.engine.attestations(size).await?;
        all.sort_by(|a, b| (a.kind.as_str(), &a.party).cmp(&(b.kind.as_str(), &b.party)));
        Ok(all)
    }

    async fn last_attested(&self, kind: AttestationKind, party: &str) -> Result<Option<u64>> {
        self.engine.last_attested(kind, party).await
    }

    async fn newest_cosigned(&self, witnesses: u32) -> Result<Option<u64>> {
        self.engine.newest_cosigned(witnesses.max(1)).await
    }

    async fn check_log(&self) -> Result<transparency::LogCheck> {
        transparency::check(self.engine.as_ref(), &self.log.verifier()).await
    }

    async fn record_restore(&self, backup_at_ms: i64) -> Result<u64> {
        let (restored_size, restored_root) = match self.engine.checkpoint(None).await? {
            Some((_, note)) => {
                let cp = SignedCheckpoint::verify(note.as_bytes(), &self.log.verifier()).map_err(
                    |e| {
                        StationError::Unavailable(format!(
                            "the restored log's checkpoint does not verify with its key: {e}"
                        ))
                    },
                )?;
                (cp.size, cp.root.0)
            }
            None => (0, [0; 32]),
        };
        // Once: a second restore entry on top of the first would say the
        // station was restored twice.
        if restored_size > 0 {
            let last = self
                .engine
                .log_leaves(restored_size - 1, restored_size)
                .await?;
            if last
                .first()
                .is_some_and(|row| matches!(Leaf::decode(&row.3), Ok(LeafView::Restore { .. })))
            {
                return Err(StationError::Conflict(
                    "restore_recorded",
                    "the log's newest entry already records a restore".into(),
                ));
            }
        }
        let this = self.clone();
        to_completion(async move {
            let mut tx = this.engine.begin(TxKind::Log).await?;
            tx.lock_log().await?;
            // The restore entry goes right after the restored tree: the
            // log must hold exactly the entries its checkpoint signed.
            let held = tx.log_backlog().await?.size;
            if held != restored_size {
                return Err(StationError::Unavailable(format!(
                    "the restored log holds {held} entries, its newest checkpoint {restored_size}: run log-check"
                )));
            }
            let leaf = Leaf::Restore {
                restored_size,
                restored_root,
                backup_at_ms,
            };
            let x = transparency::extend_with(tx.as_mut(), &this.log, Some(leaf), Vec::new())
                .await?
                .ok_or_else(|| StationError::Internal("restore leaf not logged".into()))?;
            if x.checkpoint.size <= restored_size {
                return Err(StationError::Internal("restore leaf not logged".into()));
            }
            tx.commit().await?;
            Ok(restored_size)
        })
        .await
    }

    async fn restores(&self) -> Result<fieldreport_core::sync::wire::RestoresResponse> {
        let Some((size, note)) = self.engine.checkpoint(None).await? else {
            return Err(StationError::NotFound);
        };
        let rows: Vec<(u64, Vec<u8>)> = self
            .engine
            .log_restores()
            .await?
            .into_iter()
            .filter(|(i, _)| *i < size)
            .collect();
        let indexes: Vec<u64> = rows.iter().map(|r| r.0).collect();
        let proofs = transparency::inclusion_proofs(self.engine.as_ref(), &indexes, size).await?;
        Ok(fieldreport_core::sync::wire::RestoresResponse {
            checkpoint: note,
            restores: rows
                .into_iter()
                .zip(proofs)
                .map(|((index, leaf), proof)| InclusionResponse {
                    index,
                    size,
                    leaf: B64.encode(leaf),
                    proof: encode_hashes(&proof),
                })
                .collect(),
        })
    }

    fn shared_events(&self) -> Option<broadcast::Sender<(String, ReportEvent)>> {
        self.engine.shared_events()
    }

    async fn export_material(
        &self,
        who: Option<&Enrolled>,
        reports: &[Uuid],
    ) -> Result<ExportMaterial> {
        let reports: Vec<Uuid> = reports
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Some(who) = who {
            for &report in &reports {
                self.require_visible(who, report).await?;
            }
        }
        // The changes, then the log: a change is logged in the transaction
        // that stores it, so every change read is in the checkpoint read
        // after it. A change of these reports logged in between (the
        // log holds more of a report than was read) means reading again.
        // A stored change the log lacks is kept in: the package's own
        // check names it and the export is refused.
        let mut attempt = 0;
        let (rows, checkpoint, leaves) = loop {
            attempt += 1;
            let rows = self.engine.export_rows(&reports).await?;
            let (size, checkpoint) = self
                .engine
                .checkpoint(None)
                .await?
                .ok_or_else(|| StationError::Internal("the log has no checkpoint".into()))?;
            let leaves: Vec<Vec<u8>> = self
                .engine
                .log_leaves(0, size)
                .await?
                .into_iter()
                .map(|row| row.3)
                .collect();
            if leaves.len() as u64 != size {
                return Err(StationError::Internal("the log is missing entries".into()));
            }
            let mut logged: HashMap<[u8; 32], usize> = HashMap::new();
            for leaf in &leaves {
                if let Ok(LeafView::Change { report, .. }) = Leaf::decode(leaf) {
                    *logged.entry(report).or_default() += 1;
                }
            }
            let caught_up = rows.reports.iter().all(|(r, stored)| {
                logged.get(&report_commitment(*r)).copied().unwrap_or(0) <= stored.len()
            });
            if caught_up || attempt == 5 {
                break (rows, checkpoint, leaves);
            }
        };
        let mut out = ExportMaterial {
            reports: Vec::new(),
            devices: Vec::new(),
            media: BTreeMap::new(),
            received: BTreeMap::new(),
            log: Some(LogMaterial {
                key: self.log_verifier(),
                checkpoint,
                leaves,
                // Filled by the export once the checkpoint is attested.
                timestamp: None,
                cosignatures: Vec::new(),
            }),
        };
        let mut authors = BTreeSet::new();
        for (report, stored) in rows.reports {
            if stored.is_empty() {
                return Err(StationError::NotFound);
            }
            let mut changes = Vec::with_capacity(stored.len());
            for s in stored {
                authors.insert(s.change.device());
                out.received
                    .insert(*s.change.hash(), receipt_time(s.received_at)?);
                changes.push(s.change);
            }
            for sha in media_refs(&changes) {
                if !rows.media.get(&sha).is_some_and(|m| m.complete) {
                    return Err(StationError::Conflict(
                        "media_incomplete",
                        format!("media {sha} of report {report} has not finished uploading"),
                    ));
                }
                out.media.insert(sha.clone(), self.media.path_of(&sha));
            }
            out.reports.push((report, changes));
        }
        for d in authors {
            let row = rows
                .devices
                .get(&d)
                .ok_or_else(|| StationError::Internal("an author is not enrolled".into()))?;
            out.devices.push(DeviceEnrollment {
                record: enrolled_from_row(row.record.clone(), None, None)?.record,
                enrolled_at: ms_time(Some(row.enrolled_at)),
                revoked_at: ms_time(row.revoked_at),
            });
        }
        Ok(out)
    }
}

/// A media file's upload status from its row (none: nothing held).
fn status(sha256: &str, row: Option<MediaRow>) -> MediaStatus {
    let row = row.unwrap_or(MediaRow {
        total: 0,
        received: 0,
        complete: false,
    });
    MediaStatus {
        sha256: sha256.to_string(),
        received: row.received,
        complete: row.complete,
    }
}

fn remove_stale(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a > age);
        if old {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
