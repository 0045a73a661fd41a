//! What outside parties say of the log's checkpoints (docs/log.md): an
//! RFC 3161 time-stamp authority's token ("these bytes existed then") and
//! witnesses' cosignatures ("this tree extends every one I cosigned of
//! this log"). Both are asked for over HTTP, checked on receipt, and kept
//! beside the checkpoint (`log_attestations`); evidence packages carry
//! them. The station's own log signature is [`crate::storage::transparency`].
//!
//! The station attests its newest checkpoint every `interval` in the
//! background, and an export attests the checkpoint its package holds.
//! One process attests one checkpoint at a time (`lock`), so a witness is
//! never asked about an older tree after a newer one.

use std::sync::Arc;
use std::time::Duration;

use fieldreport_core::timestamp;
use fieldreport_core::tlog::{CosignerKey, SignedCheckpoint, SignedNote};

use crate::error::{Result, StationError};
use crate::storage::{Attestation, AttestationKind, StationStorage};

/// How long one request to an authority or a witness may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a witness that names another old size is asked again.
const CONFLICT_RETRIES: usize = 3;
/// The largest answer read from an authority or a witness.
const MAX_ANSWER: usize = fieldreport_core::timestamp::MAX_RESPONSE;
/// The shortest time between background rounds (a failing party is asked
/// again each round).
const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// A witness the station submits its checkpoints to.
#[derive(Debug, Clone)]
pub struct WitnessEndpoint {
    /// Its tlog-witness URL prefix (`…/add-checkpoint` is appended).
    pub url: String,
    /// Its cosigner key (`name+id+key`): a cosignature that does not
    /// verify with it is refused.
    pub key: CosignerKey,
}

/// Who attests this station's checkpoints (none: the embedded demo).
#[derive(Debug, Default)]
pub struct Attestors {
    /// The RFC 3161 authority's URL.
    pub timestamp_url: Option<String>,
    /// Roots (DER) the authority's signer must chain to, checked on
    /// receipt (required with `timestamp_url`).
    pub timestamp_anchors: Vec<Vec<u8>>,
    pub witnesses: Vec<WitnessEndpoint>,
    pub interval: Duration,
    http: Option<reqwest::Client>,
    lock: tokio::sync::Mutex<()>,
}

/// What one attestation round got and what failed (no personal data: the
/// parties' URLs and names, sizes, reasons).
#[derive(Debug, Default)]
pub struct Round {
    pub size: u64,
    pub got: Vec<Attestation>,
    pub failed: Vec<(String, String)>,
}

impl Attestors {
    /// No time-stamps, no witnesses.
    pub fn none() -> Arc<Attestors> {
        Arc::new(Attestors::default())
    }

    pub fn new(
        timestamp_url: Option<String>,
        timestamp_anchors: Vec<Vec<u8>>,
        witnesses: Vec<WitnessEndpoint>,
        interval: Duration,
    ) -> Result<Arc<Attestors>> {
        if timestamp_url.is_some() && timestamp_anchors.is_empty() {
            // Without a root, anyone on the path to the authority could
            // answer with a token of their own, kept for good.
            return Err(StationError::Unavailable(
                "a time-stamp authority needs its root certificate (timestamp_ca)".into(),
            ));
        }
        for url in timestamp_url.iter().chain(witnesses.iter().map(|w| &w.url)) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(StationError::Unavailable(format!(
                    "the attestation URL {url} is not an http(s) URL"
                )));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StationError::Internal(format!("HTTP client: {e}")))?;
        Ok(Arc::new(Attestors {
            timestamp_url,
            timestamp_anchors,
            witnesses,
            interval: interval.max(MIN_INTERVAL),
            http: Some(http),
            lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.timestamp_url.is_none() && self.witnesses.is_empty()
    }

    /// Runs `with` (which reads the checkpoint to attest, for example an
    /// export's material) and attests the checkpoint it returns, holding
    /// the attestation lock throughout.
    pub async fn attest_while<T, F>(
        &self,
        storage: &dyn StationStorage,
        with: F,
    ) -> Result<(T, Round)>
    where
        F: std::future::Future<Output = Result<(T, String)>>,
    {
        let _held = self.lock.lock().await;
        let (value, note) = with.await?;
        let round = self.attest_locked(storage, &note).await?;
        Ok((value, round))
    }

    /// Attests the newest checkpoint, if there is one.
    pub async fn attest_newest(&self, storage: &dyn StationStorage) -> Result<Option<Round>> {
        let _held = self.lock.lock().await;
        let Some(note) = storage.checkpoint().await? else {
            return Ok(None);
        };
        self.attest_locked(storage, &note).await.map(Some)
    }

    async fn attest_locked(&self, storage: &dyn StationStorage, note: &str) -> Result<Round> {
        let cp = SignedCheckpoint::verify(note.as_bytes(), &storage.log_verifier())
            .map_err(crate::storage::transparency::own_checkpoint)?;
        let mut round = Round {
            size: cp.size,
            ..Round::default()
        };
        let (Some(http), false) = (&self.http, self.is_empty()) else {
            return Ok(round);
        };
        let have = storage.attestations(cp.size).await?;
        let has = |kind: AttestationKind, party: &str| {
            have.iter().any(|a| a.kind == kind && a.party == party)
        };
        // Every party at once: one that is slow or down delays the round
        // by its own timeout only.
        let stamp = async {
            match &self.timestamp_url {
                Some(url) if !has(AttestationKind::Timestamp, url) => {
                    Some((url, self.time_stamp(http, url, note).await))
                }
                _ => None,
            }
        };
        let cp_ref = &cp;
        let cosigns = futures_util::future::join_all(
            self.witnesses
                .iter()
                .filter(|w| !has(AttestationKind::Cosignature, &w.key.name))
                .map(|w| async move { (w, self.cosign(http, storage, w, cp_ref, note).await) }),
        );
        let (stamp, cosigns) = tokio::join!(stamp, cosigns);
        match stamp {
            Some((url, Ok(body))) => round.got.push(
                self.keep(storage, &cp, AttestationKind::Timestamp, url, body)
                    .await?,
            ),
            Some((url, Err(e))) => round.failed.push((url.clone(), e)),
            None => {}
        }
        for (w, got) in cosigns {
            match got {
                Ok(line) => round.got.push(
                    self.keep(
                        storage,
                        &cp,
                        AttestationKind::Cosignature,
                        &w.key.name,
                        line.into_bytes(),
                    )
                    .await?,
                ),
                Err(e) => round.failed.push((w.key.name.clone(), e)),
            }
        }
        for (party, why) in &round.failed {
            tracing::warn!(%party, size = cp.size, reason = %why, "a checkpoint was not attested");
        }
        Ok(round)
    }

    async fn keep(
        &self,
        storage: &dyn StationStorage,
        cp: &SignedCheckpoint,
        kind: AttestationKind,
        party: &str,
        body: Vec<u8>,
    ) -> Result<Attestation> {
        let a = Attestation {
            size: cp.size,
            kind,
            party: party.to_string(),
            body,
            received_at_ms: storage.clock().now_ms(),
        };
        storage.add_attestation(a.clone()).await?;
        Ok(a)
    }

    /// The authority's response over the checkpoint's note as stored
    /// (and as packages carry it), checked.
    async fn time_stamp(
        &self,
        http: &reqwest::Client,
        url: &str,
        note: &str,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|_| "no randomness".to_string())?;
        let query = timestamp::request(note.as_bytes(), nonce).map_err(|e| e.to_string())?;
        let resp = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, timestamp::QUERY_MEDIA_TYPE)
            .body(query)
            .send()
            .await
            .map_err(|e| format!("unreachable: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("answered HTTP {}", resp.status().as_u16()));
        }
        let body = read_capped(resp).await?;
        timestamp::verify(&body, note.as_bytes(), Some(nonce), &self.timestamp_anchors)
            .map_err(|e| e.to_string())?;
        Ok(body)
    }

    /// The witness's cosignature line of the checkpoint (C2SP
    /// tlog-witness), from the size it last cosigned; a witness that names
    /// another size is asked again from that one.
    async fn cosign(
        &self,
        http: &reqwest::Client,
        storage: &dyn StationStorage,
        w: &WitnessEndpoint,
        cp: &SignedCheckpoint,
        note: &str,
    ) -> std::result::Result<String, String> {
        let mut old = storage
            .last_attested(AttestationKind::Cosignature, &w.key.name)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(0);
        let url = format!("{}/add-checkpoint", w.url.trim_end_matches('/'));
        for _ in 0..=CONFLICT_RETRIES {
            if old > cp.size {
                return Err(format!(
                    "the witness has cosigned a larger tree ({old}) than this checkpoint's {}",
                    cp.size
                ));
            }
            let proof = if old == 0 || old == cp.size {
                Vec::new()
            } else {
                storage
                    .consistency(old, cp.size)
                    .await
                    .map_err(|e| e.to_string())?
                    .proof
            };
            let mut body = format!("old {old}\n");
            for line in &proof {
                body.push_str(line);
                body.push('\n');
            }
            body.push('\n');
            body.push_str(note);
            let resp = http
                .post(&url)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("unreachable: {}", e.without_url()))?;
            let status = resp.status();
            let is_size = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/x.tlog.size"));
            let answer = read_capped(resp).await?;
            if status == reqwest::StatusCode::CONFLICT && is_size {
                old = std::str::from_utf8(&answer)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .ok_or("the witness named no size")?;
                continue;
            }
            if !status.is_success() {
                return Err(format!("refused with HTTP {}", status.as_u16()));
            }
            let text = String::from_utf8(answer).map_err(|_| "an answer not UTF-8")?;
            return cosignature_line(&text, cp, &w.key).ok_or_else(|| {
                "its answer holds no cosignature that verifies with its key".into()
            });
        }
        Err("the witness kept naming another size".into())
    }
}

/// The time-stamp response among a checkpoint's attestations.
pub fn timestamp_of(all: &[Attestation]) -> Option<Vec<u8>> {
    all.iter()
        .find(|a| a.kind == AttestationKind::Timestamp)
        .map(|a| a.body.clone())
}

/// The cosignature lines among a checkpoint's attestations.
pub fn cosignature_lines(all: &[Attestation]) -> Vec<String> {
    all.iter()
        .filter(|a| a.kind == AttestationKind::Cosignature)
        .filter_map(|a| String::from_utf8(a.body.clone()).ok())
        .collect()
}

/// The witness's verifying line among `answer`'s signature lines.
pub fn cosignature_line(answer: &str, cp: &SignedCheckpoint, key: &CosignerKey) -> Option<String> {
    answer.lines().find_map(|line| {
        let note = format!("{}\n{line}\n", cp.text);
        SignedNote::parse(note.as_bytes())
            .ok()?
            .cosigned_by(key)
            .map(|_| line.to_string())
    })
}

async fn read_capped(resp: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err("an answer too large".into());
    }
    let mut resp = resp;
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("the answer broke off: {}", e.without_url()))?
    {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err("an answer too large".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Attests the newest checkpoint every `interval` until `stop`.
pub fn spawn_attester(
    attestors: Arc<Attestors>,
    storage: Arc<dyn StationStorage>,
    stop: tokio_util::sync::CancellationToken,
) {
    if attestors.is_empty() {
        return;
    }
    tokio::spawn(async move {
        loop {
            if let Err(e) = attestors.attest_newest(storage.as_ref()).await {
                tracing::warn!(error = %e, "attesting the log's checkpoint failed; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(attestors.interval) => {}
            }
        }
    });
}

/// The signature-line text of a checkpoint note plus cosignature lines,
/// as phones and `verify` read a cosigned checkpoint.
pub fn cosigned_note(note: &str, lines: &[String]) -> String {
    let mut out = note.to_string();
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_without_its_root_or_a_url_that_is_not_http_is_refused() {
        let e = Attestors::new(
            Some("https://tsa.example/tsr".into()),
            Vec::new(),
            Vec::new(),
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(e.to_string().contains("timestamp_ca"), "{e}");
        let e = Attestors::new(
            Some("ftp://tsa.example/tsr".into()),
            vec![vec![0x30]],
            Vec::new(),
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an http(s) URL"), "{e}");
        let none = Attestors::new(None, Vec::new(), Vec::new(), Duration::from_secs(1)).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.interval, MIN_INTERVAL);
    }
}
