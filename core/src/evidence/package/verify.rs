//! The verifier anyone can run on an evidence package. It trusts nothing in
//! the bag but the device keys in `devices.json` (which a court can compare
//! with the department's enrollment records) and reports every problem it
//! finds, each naming the file, and the change and device where there is one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, Read};
use std::path::Path;

use base64::Engine;
use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    attached_media, change_line, decode_path, media_path, package_time, pdf, receipt_line,
    receipts_path, replay, report_dir, report_json, DeviceEnrollment, DEVICES_FILE,
    LOG_CHECKPOINT_FILE, LOG_COSIGNATURES_FILE, LOG_KEY_FILE, LOG_LEAVES_FILE, LOG_TIMESTAMP_FILE,
    README_FILE,
};
use crate::crdt::{Change, ChangeId, Hash, OpId};
use crate::error::{Error, Result};
use crate::tlog::{
    report_commitment, CosignerKey, Leaf, LeafView, NoteVerifier, SignedCheckpoint, SignedNote,
    TreeBuilder,
};

/// One problem found in a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Path inside the bag.
    pub file: String,
    /// Line of the file, where it applies.
    pub line: Option<usize>,
    /// The change concerned (its id names the device too).
    pub change: Option<ChangeId>,
    pub problem: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, " line {l}")?;
        }
        if let Some(c) = &self.change {
            write!(f, ": change {c} (device {}, seq {})", c.device, c.seq)?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// The outcome of checking a package.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub reports: Vec<Uuid>,
    pub changes: usize,
    pub devices: usize,
    pub media_files: usize,
    /// The log checkpoint the package proved complete against (`None`
    /// when it was not checked, or did not verify).
    pub log: Option<LogFacts>,
    /// Set when completeness was not checked (`without_log`).
    pub log_skipped: bool,
    pub failures: Vec<Finding>,
}

/// What the package's log part showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFacts {
    pub origin: String,
    pub size: u64,
    /// The checkpoint was checked against a key given to the verifier
    /// (the published one), not only the one in the bag.
    pub published_key: bool,
    /// What the RFC 3161 time-stamp over the checkpoint says, if the
    /// package has one that checks.
    pub timestamp: Option<TimestampFacts>,
    /// The required witnesses whose cosignatures verify, with their times.
    pub cosigned_by: Vec<(String, DateTime<Utc>)>,
    /// Cosignature lines not checked (no key given for their witness).
    pub unchecked_cosignatures: usize,
    /// The package's own `Export-Time`, to set beside when the checkpoint
    /// was attested: completeness holds only up to the checkpoint.
    pub exported_at: Option<DateTime<Utc>>,
}

/// A checkpoint attested this long before the export is said to be old:
/// the package may lack what the station logged since (a package made
/// from an old checkpoint is complete only up to it).
pub const STALE_CHECKPOINT_SECS: i64 = 3600;

impl LogFacts {
    /// The newest outside time the checkpoint was attested at (its
    /// time-stamp, its checked cosignatures).
    pub fn attested_at(&self) -> Option<DateTime<Utc>> {
        self.timestamp
            .iter()
            .map(|t| t.time)
            .chain(self.cosigned_by.iter().map(|(_, at)| *at))
            .max()
    }

    /// How much older than the export the checkpoint's newest attestation
    /// is, when more than [`STALE_CHECKPOINT_SECS`].
    pub fn staleness(&self) -> Option<chrono::Duration> {
        let gap = self.exported_at? - self.attested_at()?;
        (gap.num_seconds() > STALE_CHECKPOINT_SECS).then_some(gap)
    }
}

/// A time-stamp over the package's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampFacts {
    pub time: DateTime<Utc>,
    /// The signing certificate's subject.
    pub signer: String,
    /// Its signer chains to an authority the verifier was given.
    pub trusted: bool,
}

/// How to check a package.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The station's published log key. Without it the key in
    /// `data/log/key.txt` is used, and the verdict says so.
    pub log_key: Option<NoteVerifier>,
    /// Do not check completeness (packages made before the log, or
    /// outside a station). The verdict says so.
    pub without_log: bool,
    /// Certificates (DER) of the time-stamp authorities trusted: when
    /// given, the checkpoint must carry a time-stamp whose signer chains
    /// to one of them.
    pub timestamp_anchors: Vec<Vec<u8>>,
    /// Witnesses whose cosignatures count.
    pub witnesses: Vec<CosignerKey>,
    /// How many of `witnesses` must have cosigned the checkpoint
    /// (`None`: all of them).
    pub witness_quorum: Option<usize>,
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            writeln!(
                f,
                "VERIFIED: {} report(s), {} signed change(s) from {} device(s), {} media file(s).",
                self.reports.len(),
                self.changes,
                self.devices,
                self.media_files
            )?;
            writeln!(
                f,
                "Manifests, signatures, device hash chains, media hashes, receipt times against revocations and the replay of the history into report.json and report.pdf all check."
            )?;
            match &self.log {
                Some(l) => {
                    writeln!(
                        f,
                        "Complete: the package holds every change of its reports that the station's log {} held at its checkpoint of {} entries, and nothing the log did not hold.",
                        l.origin, l.size
                    )?;
                    if !l.published_key {
                        writeln!(
                            f,
                            "NOT ANCHORED: the checkpoint was checked with the key in data/log/key.txt only, which whoever made the package chose. Compare that key with the one the department publishes, or pass it with --log-key."
                        )?;
                    }
                    match &l.timestamp {
                        Some(t) if t.trusted => writeln!(
                            f,
                            "Time-stamped: the log held all of it by {}, says {} (RFC 3161; its certificate chains to the root given with --tsa-cert).",
                            t.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            t.signer
                        )?,
                        Some(t) => writeln!(
                            f,
                            "Time-stamp NOT trusted: {} says {}, but its certificate was not checked against a root (pass --tsa-cert).",
                            t.signer,
                            t.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )?,
                        None => writeln!(f, "No time-stamp: nothing outside the station says when the log held it.")?,
                    }
                    for (name, at) in &l.cosigned_by {
                        writeln!(
                            f,
                            "Witnessed by {name} at {}: it checked this tree extends every one of this log it cosigned before.",
                            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )?;
                    }
                    if let Some(gap) = l.staleness() {
                        writeln!(
                            f,
                            "OLD CHECKPOINT: it was last attested {} hour(s) before the package's Export-Time; whatever the station logged after it is not covered. Ask a witness or the public page for the log's newest size, and compare it with {}.",
                            gap.num_hours(),
                            l.size
                        )?;
                    }
                    if l.unchecked_cosignatures > 0 {
                        writeln!(
                            f,
                            "{} cosignature(s) NOT checked: pass their witnesses' keys with --witness.",
                            l.unchecked_cosignatures
                        )?;
                    }
                    Ok(())
                }
                None => writeln!(
                    f,
                    "Completeness NOT checked (without the log): a change dropped from the package would not be found."
                ),
            }
        } else {
            writeln!(f, "FAILED: {} problem(s) found:", self.failures.len())?;
            for x in &self.failures {
                writeln!(f, "  - {x}")?;
            }
            Ok(())
        }
    }
}

struct Checker<'a> {
    dir: &'a Path,
    failures: Vec<Finding>,
}

impl Checker<'_> {
    fn fail(&mut self, file: &str, problem: impl Into<String>) {
        self.failures.push(Finding {
            file: file.to_string(),
            line: None,
            change: None,
            problem: problem.into(),
        });
    }
    fn fail_change(&mut self, file: &str, line: Option<usize>, c: ChangeId, problem: String) {
        self.failures.push(Finding {
            file: file.to_string(),
            line,
            change: Some(c),
            problem,
        });
    }
    fn fail_line(&mut self, file: &str, line: usize, problem: impl Into<String>) {
        self.failures.push(Finding {
            file: file.to_string(),
            line: Some(line),
            change: None,
            problem: problem.into(),
        });
    }
}

/// Checks the package in `dir`. `progress(done, total)` counts bytes
/// hashed. An `Err` means the directory could not be read at all; every
/// problem with its contents is a [`Finding`] in the verdict.
pub fn verify_package(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Verdict> {
    verify_package_with(dir, &VerifyOptions::default(), progress)
}

/// [`verify_package`] with options: the published log key, or no
/// completeness check.
pub fn verify_package_with(
    dir: &Path,
    options: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verdict> {
    if !dir.is_dir() {
        return Err(Error::Package(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut ck = Checker {
        dir,
        failures: Vec::new(),
    };
    let mut verdict = Verdict::default();

    // The declaration and the tag files.
    match fs::read_to_string(dir.join("bagit.txt")) {
        Ok(s) if s.starts_with("BagIt-Version: ") => {}
        Ok(_) => ck.fail("bagit.txt", "is not a BagIt declaration"),
        Err(_) => ck.fail("bagit.txt", "is missing"),
    }
    let info = match fs::read_to_string(dir.join("bag-info.txt")) {
        Ok(s) => parse_tags(&s),
        Err(_) => {
            ck.fail("bag-info.txt", "is missing");
            Vec::new()
        }
    };
    let tag = |k: &str| {
        info.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };

    // Payload manifest against the files present.
    let on_disk = walk(dir, "data")?;
    let manifest = read_manifest(&mut ck, "manifest-sha256.txt");
    let total: u64 = manifest.keys().filter_map(|p| on_disk.get(p)).sum::<u64>();
    let mut done = 0u64;
    let mut actual: BTreeMap<String, String> = BTreeMap::new();
    for (path, expected) in &manifest {
        if !safe_payload_path(path) {
            ck.fail(
                "manifest-sha256.txt",
                format!("lists `{path}`, which is not a path inside data/"),
            );
            continue;
        }
        if !on_disk.contains_key(path) {
            ck.fail(path, "is listed in manifest-sha256.txt but missing");
            continue;
        }
        let got = hash_file(&dir.join(path), &mut |n| {
            done += n;
            progress(done, total)
        })?;
        if &got != expected {
            ck.fail(
                path,
                format!("sha256 is {got}, manifest-sha256.txt says {expected}"),
            );
        }
        actual.insert(path.clone(), got);
    }
    for path in on_disk.keys() {
        if !manifest.contains_key(path) {
            ck.fail(path, "is not listed in manifest-sha256.txt");
        }
    }
    let oxum = format!("{}.{}", on_disk.values().sum::<u64>(), on_disk.len());
    match tag("Payload-Oxum") {
        Some(o) if o == oxum => {}
        Some(o) => ck.fail(
            "bag-info.txt",
            format!("Payload-Oxum says {o}, the payload is {oxum}"),
        ),
        None => {}
    }
    let tagmanifest = read_manifest(&mut ck, "tagmanifest-sha256.txt");
    for (path, expected) in &tagmanifest {
        if path.starts_with("data/") || path.contains("..") || path.starts_with('/') {
            ck.fail(
                "tagmanifest-sha256.txt",
                format!("lists `{path}`, which is not a tag file"),
            );
            continue;
        }
        match hash_file(&dir.join(path), &mut |_| {}) {
            Ok(got) if &got == expected => {}
            Ok(got) => ck.fail(
                path,
                format!("sha256 is {got}, tagmanifest-sha256.txt says {expected}"),
            ),
            Err(_) => ck.fail(path, "is listed in tagmanifest-sha256.txt but missing"),
        }
    }
    for needed in ["bag-info.txt", "manifest-sha256.txt"] {
        if !tagmanifest.contains_key(needed) {
            ck.fail("tagmanifest-sha256.txt", format!("does not cover {needed}"));
        }
    }

    // Device keys.
    let devices = read_devices(&mut ck);
    verdict.devices = devices.len();
    let keys: HashMap<Uuid, VerifyingKey> = devices
        .iter()
        .filter_map(|(id, d)| d.record.verifying_key().ok().map(|k| (*id, k)))
        .collect();
    for id in devices.keys() {
        if !keys.contains_key(id) {
            ck.fail(
                DEVICES_FILE,
                format!("device {id} has an invalid public key"),
            );
        }
    }

    // Reports.
    let station = tag("Exporting-Station").unwrap_or_default();
    let exported_at = tag("Export-Time").and_then(|t| {
        DateTime::parse_from_rfc3339(&t)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    });
    if exported_at.is_none() {
        ck.fail("bag-info.txt", "has no valid Export-Time");
    }
    let mut expected_files: BTreeSet<String> =
        [DEVICES_FILE.to_string(), README_FILE.to_string()].into();
    let mut attached: BTreeMap<String, Vec<(Option<i64>, ChangeId, String)>> = BTreeMap::new();
    let report_dirs: BTreeSet<String> = on_disk
        .keys()
        .filter_map(|p| p.strip_prefix("data/reports/"))
        .filter_map(|rest| rest.split('/').next())
        .map(str::to_string)
        .collect();
    if report_dirs.is_empty() {
        ck.fail("data/reports", "holds no report");
    }
    // The reports the package says it holds are the ones it holds: a
    // report dropped whole from a referral is named.
    let tagged: BTreeSet<String> = info
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case("FieldReport-Report"))
        .map(|(_, v)| v.trim().to_string())
        .collect();
    for missing in tagged.difference(&report_dirs) {
        ck.fail(
            &format!("data/reports/{missing}"),
            "is named in bag-info.txt (FieldReport-Report) but missing",
        );
    }
    for extra in report_dirs.difference(&tagged) {
        ck.fail(
            &format!("data/reports/{extra}"),
            "is not named in bag-info.txt (FieldReport-Report)",
        );
    }
    let mut logged: Vec<LoggedReport> = Vec::new();
    for name in report_dirs {
        let Ok(id) = Uuid::parse_str(&name) else {
            ck.fail(
                &format!("data/reports/{name}"),
                "is not named by a report id",
            );
            continue;
        };
        verdict.reports.push(id);
        let dir_rel = report_dir(id);
        for f in [
            "changes.jsonl",
            "receipts.jsonl",
            "report.json",
            "report.pdf",
        ] {
            expected_files.insert(format!("{dir_rel}/{f}"));
        }
        let history = check_history(&mut ck, id, &keys);
        let received = check_receipts(&mut ck, id, &history, &devices);
        let changes: Vec<Change> = history
            .into_iter()
            .filter(|(_, _, authentic)| *authentic)
            .map(|(_, c, _)| c)
            .collect();
        logged.push((id, changes.clone(), received.clone()));
        verdict.changes += changes.len();
        for (sha, size, c) in attached_media(&changes) {
            attached.entry(sha).or_default().push((
                size,
                c.id(),
                format!("{dir_rel}/changes.jsonl"),
            ));
        }

        // Replaying the verified history must give the bag's report.
        let report = replay(id, &changes);
        let json_rel = format!("{dir_rel}/report.json");
        match fs::read_to_string(dir.join(&json_rel)) {
            Ok(s) if s == report_json(&report) => {}
            Ok(s) => {
                let at = serde_json::from_str::<serde_json::Value>(&s)
                    .ok()
                    .and_then(|found| {
                        let want = serde_json::to_value(&report).ok()?;
                        first_difference(&want, &found, String::new())
                    })
                    .unwrap_or_else(|| "(whole file)".into());
                ck.fail(
                    &json_rel,
                    format!("differs from the replayed history at `{at}`"),
                );
            }
            Err(_) => ck.fail(&json_rel, "is missing"),
        }
        let pdf_rel = format!("{dir_rel}/report.pdf");
        if let Some(exported_at) = exported_at {
            let fresh = pdf::render(&pdf::PdfInput {
                report: &report,
                changes: &changes,
                devices: &devices,
                received: &received,
                station: &station,
                exported_at,
            });
            match fs::read(dir.join(&pdf_rel)) {
                Ok(b) if b == fresh => {}
                Ok(_) => ck.fail(
                    &pdf_rel,
                    "does not match a fresh rendering of the verified history",
                ),
                Err(_) => ck.fail(&pdf_rel, "is missing"),
            }
        }
    }

    // Completeness, against the station's log.
    for f in [
        LOG_CHECKPOINT_FILE,
        LOG_KEY_FILE,
        LOG_LEAVES_FILE,
        LOG_TIMESTAMP_FILE,
        LOG_COSIGNATURES_FILE,
    ] {
        expected_files.insert(f.to_string());
    }
    if options.without_log {
        verdict.log_skipped = true;
    } else {
        verdict.log = check_log(&mut ck, options, &logged).map(|mut l| {
            l.exported_at = exported_at;
            l
        });
    }

    // Media: the bytes must be what the signed changes attach.
    for (sha, refs) in &attached {
        let rel = media_path(sha);
        expected_files.insert(rel.clone());
        let Some(len) = on_disk.get(&rel) else {
            for (_, c, file) in refs {
                ck.fail_change(
                    file,
                    None,
                    *c,
                    format!("attaches media {sha}, which is missing from the bag"),
                );
            }
            continue;
        };
        verdict.media_files += 1;
        let got = match actual.get(&rel) {
            Some(h) => h.clone(),
            None => hash_file(&dir.join(&rel), &mut |_| {})?,
        };
        for (size, c, _) in refs {
            if &got != sha {
                ck.fail_change(
                    &rel,
                    None,
                    *c,
                    format!("the file's sha256 is {got}, but the signed change attaches {sha}"),
                );
            } else if let Some(size) = size {
                if *size != *len as i64 {
                    ck.fail_change(
                        &rel,
                        None,
                        *c,
                        format!("the file has {len} bytes, the signed change says {size}"),
                    );
                }
            }
        }
    }
    for path in on_disk.keys() {
        if !expected_files.contains(path) {
            let problem = if path.starts_with("data/media/") {
                "is not attached by any signed change"
            } else {
                "is not part of a FieldReport package"
            };
            ck.fail(path, problem);
        }
    }
    verdict.failures = ck.failures;
    Ok(verdict)
}

/// A report's authentic changes and their receipt times.
type LoggedReport = (Uuid, Vec<Change>, BTreeMap<Hash, DateTime<Utc>>);

/// Checks the package against the station's log: the checkpoint verifies
/// with the log key, the leaves hash to its root, and each report's change
/// leaves are exactly its changes in the package.
fn check_log(
    ck: &mut Checker,
    options: &VerifyOptions,
    reports: &[LoggedReport],
) -> Option<LogFacts> {
    const UNPROVEN: &str = "the package does not prove it is complete";
    let bag_key = match fs::read_to_string(ck.dir.join(LOG_KEY_FILE)) {
        Ok(t) => match NoteVerifier::parse(t.trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                ck.fail(
                    LOG_KEY_FILE,
                    format!("is not a verifier key ({e}): {UNPROVEN}"),
                );
                None
            }
        },
        Err(_) => {
            ck.fail(
                LOG_KEY_FILE,
                format!(
                    "is missing: {UNPROVEN} (a package made before the log: verify --without-log)"
                ),
            );
            None
        }
    };
    let key = match (&options.log_key, bag_key) {
        (Some(published), Some(bag)) if *published != bag => {
            ck.fail(
                LOG_KEY_FILE,
                format!(
                    "names the log key {}, not the published {}",
                    bag.encode(),
                    published.encode()
                ),
            );
            published.clone()
        }
        (Some(published), _) => published.clone(),
        (None, Some(bag)) => bag,
        (None, None) => return None,
    };
    let Ok(note) = fs::read(ck.dir.join(LOG_CHECKPOINT_FILE)) else {
        ck.fail(LOG_CHECKPOINT_FILE, format!("is missing: {UNPROVEN}"));
        return None;
    };
    let cp = match SignedCheckpoint::verify(&note, &key) {
        Ok(cp) => cp,
        Err(e) => {
            ck.fail(LOG_CHECKPOINT_FILE, format!("does not verify: {e}"));
            return None;
        }
    };
    // Read line by line: only this package's reports' entries are kept,
    // and no more lines than the checkpoint has entries are read.
    let Ok(file) = File::open(ck.dir.join(LOG_LEAVES_FILE)) else {
        ck.fail(LOG_LEAVES_FILE, format!("is missing: {UNPROVEN}"));
        return None;
    };
    let wanted: HashSet<[u8; 32]> = reports
        .iter()
        .map(|(id, ..)| report_commitment(*id))
        .collect();
    let mut views: Vec<(u64, [u8; 32], [u8; 32])> = Vec::new();
    let mut tree = TreeBuilder::default();
    // A log entry is under 200 characters: a longer line is refused
    // without reading it whole (a made-up bag must not fill memory).
    const MAX_LINE: u64 = 512;
    let mut reader = std::io::BufReader::new(file);
    let mut n = 0usize;
    loop {
        let mut raw = Vec::new();
        let read = std::io::Read::take(&mut reader, MAX_LINE + 1).read_until(b'\n', &mut raw);
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => {
                ck.fail(LOG_LEAVES_FILE, "cannot be read");
                return None;
            }
        }
        n += 1;
        if raw.last() == Some(&b'\n') {
            raw.pop();
        } else if raw.len() as u64 > MAX_LINE {
            ck.fail_line(LOG_LEAVES_FILE, n, "is too long to be a log entry");
            return None;
        }
        let line = String::from_utf8(raw);
        if tree.size() == cp.size {
            ck.fail(
                LOG_LEAVES_FILE,
                format!("holds more log entries than the checkpoint's {}", cp.size),
            );
            return None;
        }
        let decoded = line.ok().and_then(|l| {
            let b = base64::engine::general_purpose::STANDARD.decode(l).ok()?;
            LeafView::decode(&b).ok().map(|v| (b, v))
        });
        let Some((bytes, view)) = decoded else {
            ck.fail_line(LOG_LEAVES_FILE, n, "is not a log entry (base64)");
            return None;
        };
        if let LeafView::Change { report, body } = view {
            if wanted.contains(&report) {
                views.push((tree.size(), report, body));
            }
        }
        if tree.push(&bytes).is_err() {
            ck.fail_line(LOG_LEAVES_FILE, n, "cannot be added to the tree");
            return None;
        }
    }
    if tree.size() != cp.size {
        ck.fail(
            LOG_LEAVES_FILE,
            format!(
                "holds {} log entries, the checkpoint {}",
                tree.size(),
                cp.size
            ),
        );
        return None;
    }
    if tree.root().ok() != Some(cp.root) {
        ck.fail(
            LOG_LEAVES_FILE,
            "its entries do not hash to the checkpoint's root (altered, added or removed)",
        );
        return None;
    }
    for (id, changes, received) in reports {
        let commit = report_commitment(*id);
        // (A log holding one change twice would show one entry here; the
        // log itself never logs a change twice.)
        let mut in_log: HashMap<[u8; 32], u64> = views
            .iter()
            .filter(|(_, report, _)| *report == commit)
            .map(|(i, _, body)| (*body, *i))
            .collect();
        let hist = format!("{}/changes.jsonl", report_dir(*id));
        for c in changes {
            // A change without a receipt time was named already.
            let Some(at) = received.get(c.hash()) else {
                continue;
            };
            let leaf = Leaf::Change {
                hash: *c.hash(),
                device: c.device(),
                seq: c.body().seq,
                report: *id,
                received_at_ms: at.timestamp_millis(),
            };
            let found = match leaf.view() {
                LeafView::Change { body, .. } => in_log.remove(&body).is_some(),
                LeafView::Audit { .. } | LeafView::Restore { .. } => false,
            };
            if !found {
                ck.fail_change(
                    &hist,
                    None,
                    c.id(),
                    format!(
                        "is not in the station's log at its checkpoint of {} entries, with this receipt time (added, or its time altered)",
                        cp.size
                    ),
                );
            }
        }
        let mut dropped: Vec<u64> = in_log.into_values().collect();
        dropped.sort_unstable();
        for i in dropped {
            ck.fail(
                &hist,
                format!(
                    "log entry {i} is a change of this report that the package does not hold (dropped)"
                ),
            );
        }
    }
    let timestamp = check_timestamp(ck, options, &note);
    let (cosigned_by, unchecked_cosignatures) = check_cosignatures(ck, options, &cp);
    Some(LogFacts {
        origin: cp.origin,
        size: cp.size,
        published_key: options.log_key.is_some(),
        timestamp,
        cosigned_by,
        unchecked_cosignatures,
        exported_at: None,
    })
}

/// The time-stamp over the checkpoint's bytes: required (and its signer
/// checked) when the verifier trusts an authority; otherwise checked as
/// far as it can be and reported as not trusted.
fn check_timestamp(
    ck: &mut Checker,
    options: &VerifyOptions,
    note: &[u8],
) -> Option<TimestampFacts> {
    use crate::timestamp;
    let required = !options.timestamp_anchors.is_empty();
    let path = ck.dir.join(LOG_TIMESTAMP_FILE);
    let response = match fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if required {
                ck.fail(
                    LOG_TIMESTAMP_FILE,
                    "is missing: the checkpoint is not time-stamped, and a time-stamp was required (--tsa-cert)",
                );
            }
            return None;
        }
        Ok(m) if m.len() > timestamp::MAX_RESPONSE as u64 => {
            ck.fail(
                LOG_TIMESTAMP_FILE,
                format!("is larger than a time-stamp ({} bytes)", m.len()),
            );
            return None;
        }
        _ => match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                ck.fail(LOG_TIMESTAMP_FILE, format!("cannot be read: {e}"));
                return None;
            }
        },
    };
    let checked = if required {
        timestamp::verify(&response, note, None, &options.timestamp_anchors)
    } else {
        timestamp::check_response(&response, note, None)
    };
    match checked {
        Ok(t) => Some(TimestampFacts {
            time: t.time,
            signer: t.signer_subject,
            trusted: required,
        }),
        Err(e) => {
            ck.fail(
                LOG_TIMESTAMP_FILE,
                format!("is not a good time-stamp of {LOG_CHECKPOINT_FILE}: {e}"),
            );
            None
        }
    }
}

/// The witnesses' cosignature lines of the checkpoint: each line naming a
/// given witness must verify with its key, and at least the quorum of the
/// given witnesses must have cosigned.
fn check_cosignatures(
    ck: &mut Checker,
    options: &VerifyOptions,
    cp: &SignedCheckpoint,
) -> (Vec<(String, DateTime<Utc>)>, usize) {
    let text = match fs::read(ck.dir.join(LOG_COSIGNATURES_FILE)) {
        Ok(b) => match String::from_utf8(b) {
            Ok(t) => t,
            Err(_) => {
                ck.fail(LOG_COSIGNATURES_FILE, "is not UTF-8 text");
                String::new()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            ck.fail(LOG_COSIGNATURES_FILE, format!("cannot be read: {e}"));
            String::new()
        }
    };
    let mut cosigned = Vec::new();
    let mut unchecked = 0;
    for (i, line) in text.lines().enumerate() {
        let note = format!("{}\n{line}\n", cp.text);
        let Ok(parsed) = SignedNote::parse(note.as_bytes()) else {
            ck.fail_line(LOG_COSIGNATURES_FILE, i + 1, "is not a signature line");
            continue;
        };
        let Some((name, ..)) = parsed.signatures.first() else {
            continue;
        };
        let named: Vec<&CosignerKey> = options
            .witnesses
            .iter()
            .filter(|w| &w.name == name)
            .collect();
        if named.is_empty() {
            unchecked += 1;
            continue;
        }
        match named.iter().find_map(|w| parsed.cosigned_by(w)) {
            Some(at) => {
                if !cosigned.iter().any(|(n, _)| n == name) {
                    match i64::try_from(at)
                        .ok()
                        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                    {
                        Some(at) => cosigned.push((name.clone(), at)),
                        None => ck.fail_line(
                            LOG_COSIGNATURES_FILE,
                            i + 1,
                            format!("is a cosignature of {name} with an impossible time"),
                        ),
                    }
                }
            }
            None => ck.fail_line(
                LOG_COSIGNATURES_FILE,
                i + 1,
                format!("is a cosignature of the witness {name} that does not verify with its key"),
            ),
        }
    }
    let distinct: BTreeSet<&str> = options.witnesses.iter().map(|w| w.name.as_str()).collect();
    let quorum = options.witness_quorum.unwrap_or(distinct.len());
    if cosigned.len() < quorum {
        ck.fail(
            LOG_COSIGNATURES_FILE,
            format!(
                "holds verifying cosignatures of {} of the {} given witnesses, fewer than the {quorum} required",
                cosigned.len(),
                distinct.len(),
            ),
        );
    }
    (cosigned, unchecked)
}

/// Decodes and checks one report's history; returns each decoded change of
/// the report once, with its line and whether it is authentic (known
/// device, valid signature: those are replayed).
fn check_history(
    ck: &mut Checker,
    report: Uuid,
    keys: &HashMap<Uuid, VerifyingKey>,
) -> Vec<(usize, Change, bool)> {
    let rel = format!("{}/changes.jsonl", report_dir(report));
    let text = match fs::read_to_string(ck.dir.join(&rel)) {
        Ok(t) => t,
        Err(_) => {
            ck.fail(&rel, "is missing or not UTF-8");
            return Vec::new();
        }
    };
    // Every decodable change of this report, and whether it is authentic.
    let mut good: Vec<(usize, Change, bool)> = Vec::new();
    let mut seen: HashMap<ChangeId, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            ck.fail_line(&rel, n, "is not JSON");
            continue;
        };
        let body = v["body"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        let sig = v["signature"].as_str().and_then(|s| {
            let mut out = [0u8; 64];
            hex::decode_to_slice(s, &mut out).ok().map(|_| out)
        });
        let (Some(body), Some(sig)) = (body, sig) else {
            ck.fail_line(&rel, n, "has no valid `body` (base64) or `signature` (hex)");
            continue;
        };
        let change = match Change::from_parts(body, sig) {
            Ok(c) => c,
            Err(e) => {
                ck.fail_line(&rel, n, format!("signed bytes do not decode: {e}"));
                continue;
            }
        };
        let id = change.id();
        if change_line(&change) != v {
            ck.fail_change(
                &rel,
                Some(n),
                id,
                "the readable fields do not match the signed bytes".into(),
            );
        }
        if change.report() != report {
            ck.fail_change(
                &rel,
                Some(n),
                id,
                format!("belongs to report {}", change.report()),
            );
            continue;
        }
        if let Some(first) = seen.insert(id, n) {
            ck.fail_change(
                &rel,
                Some(n),
                id,
                format!("repeats the change of line {first}"),
            );
            continue;
        }
        let authentic = match keys.get(&change.device()) {
            None => {
                ck.fail_change(
                    &rel,
                    Some(n),
                    id,
                    format!("its device {} is not in {DEVICES_FILE}", change.device()),
                );
                false
            }
            Some(key) if change.verify(key).is_err() => {
                ck.fail_change(&rel, Some(n), id, "the signature does not verify".into());
                false
            }
            Some(_) => true,
        };
        good.push((n, change, authentic));
    }

    // Per-device hash chains: one root, every link present, no forks.
    let by_hash: HashMap<Hash, (usize, &Change)> =
        good.iter().map(|(n, c, _)| (*c.hash(), (*n, c))).collect();
    let mut links: HashMap<(Uuid, Option<Hash>), usize> = HashMap::new();
    for (n, c, _) in &good {
        let b = c.body();
        if let Some(first) = links.insert((b.device, b.prev), *n) {
            let what = if b.prev.is_none() {
                "is a second start of its device's chain".to_string()
            } else {
                format!("forks its device's chain (line {first} follows the same change)")
            };
            ck.fail_change(&rel, Some(*n), c.id(), what);
        }
        if let Some(prev) = &b.prev {
            match by_hash.get(prev) {
                None => ck.fail_change(
                    &rel,
                    Some(*n),
                    c.id(),
                    format!(
                        "its previous change {} is missing from the history (chain broken)",
                        hex::encode(prev)
                    ),
                ),
                Some((_, p)) if p.device() != b.device || p.body().seq >= b.seq => ck.fail_change(
                    &rel,
                    Some(*n),
                    c.id(),
                    "its previous change is of another device or not earlier".into(),
                ),
                Some(_) => {}
            }
        }
    }
    // Every predecessor an operation names must be in the history.
    let ops: HashSet<OpId> = good
        .iter()
        .flat_map(|(_, c, _)| {
            let b = c.body();
            (0..b.ops.len() as u32).map(move |index| OpId {
                device: b.device,
                seq: b.seq,
                index,
            })
        })
        .collect();
    for (n, c, _) in &good {
        let missing = c
            .body()
            .ops
            .iter()
            .flat_map(|op| op.pred.iter())
            .find(|p| !ops.contains(p));
        if let Some(p) = missing {
            ck.fail_change(
                &rel,
                Some(*n),
                c.id(),
                format!(
                    "names operation {}:{}:{} as seen, which is missing from the history",
                    p.device, p.seq, p.index
                ),
            );
        }
    }
    good
}

/// Reads a report's `receipts.jsonl` (the station's receipt time of each
/// change) and checks it against the history: one receipt per change,
/// none for a change not in it, and no change received at or after its
/// device's revocation in `devices.json`. A change's own times (clock,
/// wall clock) are set by whoever holds the key, so only the station's
/// receipt says whether it came before the revocation. Returns the
/// receipt times by change hash (the PDF shows them).
fn check_receipts(
    ck: &mut Checker,
    report: Uuid,
    history: &[(usize, Change, bool)],
    devices: &BTreeMap<Uuid, DeviceEnrollment>,
) -> BTreeMap<Hash, DateTime<Utc>> {
    let rel = receipts_path(report);
    let hist_rel = format!("{}/changes.jsonl", report_dir(report));
    let mut received: BTreeMap<Hash, DateTime<Utc>> = BTreeMap::new();
    let by_hash: HashMap<Hash, &Change> = history.iter().map(|(_, c, _)| (*c.hash(), c)).collect();
    match fs::read_to_string(ck.dir.join(&rel)) {
        Err(_) => ck.fail(
            &rel,
            "is missing or not UTF-8: the station's receipt times are not in the package",
        ),
        Ok(text) => {
            let mut seen: HashMap<Hash, usize> = HashMap::new();
            for (i, line) in text.lines().enumerate() {
                let n = i + 1;
                if line.trim().is_empty() {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    ck.fail_line(&rel, n, "is not JSON");
                    continue;
                };
                let hash = v["hash"].as_str().and_then(|h| {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(h, &mut out).ok().map(|_| out)
                });
                let at = v["received_at"].as_str().and_then(|t| {
                    DateTime::parse_from_rfc3339(t)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                });
                let (Some(hash), Some(at)) = (hash, at) else {
                    ck.fail_line(
                        &rel,
                        n,
                        "has no valid `hash` (hex) or `received_at` (RFC 3339)",
                    );
                    continue;
                };
                let Some(c) = by_hash.get(&hash) else {
                    ck.fail_line(
                        &rel,
                        n,
                        format!(
                            "names change {}, which is not in {hist_rel}",
                            hex::encode(hash)
                        ),
                    );
                    continue;
                };
                if receipt_line(c, at) != v {
                    ck.fail_change(
                        &rel,
                        Some(n),
                        c.id(),
                        "the receipt's fields do not match the change it names".into(),
                    );
                }
                if let Some(first) = seen.insert(hash, n) {
                    ck.fail_change(
                        &rel,
                        Some(n),
                        c.id(),
                        format!("repeats the receipt of line {first}"),
                    );
                    continue;
                }
                received.insert(hash, at);
            }
        }
    }
    for (n, c, _) in history {
        let Some(at) = received.get(c.hash()) else {
            ck.fail_change(
                &hist_rel,
                Some(*n),
                c.id(),
                format!("has no station receipt time in {rel}"),
            );
            continue;
        };
        let revoked = devices.get(&c.device()).and_then(|d| d.revoked_at);
        if let Some(revoked) = revoked.filter(|r| at >= r) {
            ck.fail_change(
                &hist_rel,
                Some(*n),
                c.id(),
                format!(
                    "was received by the station at {}, at or after its device was revoked at {} ({DEVICES_FILE}): a revoked device's change is not valid, whatever time it claims",
                    package_time(*at),
                    package_time(revoked)
                ),
            );
        }
    }
    received
}

fn read_devices(ck: &mut Checker) -> BTreeMap<Uuid, DeviceEnrollment> {
    let Ok(text) = fs::read_to_string(ck.dir.join(DEVICES_FILE)) else {
        ck.fail(DEVICES_FILE, "is missing");
        return BTreeMap::new();
    };
    match serde_json::from_str::<Vec<DeviceEnrollment>>(&text) {
        Ok(list) => {
            let mut out = BTreeMap::new();
            for d in list {
                if out.insert(d.record.device_id, d.clone()).is_some() {
                    ck.fail(
                        DEVICES_FILE,
                        format!("lists device {} twice", d.record.device_id),
                    );
                }
            }
            out
        }
        Err(e) => {
            ck.fail(
                DEVICES_FILE,
                format!(
                    "is not a device list (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            );
            BTreeMap::new()
        }
    }
}

/// `path -> sha256` of a manifest; malformed lines are findings.
fn read_manifest(ck: &mut Checker, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(text) = fs::read_to_string(ck.dir.join(name)) else {
        ck.fail(name, "is missing");
        return out;
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let sha = parts.next().unwrap_or("").to_ascii_lowercase();
        let path = parts.next().map(str::trim_start).unwrap_or("");
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) || path.is_empty() {
            ck.fail_line(name, i + 1, "is not `<sha256> <path>`");
            continue;
        }
        if out.insert(decode_path(path), sha).is_some() {
            ck.fail_line(name, i + 1, "lists a file twice");
        }
    }
    out
}

fn safe_payload_path(p: &str) -> bool {
    p.starts_with("data/")
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Every regular file under `dir/sub`, as `sub/...` -> length.
fn walk(dir: &Path, sub: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![sub.to_string()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let child = format!("{rel}/{name}");
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push(child);
            } else {
                out.insert(child, e.metadata()?.len());
            }
        }
    }
    Ok(out)
}

fn hash_file(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `bag-info.txt` as (label, value); continuation lines start with blanks.
fn parse_tags(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The first JSON path where `found` differs from `want`.
fn first_difference(
    want: &serde_json::Value,
    found: &serde_json::Value,
    at: String,
) -> Option<String> {
    use serde_json::Value as J;
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (want, found) {
        (J::Object(a), J::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) => first_difference(x, y, join(k)),
                _ => Some(join(k)),
            })
        }
        (J::Array(a), J::Array(b)) => {
            if a.len() != b.len() {
                return Some(at);
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (x, y))| first_difference(x, y, join(&i.to_string())))
        }
        (x, y) if x == y => None,
        _ => Some(if at.is_empty() { "(root)".into() } else { at }),
    }
}

#[cfg(test)]
mod staleness_tests {
    use super::*;

    fn facts(exported: &str, stamped: Option<&str>, cosigned: &[&str]) -> LogFacts {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        LogFacts {
            origin: "o".into(),
            size: 7,
            published_key: true,
            timestamp: stamped.map(|t| TimestampFacts {
                time: at(t),
                signer: "CN=tsa".into(),
                trusted: true,
            }),
            cosigned_by: cosigned.iter().map(|t| ("w".to_string(), at(t))).collect(),
            unchecked_cosignatures: 0,
            exported_at: Some(at(exported)),
        }
    }

    #[test]
    fn a_checkpoint_attested_over_an_hour_before_the_export_is_old() {
        let old = facts("2026-12-01T12:00:00Z", Some("2026-12-01T10:30:00Z"), &[]);
        assert_eq!(old.staleness().map(|g| g.num_minutes()), Some(90));
        assert!(old.to_string_for_test().contains("OLD CHECKPOINT"));
        // The newest attestation counts: a recent cosignature.
        let cosigned = facts(
            "2026-12-01T12:00:00Z",
            Some("2026-12-01T10:30:00Z"),
            &["2026-12-01T11:50:00Z"],
        );
        assert_eq!(cosigned.staleness(), None);
        // Nothing outside the station says when: nothing to compare.
        assert_eq!(facts("2026-12-01T12:00:00Z", None, &[]).staleness(), None);
    }

    impl LogFacts {
        fn to_string_for_test(&self) -> String {
            Verdict {
                reports: vec![Uuid::nil()],
                log: Some(self.clone()),
                ..Default::default()
            }
            .to_string()
        }
    }
}
