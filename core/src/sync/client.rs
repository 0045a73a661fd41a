//! The sync client (blocking; apps call it from a background thread).
//!
//! One `sync` run: refresh the device directory, upload pending media
//! (resumable: ask the station how much it holds, send the rest), push the
//! outbox (changes not yet acknowledged), then pull visible changes after the
//! persisted cursor and download media they reference. Everything that must
//! survive a restart is in the store (outbox = unacknowledged changes, media
//! `uploaded` flags, pull cursor), so a killed app resumes where it stopped.
//! Transient failures are retried with exponential backoff; every request is
//! idempotent on the station.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use uuid::Uuid;

use super::tls::{check_station_url, PinVerifier, StationPin};
use super::wire::*;
use crate::crdt::{Change, ChangeId};
use crate::error::{Error, Result};
use crate::evidence::DeviceIdentity;
use crate::model::media_refs;
use crate::store::{Origin, Store, StoredReceipt, WitnessStatus, WitnessedCheckpoint};
use crate::tlog::{
    check_consistency, check_inclusion, decode_hashes, Leaf, LeafView, LogError, NoteVerifier,
    SignedCheckpoint, SignedNote, TreeHash,
};

const KEY_URL: &str = "station_url";
const KEY_CREDENTIAL: &str = "station_credential";
const KEY_CURSOR: &str = "pull_cursor";
const KEY_PIN: &str = "station_pin";
/// The station's log verifier key (C2SP `name+id+key`), kept from first
/// contact.
const KEY_LOG_KEY: &str = "log_key";

/// Changes per push request (well under the station's limit).
pub const PUSH_BATCH: u32 = 500;
pub const PULL_PAGE: u32 = 500;
/// Bytes per media upload request.
pub const UPLOAD_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Devices,
    UploadMedia,
    Push,
    Pull,
    DownloadMedia,
    Done,
}

/// Items and bytes, done and total, of the current phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub items_done: u64,
    pub items_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Progress {
    fn start(phase: Phase, items_total: u64, bytes_total: u64) -> Progress {
        Progress {
            phase,
            items_done: 0,
            items_total,
            bytes_done: 0,
            bytes_total,
        }
    }
}

pub trait SyncProgress: Send + Sync {
    fn on_progress(&self, progress: Progress);
}

pub struct NoProgress;

impl SyncProgress for NoProgress {
    fn on_progress(&self, _: Progress) {}
}

/// Cancels a running sync from another thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub media_uploaded: u64,
    /// Media bytes actually sent in this run (a resumed upload sends only the rest).
    pub media_bytes_sent: u64,
    /// Changes the station acknowledged in this run, forwarded ones
    /// included.
    pub pushed: u64,
    /// Of those, changes of other devices (handed over phone to phone)
    /// this device forwarded.
    pub forwarded: u64,
    /// Forwarded changes the station refused (their author's phone was
    /// revoked before they reached it): kept here, not sent again.
    pub forward_refused: u64,
    /// Forwarded changes the station refused for another reason (an
    /// author it does not know, say, after a restore): kept, and tried
    /// again at the next sync.
    pub forward_set_aside: u64,
    pub pulled: u64,
    pub media_downloaded: u64,
    /// When this device requires witnesses: where they stand after this
    /// run.
    pub witnessed: Option<WitnessStatus>,
    /// The station was found restored from a backup in this run (its log
    /// says so): what this device then sent again.
    pub station_restored: Option<RestoreSeen>,
}

/// A station restore a device took in (docs/log.md, "A station restored
/// from a backup").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreSeen {
    /// The log's size at the backup: where the restored history goes on.
    pub restored_size: u64,
    /// The size of the tree this device held, which the station lost.
    pub held_size: u64,
    /// When the backup was made (the station's clock), ms.
    pub backup_at_ms: i64,
    /// Changes this device marked to send again.
    pub resent: u64,
}

pub struct SyncClient {
    base: String,
    credential: String,
    verifier: Arc<PinVerifier>,
    http: Client,
    /// Attempts per request before giving up (transient errors only).
    pub max_attempts: u32,
    pub backoff_start: Duration,
}

/// An HTTP client whose TLS accepts only the station key `verifier` pins.
/// `timeout` bounds whole requests (not the event stream, which is long).
fn http_client(verifier: &Arc<PinVerifier>, timeout: Option<Duration>) -> Result<Client> {
    let mut b = Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tls_backend_preconfigured(verifier.client_config()?);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| Error::Network(e.to_string()))
}

/// A transport error, or [`Error::PinMismatch`] when the handshake was
/// refused for the station's key (never retried).
fn network_error(verifier: &PinVerifier, e: reqwest::Error) -> Error {
    if verifier.mismatched() {
        Error::PinMismatch
    } else {
        Error::Network(e.to_string())
    }
}

/// Maps a response to the typed error the station's JSON body names.
fn check(resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(Error::Unauthorized);
    }
    let code = resp
        .json::<ErrorBody>()
        .map(|b| b.error)
        .unwrap_or_else(|_| "unknown".into());
    Err(Error::Station {
        status: status.as_u16(),
        code,
    })
}

fn transient(e: &Error) -> bool {
    match e {
        Error::Network(_) => true,
        Error::Station { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

impl SyncClient {
    /// A client for `base_url` with `credential`, accepting only the
    /// station key `pin`. Without a pin (tools and tests), the first key
    /// seen is held for this client's life.
    pub fn new(base_url: &str, credential: &str, pin: Option<StationPin>) -> Result<Self> {
        check_station_url(base_url)?;
        let verifier = PinVerifier::new(pin);
        Ok(SyncClient {
            base: base_url.trim_end_matches('/').to_string(),
            credential: credential.to_string(),
            http: http_client(&verifier, Some(Duration::from_secs(120)))?,
            verifier,
            max_attempts: 6,
            backoff_start: Duration::from_millis(100),
        })
    }

    /// The client for a store that has enrolled.
    pub fn for_store(store: &Store) -> Result<Self> {
        let url = store.sync_value(KEY_URL)?.ok_or(Error::NotEnrolled)?;
        let cred = store
            .sync_value(KEY_CREDENTIAL)?
            .ok_or(Error::NotEnrolled)?;
        let pin = store
            .sync_value(KEY_PIN)?
            .map(|p| StationPin::parse(&p))
            .transpose()?;
        if pin.is_none() && url.starts_with("https:") {
            // Enrollment over TLS always stores the pin.
            return Err(Error::Corrupt("station pin missing".into()));
        }
        Self::new(&url, &cred, pin)
    }

    /// The station key this client accepts (none yet before the first
    /// TLS handshake of an unpinned client, or over plain loopback HTTP).
    pub fn station_pin(&self) -> Option<StationPin> {
        self.verifier.pin()
    }

    /// Enrolls this device with a one-time code: creates its key pair,
    /// registers the public key, and installs the identity the station
    /// returns (the person comes from the enrollment record).
    ///
    /// The station's key is pinned on first contact (trust on first use).
    /// Prefer [`SyncClient::enroll_pinned`] with the pin the station's
    /// `enroll` command prints next to the code.
    pub fn enroll(store: &Store, base_url: &str, code: &str) -> Result<SyncClient> {
        Self::enroll_pinned(store, base_url, code, None)
    }

    /// As [`SyncClient::enroll`], refusing (before the code is sent) a
    /// station whose key is not `pin`. The pin is kept in the store and
    /// every later sync is held to it.
    pub fn enroll_pinned(
        store: &Store,
        base_url: &str,
        code: &str,
        pin: Option<StationPin>,
    ) -> Result<SyncClient> {
        if store.identity().is_some() {
            return Err(Error::IdentityExists);
        }
        check_station_url(base_url)?;
        let verifier = PinVerifier::new(pin);
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
        let device_id = Uuid::new_v4();
        let public_key = ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .to_bytes();
        let base = base_url.trim_end_matches('/');
        let resp = http_client(&verifier, Some(Duration::from_secs(120)))?
            .post(format!("{base}/v1/enroll"))
            .json(&EnrollRequest {
                code: code.to_string(),
                device_id,
                public_key: hex::encode(public_key),
            })
            .send()
            .map_err(|e| network_error(&verifier, e))?;
        let enrolled: EnrollResponse = check(resp)?
            .json()
            .map_err(|e| Error::Network(e.to_string()))?;
        if enrolled.device.device_id != device_id || enrolled.device.public_key != public_key {
            return Err(Error::Station {
                status: 200,
                code: "enrollment_mismatch".into(),
            });
        }
        let mut identity = DeviceIdentity::from_secret(device_id, secret, enrolled.device.person);
        identity.record.person_secret = enrolled.device.person_secret;
        store.install_identity(identity)?;
        store.set_sync_value(KEY_URL, base)?;
        let pin = verifier.pin();
        if let Some(pin) = pin {
            store.set_sync_value(KEY_PIN, &pin.to_string())?;
        }
        store.set_sync_value(KEY_CREDENTIAL, &enrolled.credential)?;
        let client = SyncClient::new(base, &enrolled.credential, pin)?;
        client.refresh_devices(store)?;
        Ok(client)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        rb.bearer_auth(&self.credential)
    }

    /// Runs a request, retrying transient failures with exponential backoff.
    fn retry<T>(&self, cancel: &CancelToken, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut delay = self.backoff_start;
        let mut attempt = 1;
        loop {
            cancel.check()?;
            match f() {
                Err(e) if transient(&e) && attempt < self.max_attempts => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn send(&self, rb: RequestBuilder) -> Result<Response> {
        check(
            self.auth(rb)
                .send()
                .map_err(|e| network_error(&self.verifier, e))?,
        )
    }

    fn json<T: serde::de::DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        self.send(rb)?
            .json()
            .map_err(|e| Error::Network(e.to_string()))
    }

    /// Fetches the device directory into the store.
    pub fn refresh_devices(&self, store: &Store) -> Result<usize> {
        let cancel = CancelToken::new();
        let resp: DevicesResponse = self.retry(&cancel, || {
            self.json(self.http.get(self.url("/v1/devices")))
        })?;
        for d in &resp.devices {
            store.add_known_device(d)?;
        }
        Ok(resp.devices.len())
    }

    /// One full sync. See the module documentation for the steps.
    pub fn sync(
        &self,
        store: &Store,
        progress: &dyn SyncProgress,
        cancel: &CancelToken,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        progress.on_progress(Progress::start(Phase::Devices, 1, 0));
        self.refresh_devices(store)?;
        self.reporting_log_trouble(store, cancel, |c| {
            // Before anything is sent: a station whose log does not extend
            // the one this device saw (restored from an old copy, or
            // forked) gets nothing, and the outbox stays as it is.
            c.check_log(store, cancel, &mut report)?;
            c.upload_media(store, progress, cancel, &mut report)?;
            c.push(store, progress, cancel, &mut report)
        })?;
        let wanted_media = self.pull(store, progress, cancel, &mut report)?;
        self.download_media(store, &wanted_media, progress, cancel, &mut report)?;
        // Last, so that no record waits on the witnesses to reach the
        // station.
        report.witnessed =
            self.reporting_log_trouble(store, cancel, |c| c.check_witnessed(store, cancel))?;
        progress.on_progress(Progress::start(Phase::Done, 0, 0));
        Ok(report)
    }

    fn upload_media(
        &self,
        store: &Store,
        progress: &dyn SyncProgress,
        cancel: &CancelToken,
        report: &mut SyncReport,
    ) -> Result<()> {
        let pending = store.pending_media()?;
        let mut p = Progress::start(
            Phase::UploadMedia,
            pending.len() as u64,
            pending.iter().map(|(_, s)| s).sum(),
        );
        progress.on_progress(p);
        for (sha, size) in pending {
            let mut file = store.media().open_reader(&sha)?;
            let base_done = p.bytes_done;
            loop {
                cancel.check()?;
                let status: MediaStatus = self.retry(cancel, || {
                    self.json(self.http.get(self.url(&format!("/v1/media/{sha}/status"))))
                })?;
                if status.received > size {
                    // A station claiming more than the file holds would
                    // have the upload loop ask forever.
                    return Err(Error::Station {
                        status: 200,
                        code: "media_status_beyond_size".into(),
                    });
                }
                p.bytes_done = base_done.saturating_add(status.received);
                progress.on_progress(p);
                if status.complete {
                    break;
                }
                // Send the rest, chunk by chunk, from what the station holds.
                let result =
                    (|| -> Result<()> {
                        let mut offset = status.received;
                        file.seek(SeekFrom::Start(offset))?;
                        let mut buf = vec![0u8; UPLOAD_CHUNK];
                        while offset < size {
                            cancel.check()?;
                            let n = read_full(&mut file, &mut buf)?;
                            if n == 0 {
                                return Err(Error::Corrupt(format!(
                                    "media {sha} shorter than recorded"
                                )));
                            }
                            self.send(
                                self.http
                                    .put(self.url(&format!(
                                        "/v1/media/{sha}?offset={offset}&total={size}"
                                    )))
                                    .body(buf[..n].to_vec()),
                            )?;
                            offset += n as u64;
                            report.media_bytes_sent += n as u64;
                            p.bytes_done = base_done.saturating_add(offset);
                            progress.on_progress(p);
                        }
                        Ok(())
                    })();
                match result {
                    Ok(()) => {}
                    // A dropped connection: ask again how much arrived.
                    Err(e) if transient(&e) => {
                        std::thread::sleep(self.backoff_start);
                    }
                    Err(e) => return Err(e),
                }
            }
            store.mark_media_uploaded(&sha)?;
            report.media_uploaded += 1;
            p.items_done += 1;
            progress.on_progress(p);
        }
        Ok(())
    }

    fn push(
        &self,
        store: &Store,
        progress: &dyn SyncProgress,
        cancel: &CancelToken,
        report: &mut SyncReport,
    ) -> Result<()> {
        let mut p = Progress::start(Phase::Push, store.outbox_len()?, 0);
        progress.on_progress(p);
        // This device's own changes first, then those it forwards for
        // partners, one author per batch. Forwarding never fails the
        // sync: an author whose batch the station refuses is set aside
        // until the next sync (for good, marked refused, when the station
        // says the author's phone was revoked first).
        loop {
            let batch = store.outbox(PUSH_BATCH)?;
            if batch.is_empty() {
                break;
            }
            self.push_batch(store, cancel, &batch)?;
            report.pushed += batch.len() as u64;
            p.items_done += batch.len() as u64;
            progress.on_progress(p);
        }
        let mut set_aside = std::collections::BTreeSet::new();
        loop {
            let batch = store.forward_outbox(PUSH_BATCH, &set_aside)?;
            let Some(author) = batch.first().map(Change::device) else {
                return Ok(());
            };
            match self.push_batch(store, cancel, &batch) {
                Ok(()) => {
                    report.pushed += batch.len() as u64;
                    report.forwarded += batch.len() as u64;
                }
                Err(Error::Station { status: 403, code }) if code == "device_revoked" => {
                    let ids: Vec<_> = batch.iter().map(Change::id).collect();
                    store.mark_forward_refused(&ids)?;
                    report.forward_refused += ids.len() as u64;
                }
                // The station refuses this author's changes for another
                // reason (a device it does not know, a change it holds
                // otherwise, not permitted): kept, tried at the next sync.
                Err(Error::Station { status, .. })
                    if (400..500).contains(&status) && status != 429 =>
                {
                    set_aside.insert(author);
                    report.forward_set_aside += batch.len() as u64;
                }
                Err(e) => return Err(e),
            }
            p.items_done += batch.len() as u64;
            progress.on_progress(p);
        }
    }

    /// Pushes one batch and keeps its checked receipts (the changes are
    /// then acknowledged).
    fn push_batch(&self, store: &Store, cancel: &CancelToken, batch: &[Change]) -> Result<()> {
        {
            let body = PushRequest {
                changes: batch.iter().map(WireChange::from_change).collect(),
            };
            let answer: PushResponse = self.retry(cancel, || {
                self.json(
                    self.http
                        .post(self.url("/v1/changes"))
                        .header(DEVICE_TIME_HEADER, store.wall_clock_ms().to_string())
                        .json(&body),
                )
            })?;
            let ids: Vec<_> = batch.iter().map(Change::id).collect();
            // Receipts that do not check, or a change without one, refuse
            // the rest of the sync and leave the batch in the outbox
            // (pushing it again is idempotent).
            let Some(log) = &answer.log else {
                // Stored, but the station could not read the receipts back:
                // the batch stays and is sent again (a duplicate push is
                // answered with the receipts).
                return Err(Error::Network(
                    "the station gave no log receipts; the changes stay in the outbox".into(),
                ));
            };
            let (cp, receipts) = self.check_receipts(store, cancel, batch, log)?;
            store.ack_with_receipts(&ids, Some((cp.size, &cp.note)), &receipts)?;
            Ok(())
        }
    }

    /// The station's log verifier key: kept from first contact (over the
    /// pinned TLS connection; an older enrollment learns it at its first
    /// sync with a log).
    fn log_key(&self, store: &Store, cancel: &CancelToken) -> Result<NoteVerifier> {
        if let Some(k) = store.sync_value(KEY_LOG_KEY)? {
            return NoteVerifier::parse(&k).map_err(Error::StationLog);
        }
        let text = self.retry(cancel, || {
            self.send(self.http.get(self.url("/v1/log/key")))?
                .text()
                .map_err(|e| Error::Network(e.to_string()))
        })?;
        let key = NoteVerifier::parse(&text).map_err(Error::StationLog)?;
        store.set_sync_value(KEY_LOG_KEY, &key.encode())?;
        Ok(key)
    }

    /// The newest checkpoint this device accepted, verified again (the
    /// store could have been written by another build).
    fn held_checkpoint(
        &self,
        store: &Store,
        key: &NoteVerifier,
    ) -> Result<Option<SignedCheckpoint>> {
        store
            .newest_log_checkpoint()?
            .map(|(_, note)| SignedCheckpoint::verify(note.as_bytes(), key))
            .transpose()
            .map_err(Error::StationLog)
    }

    /// Checks the station's newest checkpoint against the one this device
    /// holds, and keeps it.
    fn check_log(
        &self,
        store: &Store,
        cancel: &CancelToken,
        report: &mut SyncReport,
    ) -> Result<()> {
        let key = self.log_key(store, cancel)?;
        let note = self.retry(cancel, || {
            let resp = self
                .auth(self.http.get(self.url("/v1/log/checkpoint")))
                .send()
                .map_err(|e| network_error(&self.verifier, e))?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            check(resp)?
                .text()
                .map(Some)
                .map_err(|e| Error::Network(e.to_string()))
        })?;
        match note {
            Some(note) => match self.extends_held(store, cancel, &key, &note) {
                Ok(new) => store.record_log_checkpoint(new.size, &new.note),
                Err(Error::StationLog(problem)) if problem.is_history() => {
                    // A station restored from a backup says so in its log;
                    // any other history is refused.
                    match self.restore_explains(store, cancel, &key)? {
                        Some(seen) => {
                            report.station_restored = Some(seen);
                            Ok(())
                        }
                        None => Err(Error::StationLog(problem)),
                    }
                }
                Err(e) => Err(e),
            },
            // An empty log where this device saw entries: rolled back.
            None => match self.held_checkpoint(store, &key)? {
                Some(old) if old.size > 0 => Err(Error::StationLog(LogError::Shrunk {
                    seen: old.size,
                    presented: 0,
                })),
                _ => Ok(()),
            },
        }
    }

    /// Whether the station's log records a restore from a backup that
    /// explains why it no longer extends the tree this device holds: a
    /// restore leaf, in the station's newest signed tree, first after the
    /// restored tree, which is smaller than the held one and a prefix of
    /// the newest (by the station's consistency proof); and the newest
    /// tree extends the largest tree this device held up to the restored
    /// size. If so, the device takes in the restore
    /// ([`Store::accept_station_restore`]: what the station may have lost
    /// is sent again), holds the newest checkpoint, and tells the
    /// station's audit.
    fn restore_explains(
        &self,
        store: &Store,
        cancel: &CancelToken,
        key: &NoteVerifier,
    ) -> Result<Option<RestoreSeen>> {
        let Some(held) = self.held_checkpoint(store, key)? else {
            return Ok(None);
        };
        let answer: Option<RestoresResponse> = self.retry(cancel, || {
            let resp = self
                .auth(self.http.get(self.url("/v1/log/restores")))
                .send()
                .map_err(|e| network_error(&self.verifier, e))?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            check(resp)?
                .json()
                .map(Some)
                .map_err(|e| Error::Network(e.to_string()))
        })?;
        let Some(answer) = answer else {
            return Ok(None);
        };
        let newest = SignedCheckpoint::verify(answer.checkpoint.as_bytes(), key)
            .map_err(Error::StationLog)?;
        // The latest restore that explains it; never one this device
        // took in before (it cannot explain a later rollback).
        let accepted = store.accepted_restores()?;
        let mut found = None;
        for r in answer.restores.iter().rev() {
            if accepted.contains(&r.index) {
                continue;
            }
            let Ok(bytes) =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &r.leaf)
            else {
                continue;
            };
            let Ok(
                view @ LeafView::Restore {
                    restored_size,
                    restored_root,
                    backup_at_ms,
                },
            ) = LeafView::decode(&bytes)
            else {
                continue;
            };
            if r.index != restored_size || restored_size >= held.size || r.size != newest.size {
                continue;
            }
            let proof = decode_hashes(&r.proof).map_err(Error::StationLog)?;
            check_inclusion(&proof, newest.size, newest.root, r.index, view.hash())
                .map_err(Error::StationLog)?;
            if restored_size > 0 {
                let proof = self.consistency_proof(cancel, restored_size, newest.size)?;
                check_consistency(
                    &proof,
                    restored_size,
                    TreeHash(restored_root),
                    newest.size,
                    newest.root,
                )
                .map_err(Error::StationLog)?;
            }
            found = Some((r.index, restored_size, backup_at_ms));
            break;
        }
        let Some((restore_index, restored_size, backup_at_ms)) = found else {
            return Ok(None);
        };
        // What this device held of the history before the backup must be
        // in the restored one.
        let earlier = store
            .log_checkpoints_up_to(restored_size)?
            .map(|note| SignedCheckpoint::verify(note.as_bytes(), key))
            .transpose()
            .map_err(Error::StationLog)?;
        if let Some(earlier) = &earlier {
            self.check_one_history(cancel, earlier, &newest)?;
        }
        let trusted = earlier.as_ref().map_or(0, |e| e.size);
        let resent =
            store.accept_station_restore(restored_size, restore_index, trusted, &newest.note)?;
        store.record_log_checkpoint(newest.size, &newest.note)?;
        let body = LogAlarm {
            problem: format!(
                "restore seen: the log was restored to {restored_size} entries (this device held {}); {resent} changes to send again",
                held.size
            ),
            held: Some(held.note.clone()),
        };
        let _ = self.retry(cancel, || {
            self.send(self.http.post(self.url("/v1/log/alarm")).json(&body))
                .map(drop)
        });
        Ok(Some(RestoreSeen {
            restored_size,
            held_size: held.size,
            backup_at_ms,
            resent,
        }))
    }

    /// The consistency proof from the station between two sizes it signed.
    fn consistency_proof(
        &self,
        cancel: &CancelToken,
        old: u64,
        new: u64,
    ) -> Result<Vec<crate::tlog::TreeHash>> {
        if old == new || old == 0 {
            return Ok(Vec::new());
        }
        let p: ConsistencyResponse = self
            .retry(cancel, || {
                self.json(
                    self.http
                        .get(self.url(&format!("/v1/log/consistency?old={old}&new={new}"))),
                )
            })
            .map_err(|e| match e {
                // Both sizes are of checkpoints the log key signed: a log
                // that has no tree of one of them dropped it.
                Error::Station { status: 404, .. } => {
                    Error::StationLog(LogError::Forgotten { old, new })
                }
                e => e,
            })?;
        decode_hashes(&p.proof).map_err(|_| Error::StationLog(LogError::BadConsistency))
    }

    /// Checks that `a` and `b` (both signed by the log key) are one
    /// history: of one size, the same root; otherwise the smaller tree a
    /// prefix of the larger, by the station's consistency proof.
    fn check_one_history(
        &self,
        cancel: &CancelToken,
        a: &SignedCheckpoint,
        b: &SignedCheckpoint,
    ) -> Result<()> {
        let (small, big) = if a.size <= b.size { (a, b) } else { (b, a) };
        if small.size == big.size {
            return if small.root == big.root {
                Ok(())
            } else {
                Err(Error::StationLog(LogError::Forked { size: small.size }))
            };
        }
        let proof = self.consistency_proof(cancel, small.size, big.size)?;
        check_consistency(&proof, small.size, small.root, big.size, big.root)
            .map_err(Error::StationLog)
    }

    /// Verifies `note` (signed by the log key, a tree that extends the one
    /// this device holds) and returns it; stores nothing.
    fn extends_held(
        &self,
        store: &Store,
        cancel: &CancelToken,
        key: &NoteVerifier,
        note: &str,
    ) -> Result<SignedCheckpoint> {
        let new = SignedCheckpoint::verify(note.as_bytes(), key).map_err(Error::StationLog)?;
        if let Some(old) = self.held_checkpoint(store, key)? {
            if new.size < old.size {
                return Err(Error::StationLog(LogError::Shrunk {
                    seen: old.size,
                    presented: new.size,
                }));
            }
            self.check_one_history(cancel, &old, &new)?;
        }
        Ok(new)
    }

    /// With a witness quorum set: fetches the station's newest checkpoint
    /// cosigned by that many witnesses, counts the cosignatures of the
    /// required ones, checks it is one history with the tree this device
    /// holds (so the witnesses saw what it was shown) and keeps it.
    fn check_witnessed(
        &self,
        store: &Store,
        cancel: &CancelToken,
    ) -> Result<Option<WitnessStatus>> {
        let policy = store.witness_policy()?;
        if policy.quorum == 0 {
            return Ok(None);
        }
        let key = self.log_key(store, cancel)?;
        let note = self.retry(cancel, || {
            let resp = self
                .auth(
                    self.http
                        .get(self.url(&format!("/v1/log/cosigned?witnesses={}", policy.quorum))),
                )
                .send()
                .map_err(|e| network_error(&self.verifier, e))?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            check(resp)?
                .text()
                .map(Some)
                .map_err(|e| Error::Network(e.to_string()))
        })?;
        if let Some(note) = note {
            let cp = SignedCheckpoint::verify(note.as_bytes(), &key).map_err(Error::StationLog)?;
            let signed = SignedNote::parse(note.as_bytes()).map_err(Error::StationLog)?;
            let got = policy
                .witnesses
                .iter()
                .filter(|w| signed.cosigned_by(w).is_some())
                .count() as u32;
            if got < policy.quorum {
                return Err(Error::WitnessQuorum {
                    needed: policy.quorum,
                    got,
                });
            }
            let held = self.held_checkpoint(store, &key)?;
            if let Some(held) = &held {
                self.check_one_history(cancel, held, &cp)?;
            }
            if held.is_none_or(|h| h.size < cp.size) {
                // Newer than the tree this device holds: now the one the
                // next sync must extend.
                store.record_log_checkpoint(cp.size, &cp.note)?;
            }
            store.record_witnessed_checkpoint(&WitnessedCheckpoint {
                size: cp.size,
                note,
            })?;
        }
        store.witness_status()
    }

    /// Checks a checkpoint this device got from elsewhere (another phone,
    /// a witness, the public page) against the one it holds: a station
    /// that showed devices different trees is caught here. A consistent
    /// newer one is kept as the newest.
    pub fn observe_checkpoint(
        &self,
        store: &Store,
        cancel: &CancelToken,
        note: &str,
    ) -> Result<()> {
        let key = self.log_key(store, cancel)?;
        // Garbled, or another log's: the station is not to blame.
        let seen = SignedCheckpoint::verify(note.as_bytes(), &key).map_err(Error::NotThisLog)?;
        self.reporting_log_trouble(store, cancel, |c| {
            if let Some(held) = c.held_checkpoint(store, &key)? {
                c.check_one_history(cancel, &held, &seen)?;
            }
            store.record_log_checkpoint(seen.size, &seen.note)
        })
    }

    /// Runs `f`; if it finds the station's log inconsistent, tells the
    /// station's audit (best effort: a station that lies may not record
    /// it, which is why the error also reaches the officer) and returns
    /// the error.
    fn reporting_log_trouble<T>(
        &self,
        store: &Store,
        cancel: &CancelToken,
        f: impl FnOnce(&Self) -> Result<T>,
    ) -> Result<T> {
        let out = f(self);
        if let Err(Error::StationLog(problem)) = &out {
            let held = store.newest_log_checkpoint().ok().flatten().map(|(_, n)| n);
            let body = LogAlarm {
                problem: problem.to_string(),
                held,
            };
            let _ = self.retry(cancel, || {
                self.send(self.http.post(self.url("/v1/log/alarm")).json(&body))
                    .map(drop)
            });
        }
        out
    }

    /// Checks a push's receipts: each is for one of `batch`'s changes and
    /// proves it in the signed tree at its index, and that tree extends
    /// the one held. Returns the checkpoint and the receipts to keep.
    fn check_receipts(
        &self,
        store: &Store,
        cancel: &CancelToken,
        batch: &[Change],
        log: &PushLog,
    ) -> Result<(SignedCheckpoint, Vec<StoredReceipt>)> {
        let key = self.log_key(store, cancel)?;
        let cp = self.extends_held(store, cancel, &key, &log.checkpoint)?;
        let mut kept = Vec::with_capacity(log.receipts.len());
        // By (device, seq): a push holds up to a batch of changes, each
        // with its receipt.
        let by_author: std::collections::HashMap<(Uuid, u64), &Change> = batch
            .iter()
            .map(|c| ((c.device(), c.body().seq), c))
            .collect();
        for r in &log.receipts {
            let Some(change) = by_author.get(&(r.device, r.seq)).copied() else {
                return Err(Error::StationLog(LogError::BadInclusion));
            };
            let leaf = Leaf::Change {
                hash: *change.hash(),
                device: change.device(),
                seq: change.body().seq,
                report: change.report(),
                received_at_ms: r.received_at_ms,
            };
            let proof = decode_hashes(&r.proof).map_err(Error::StationLog)?;
            check_inclusion(&proof, cp.size, cp.root, r.index, leaf.hash())
                .map_err(Error::StationLog)?;
            kept.push(StoredReceipt {
                change: change.id(),
                index: r.index,
                received_at_ms: r.received_at_ms,
                tree_size: cp.size,
                proof: r.proof.clone(),
            });
        }
        // Every change pushed has its receipt, new or sent before.
        let received: std::collections::HashSet<ChangeId> = kept.iter().map(|k| k.change).collect();
        let missing = batch.iter().filter(|c| !received.contains(&c.id())).count() as u64;
        if missing > 0 {
            return Err(Error::StationLog(LogError::MissingReceipts { missing }));
        }
        Ok((cp, kept))
    }

    /// Returns the media hashes referenced by pulled changes.
    fn pull(
        &self,
        store: &Store,
        progress: &dyn SyncProgress,
        cancel: &CancelToken,
        report: &mut SyncReport,
    ) -> Result<Vec<String>> {
        let mut cursor: i64 = store
            .sync_value(KEY_CURSOR)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut p = Progress::start(Phase::Pull, 0, 0);
        let mut media = Vec::new();
        loop {
            let page: PullResponse = self.retry(cancel, || {
                self.json(
                    self.http
                        .get(self.url(&format!("/v1/changes?after={cursor}&limit={PULL_PAGE}"))),
                )
            })?;
            let changes = page
                .changes
                .iter()
                .map(WireChange::to_change)
                .collect::<Result<Vec<_>>>()?;
            media.extend(media_refs(&changes));
            let n = changes.len() as u64;
            self.apply_pulled(store, changes, cancel)?;
            cursor = page.next;
            store.set_sync_value(KEY_CURSOR, &cursor.to_string())?;
            report.pulled += n;
            p.items_done += n;
            p.items_total = p.items_done + u64::from(page.more);
            progress.on_progress(p);
            if !page.more {
                return Ok(media);
            }
        }
    }

    /// Applies a pulled page. A report that became visible mid-history
    /// lacks earlier chain links: fetch its whole history and apply again.
    fn apply_pulled(
        &self,
        store: &Store,
        changes: Vec<Change>,
        cancel: &CancelToken,
    ) -> Result<()> {
        match store.apply_changes(changes.clone(), Origin::Station) {
            Err(Error::BrokenChain { .. }) => {
                let mut reports: Vec<Uuid> = changes.iter().map(Change::report).collect();
                reports.sort();
                reports.dedup();
                let mut all = changes;
                for r in reports {
                    let resp: ReportChangesResponse = self.retry(cancel, || {
                        self.json(self.http.get(self.url(&format!("/v1/reports/{r}/changes"))))
                    })?;
                    for w in &resp.changes {
                        all.push(w.to_change()?);
                    }
                }
                store.apply_changes(all, Origin::Station).map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    fn download_media(
        &self,
        store: &Store,
        wanted: &[String],
        progress: &dyn SyncProgress,
        cancel: &CancelToken,
        report: &mut SyncReport,
    ) -> Result<()> {
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|h| !store.media().contains(h))
            .collect();
        let mut p = Progress::start(Phase::DownloadMedia, missing.len() as u64, 0);
        progress.on_progress(p);
        for sha in missing {
            let stored = self.retry(cancel, || {
                let mut resp = self.send(self.http.get(self.url(&format!("/v1/media/{sha}"))))?;
                let mime = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let mut read = |buf: &mut [u8]| {
                    cancel.check()?;
                    resp.read(buf).map_err(|e| Error::Network(e.to_string()))
                };
                Ok((store.media().ingest_expecting(&mut read, sha)?, mime))
            })?;
            let (Some(stored), mime) = stored else {
                return Err(Error::Station {
                    status: 200,
                    code: "media_hash_mismatch".into(),
                });
            };
            store.record_downloaded_media(&stored, &mime)?;
            report.media_downloaded += 1;
            p.items_done += 1;
            p.bytes_done += stored.size;
            progress.on_progress(p);
        }
        Ok(())
    }

    /// Listens to the station's event stream (supervisors), calling
    /// `on_event` for each report event until it returns false or the
    /// connection ends.
    pub fn listen_events(&self, on_event: impl FnMut(ReportEvent) -> bool) -> Result<()> {
        self.listen_events_until(&CancelToken::new(), on_event)
    }

    /// As [`SyncClient::listen_events`], and also returns `Cancelled` once
    /// `cancel` is set. The token is checked on every line the station
    /// sends, keep-alives included (every 15 s), so a cancel takes effect
    /// within that time even when no report changes.
    pub fn listen_events_until(
        &self,
        cancel: &CancelToken,
        mut on_event: impl FnMut(ReportEvent) -> bool,
    ) -> Result<()> {
        cancel.check()?;
        let resp = check(
            self.auth(http_client(&self.verifier, None)?.get(self.url("/v1/events")))
                .send()
                .map_err(|e| network_error(&self.verifier, e))?,
        )?;
        let reader = BufReader::new(resp);
        for line in reader.lines() {
            let line = line.map_err(|e| Error::Network(e.to_string()))?;
            cancel.check()?;
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(ev) = serde_json::from_str::<ReportEvent>(data.trim()) {
                    if !on_event(ev) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_full(file: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file
            .read(&mut buf[n..])
            .map_err(crate::store::media::read_error)?
        {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
