//! [`FieldReportStore`]: one device store (reports, signed changes, media)
//! and everything an app does with it, including sync with its station.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fieldreport_core::model::LifecycleState;
use fieldreport_core::store::{ListQuery, MediaMeta, Store, StoreKey, WitnessPolicy};
use fieldreport_core::sync::client::{CancelToken, Progress, SyncClient};
use fieldreport_core::tlog::CosignerKey;
use fieldreport_core::Error as CoreError;

use crate::error::{guard, FieldReportError, Result};
use crate::types::*;

/// Receives sync progress (called on the syncing thread).
#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    fn on_progress(&self, progress: SyncProgress);
}

/// Receives the station's live report events (supervisors). Return false to
/// stop listening.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    fn on_event(&self, event: ReportEvent) -> bool;
}

/// Cancels a running `sync` or `listen_events` from another thread.
#[derive(uniffi::Object, Default)]
pub struct SyncCancel {
    token: CancelToken,
}

#[uniffi::export]
impl SyncCancel {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn cancel(&self) {
        self.token.cancel()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

struct ProgressBridge(Option<Arc<dyn SyncListener>>);

impl fieldreport_core::sync::client::SyncProgress for ProgressBridge {
    fn on_progress(&self, progress: Progress) {
        if let Some(l) = &self.0 {
            l.on_progress(progress.into())
        }
    }
}

#[derive(uniffi::Object)]
pub struct FieldReportStore {
    store: Store,
}

/// Largest `read_media` answer, so one call cannot exhaust memory.
const MAX_MEDIA_READ: u32 = 16 << 20;

/// `path_of` only joins a name: anything but a hash is refused first.
fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn to_path(p: &str) -> Result<&Path> {
    if p.is_empty() {
        return Err(FieldReportError::InvalidInput {
            reason: "empty path".into(),
        });
    }
    Ok(Path::new(p))
}

#[uniffi::export]
impl FieldReportStore {
    /// Opens the store in `dir`, creating it if needed, encrypted at rest
    /// with `key` (32 bytes, see `generate_store_key`). A wrong key gives
    /// `WrongKey`; a store that fails to open is left exactly as it was. A
    /// store written by a build without encryption is encrypted on open.
    #[uniffi::constructor]
    pub fn open(dir: String, key: Vec<u8>) -> Result<Arc<Self>> {
        guard(|| {
            let key = StoreKey::from_bytes(&key)?;
            let store = Store::open_encrypted(to_path(&dir)?, key)?;
            Ok(Arc::new(FieldReportStore { store }))
        })
    }

    /// Changes the store key (the database is re-encrypted in one
    /// transaction; the old key stops working).
    pub fn rekey(&self, new_key: Vec<u8>) -> Result<()> {
        guard(|| Ok(self.store.rekey(StoreKey::from_bytes(&new_key)?)?))
    }

    /// Sign out and wipe: removes the store, its media and its directory.
    /// Refused with `UnsyncedWork` while anything has not reached the
    /// station, unless `force`. Afterwards every call gives `Wiped`; the app
    /// should also delete the key from the platform key store.
    pub fn wipe(&self, force: bool) -> Result<WipeResult> {
        guard(|| {
            let out = self.store.wipe(force)?;
            Ok(WipeResult {
                unsynced_changes: out.unsynced_changes,
                unsynced_media: out.unsynced_media,
            })
        })
    }

    /// This device and its person, once enrolled.
    pub fn identity(&self) -> Option<DeviceInfo> {
        guard(|| Ok(self.store.identity().map(Into::into))).unwrap_or(None)
    }

    /// Enrolls with a station using the one-time code an administrator
    /// issued: creates the device key, registers it and stores the
    /// credential. `station_pin` (`sha256//…`, printed by the station next
    /// to the code) is checked before the code is sent; without it the key
    /// the station presents now is pinned. Every later sync is held to the
    /// pin (`StationPinMismatch` otherwise). The URL must be `https://`
    /// (plain `http://` only to this machine).
    #[uniffi::method(default(station_pin = None))]
    pub fn enroll(
        &self,
        station_url: String,
        code: String,
        station_pin: Option<String>,
    ) -> Result<DeviceInfo> {
        guard(|| {
            let pin = station_pin
                .as_deref()
                .map(fieldreport_core::sync::StationPin::parse)
                .transpose()?;
            SyncClient::enroll_pinned(&self.store, &station_url, &code, pin)?;
            self.store
                .identity()
                .map(Into::into)
                .ok_or(FieldReportError::Internal)
        })
    }

    /// The station key pin held since enrollment (`sha256//…`), for the
    /// app to show; none before enrolling.
    pub fn station_pin(&self) -> Result<Option<String>> {
        guard(|| Ok(self.store.sync_value("station_pin")?))
    }

    /// Creates a draft report; returns its id.
    pub fn create_report(&self) -> Result<String> {
        guard(|| Ok(self.store.create_report()?.to_string()))
    }

    /// Sets a report field (`narrative`, `occurred.start`, …) in one signed
    /// change.
    pub fn set_field(&self, report_id: String, path: String, value: FieldValue) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store.set_field(r, &path, value.into())?;
            Ok(())
        })
    }

    /// Adds an entry (an agent, a use of force, an injury, …) to a
    /// collection; returns the entry's id.
    pub fn add_entry(
        &self,
        report_id: String,
        collection: String,
        fields: HashMap<String, FieldValue>,
    ) -> Result<String> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            let mut fields: Vec<(String, _)> =
                fields.into_iter().map(|(k, v)| (k, v.into())).collect();
            // Signed bytes should not depend on hash-map order.
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(self.store.add_entry(r, &collection, fields)?.to_string())
        })
    }

    pub fn set_entry_field(
        &self,
        report_id: String,
        collection: String,
        entry_id: String,
        field: String,
        value: FieldValue,
    ) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            let e = parse_id("entry id", &entry_id)?;
            self.store
                .set_entry_field(r, &collection, e, &field, value.into())?;
            Ok(())
        })
    }

    pub fn remove_entry(
        &self,
        report_id: String,
        collection: String,
        entry_id: String,
    ) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            let e = parse_id("entry id", &entry_id)?;
            self.store.remove_entry(r, &collection, e)?;
            Ok(())
        })
    }

    /// Copies the file at `path` into the store (streaming, hashed) and
    /// attaches it to the report. The original may be deleted afterwards.
    pub fn attach_media(
        &self,
        report_id: String,
        path: String,
        info: MediaInfo,
    ) -> Result<AttachedMedia> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            let meta = MediaMeta {
                mime_type: info.mime_type,
                file_name: info.file_name,
                captured_at_ms: info.captured_at_ms,
                latitude: info.latitude,
                longitude: info.longitude,
                caption: info.caption,
            };
            let a = self.store.attach_media(r, to_path(&path)?, meta)?;
            Ok(AttachedMedia {
                entry_id: a.entry.to_string(),
                sha256: a.sha256,
                size: a.size,
            })
        })
    }

    /// Up to `length` bytes (at most 16 MiB) of a media file from `offset`,
    /// decrypted; fewer at the end of the file, none past it. Read a photo
    /// in one call, a video in pieces.
    pub fn read_media(&self, sha256: String, offset: u64, length: u32) -> Result<Vec<u8>> {
        guard(|| {
            use std::io::{Read, Seek, SeekFrom};
            if !is_hash(&sha256) {
                return Err(FieldReportError::InvalidInput {
                    reason: "not a SHA-256 hash".into(),
                });
            }
            let length = length.min(MAX_MEDIA_READ) as usize;
            let mut r = self.store.media().open_reader(&sha256)?;
            let start = offset.min(r.size());
            r.seek(SeekFrom::Start(start)).map_err(CoreError::from)?;
            let mut out = Vec::with_capacity(length.min((r.size() - start) as usize));
            r.take(length as u64)
                .read_to_end(&mut out)
                .map_err(fieldreport_core::store::media::read_error)?;
            Ok(out)
        })
    }

    /// The current value of a field or entry field (`narrative`,
    /// `force/<entry-id>/type`); null when unset. A field in conflict gives
    /// its displayed value; `report()` lists all of them.
    pub fn field(&self, report_id: String, path: String) -> Result<Option<FieldValue>> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            Ok(self.store.field_value(r, &path)?.map(Into::into))
        })
    }

    /// The report with its conflicts and media.
    pub fn report(&self, report_id: String) -> Result<ReportView> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            let rep = self.store.report(r)?;
            let json = rep.to_canonical_json();
            let media = rep
                .media
                .iter()
                .map(|m| MediaView {
                    entry_id: m.id.to_string(),
                    sha256: m.fields.sha256.clone(),
                    size: m.fields.size,
                    mime_type: m.fields.mime_type.clone(),
                    captured_at_ms: m.fields.captured_at.map(|t| t.timestamp_millis()),
                    stored_locally: m
                        .fields
                        .sha256
                        .as_deref()
                        .is_some_and(|s| is_hash(s) && self.store.media().contains(s)),
                })
                .collect();
            Ok(ReportView {
                id: rep.id.to_string(),
                lifecycle: rep.lifecycle.as_str().to_string(),
                created_by_device: rep.created_by_device.map(|d| d.to_string()),
                conflicts: rep.conflicts.into_iter().map(Into::into).collect(),
                media,
                return_comment: rep.return_comment,
                review_due_ms: rep.review.due.map(|t| t.timestamp_millis()),
                review_done_ms: rep.review.completed_at.map(|t| t.timestamp_millis()),
                amended_paths: rep.amendments.into_iter().map(|a| a.path).collect(),
                json,
            })
        })
    }

    /// Every value a field or entry ever had, oldest first, with who set it.
    pub fn field_history(&self, report_id: String, path: String) -> Result<Vec<HistoryItem>> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            Ok(self
                .store
                .field_history(r, &path)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
    }

    /// Settles a conflict by setting `value` over every live value. The
    /// conflict stays in the history.
    pub fn resolve_conflict(
        &self,
        report_id: String,
        path: String,
        value: FieldValue,
    ) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store.resolve_conflict(r, &path, value.into())?;
            Ok(())
        })
    }

    /// Submits a draft (or returned) report once the required fields are
    /// filled; `MissingRequired` names the empty ones.
    pub fn submit(&self, report_id: String) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store.submit(r)?;
            Ok(())
        })
    }

    /// Returns a submitted report to its officer with a comment
    /// (supervisors of the report's unit).
    pub fn return_report(&self, report_id: String, comment: String) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store.return_report(r, &comment)?;
            Ok(())
        })
    }

    /// Approves a submitted report; its fields lock, addenda stay open.
    pub fn approve(&self, report_id: String) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store.approve(r)?;
            Ok(())
        })
    }

    /// Refers an approved report's felony matters to the State's Attorney.
    pub fn refer(
        &self,
        report_id: String,
        date_ms: i64,
        reference: String,
        felonies: Vec<String>,
    ) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store.refer(r, date_ms, &reference, felonies)?;
            Ok(())
        })
    }

    /// Closes an approved or referred report.
    pub fn close(&self, report_id: String) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store.close(r)?;
            Ok(())
        })
    }

    /// Records the 30-day internal review.
    pub fn record_review(
        &self,
        report_id: String,
        findings: String,
        cpd_conduct: String,
        dispatch_knew: bool,
    ) -> Result<()> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            self.store
                .record_review(r, &findings, &cpd_conduct, dispatch_knew)?;
            Ok(())
        })
    }

    /// Reports, most recently updated first. `lifecycle` filters (`draft`,
    /// `submitted`, …); `limit` 0 means 50; `after` continues a previous page.
    pub fn list_reports(
        &self,
        lifecycle: Option<String>,
        limit: u32,
        after: Option<ListPosition>,
    ) -> Result<Vec<ReportListItem>> {
        guard(|| {
            let lifecycle = match lifecycle {
                None => None,
                Some(l) => Some(LifecycleState::parse(&l).ok_or_else(|| {
                    FieldReportError::InvalidInput {
                        reason: "unknown lifecycle state".into(),
                    }
                })?),
            };
            let q = ListQuery {
                lifecycle,
                after: after.map(|a| a.to_cursor()).transpose()?,
                limit,
            };
            Ok(self
                .store
                .list_reports(&q)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
    }

    /// Changes made here that the station has not acknowledged yet.
    pub fn unsynced_count(&self) -> Result<u64> {
        guard(|| Ok(self.store.outbox_len()?))
    }

    /// One full sync with the station this store enrolled with: media up,
    /// changes up, changes and media down. Resumes where a previous run
    /// stopped; `cancel` stops it between requests.
    pub fn sync(
        &self,
        listener: Option<Arc<dyn SyncListener>>,
        cancel: Option<Arc<SyncCancel>>,
    ) -> Result<SyncSummary> {
        guard(|| {
            let client = SyncClient::for_store(&self.store)?;
            let token = cancel.map(|c| c.token.clone()).unwrap_or_default();
            Ok(client
                .sync(&self.store, &ProgressBridge(listener), &token)?
                .into())
        })
    }

    /// The newest checkpoint of the station's log this device accepted (a
    /// C2SP signed note), to show or to hand to another phone or an
    /// oversight office; none before the first sync with a log.
    pub fn log_checkpoint(&self) -> Result<Option<String>> {
        guard(|| Ok(self.store.newest_log_checkpoint()?.map(|(_, note)| note)))
    }

    /// Checks a checkpoint from elsewhere (another phone, a witness, the
    /// public page) against the one this device holds: one the station's
    /// log key signed that tells another history fails with
    /// `StationLogInconsistent` (and the station's audit is told).
    pub fn observe_log_checkpoint(&self, note: String) -> Result<()> {
        guard(|| {
            let client = SyncClient::for_store(&self.store)?;
            Ok(client.observe_checkpoint(&self.store, &CancelToken::new(), &note)?)
        })
    }

    /// Requires `quorum` of `witnesses` (C2SP cosigner keys,
    /// `name+id+key`, from the department's app configuration) to have
    /// cosigned a tree before this device counts its receipts in it as
    /// witnessed; 0 requires none. Checked at the end of every sync.
    pub fn set_required_witnesses(&self, witnesses: Vec<String>, quorum: u32) -> Result<()> {
        guard(|| {
            let keys = witnesses
                .iter()
                .map(|w| {
                    CosignerKey::parse(w.trim()).map_err(|_| CoreError::BadWitnesses {
                        reason: "a witness key is not a cosigner key (name+id+key)",
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(self
                .store
                .set_witness_policy(&WitnessPolicy::new(keys, quorum)?)?)
        })
    }

    /// Where the required witnesses stand (none when none are required).
    pub fn witness_status(&self) -> Result<Option<WitnessStatusInfo>> {
        guard(|| Ok(self.store.witness_status()?.map(Into::into)))
    }

    /// The station's receipts for this device's changes to a report: each
    /// proves the station's log holds the change (checked when it came).
    pub fn log_receipts(&self, report_id: String) -> Result<Vec<LogReceiptInfo>> {
        guard(|| {
            let r = parse_id("report id", &report_id)?;
            Ok(self
                .store
                .receipts_of_report(r)?
                .into_iter()
                .map(Into::into)
                .collect())
        })
    }

    /// Listens to the station's live report events (supervisors see their
    /// unit's reports as officers push them). Blocks until the listener
    /// returns false, `cancel` is set (checked at least every 15 s) or the
    /// connection ends.
    pub fn listen_events(
        &self,
        listener: Arc<dyn EventListener>,
        cancel: Arc<SyncCancel>,
    ) -> Result<()> {
        guard(|| {
            let client = SyncClient::for_store(&self.store)?;
            client.listen_events_until(&cancel.token, |ev| {
                listener.on_event(ReportEvent {
                    report_id: ev.report_id.to_string(),
                    kind: ev.kind,
                })
            })?;
            Ok(())
        })
    }
}
