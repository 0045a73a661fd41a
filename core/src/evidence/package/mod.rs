//! Evidence packages for the State's Attorney, and their verifier.
//!
//! A package is a BagIt bag (RFC 8493) that someone who does not trust us
//! can check with nothing but the bag:
//!
//! ```text
//! bagit.txt  bag-info.txt  manifest-sha256.txt  tagmanifest-sha256.txt
//! data/README.txt                    how to read and verify the bag
//! data/devices.json                  public keys and enrollment records
//! data/reports/<id>/changes.jsonl    the full signed history, one change a line
//! data/reports/<id>/receipts.jsonl   when the station received each change
//! data/reports/<id>/report.json      the report replayed from that history
//! data/reports/<id>/report.pdf       a readable rendering of the same
//! data/media/<sha256>                every photo or file the history attaches
//! data/log/checkpoint.txt            the station log's checkpoint at the export
//! data/log/key.txt                   the log's verifier key (compare it with the published one)
//! data/log/leaves.txt                every log entry up to that checkpoint, base64, one a line
//! data/log/checkpoint.tsr            (when the station has a time-stamp authority) its RFC 3161 response over checkpoint.txt
//! data/log/cosignatures.txt          (when the station has witnesses) their cosignature lines of the checkpoint
//! ```
//!
//! Each line of `changes.jsonl` carries the change's exact signed bytes
//! (`body`, base64) and signature, plus a readable rendering of the same
//! bytes. [`verify::verify_package`] checks the manifests, every signature
//! and device chain, every media hash, that the readable parts say what the
//! signed bytes say, that no change reached the station at or after its
//! device's revocation, that replaying the history gives exactly
//! `report.json` and `report.pdf`, and that the history holds exactly the
//! changes of its report that the station's log held at the checkpoint
//! (docs/log.md: a change leaf shows only commitments, so every leaf can
//! travel in the bag). The writer runs the same verifier on its
//! own output before publishing it.

pub mod pdf;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crdt::{Action, Change, Hash, ReportDoc};
use crate::error::{Error, Result};
use crate::evidence::DeviceRecord;
use crate::model::schema::MEDIA_COLLECTION;
use crate::model::Report;

pub use verify::{verify_package, verify_package_with, Finding, LogFacts, Verdict, VerifyOptions};

pub const BAGIT_TXT: &str = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n";
pub const DEVICES_FILE: &str = "data/devices.json";
pub const README_FILE: &str = "data/README.txt";
pub const LOG_CHECKPOINT_FILE: &str = "data/log/checkpoint.txt";
pub const LOG_KEY_FILE: &str = "data/log/key.txt";
pub const LOG_LEAVES_FILE: &str = "data/log/leaves.txt";
pub const LOG_TIMESTAMP_FILE: &str = "data/log/checkpoint.tsr";
pub const LOG_COSIGNATURES_FILE: &str = "data/log/cosignatures.txt";
const COPY_BUFFER: usize = 1 << 20;

/// A device as the exporting station knows it: key, person, enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEnrollment {
    #[serde(flatten)]
    pub record: DeviceRecord,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Everything a package is made from.
#[derive(Debug, Clone)]
pub struct PackageInput {
    /// Names the exporting station in `bag-info.txt` and the PDF.
    pub station: String,
    pub exported_at: DateTime<Utc>,
    /// Each report with all its changes.
    pub reports: Vec<(Uuid, Vec<Change>)>,
    /// At least the devices that authored the changes.
    pub devices: Vec<DeviceEnrollment>,
    /// Where to read each media file the changes attach, by SHA-256 hex.
    pub media: BTreeMap<String, PathBuf>,
    /// When the exporting station received each change, by change hash:
    /// the station's clock, which the device does not set. Every change
    /// needs one (kept to the millisecond).
    pub received: BTreeMap<Hash, DateTime<Utc>>,
    /// The station's log at the export; `None` writes a package without
    /// a completeness proof (only for building packages outside a
    /// station: `verify` refuses it unless told `without_log`).
    pub log: Option<LogMaterial>,
}

/// The station's transparency log as of one checkpoint: what makes a
/// package prove it holds every change of its reports (docs/log.md).
#[derive(Debug, Clone)]
pub struct LogMaterial {
    /// The verifier key (`name+id+key`).
    pub key: crate::tlog::NoteVerifier,
    /// The signed checkpoint (note text).
    pub checkpoint: String,
    /// Every leaf's bytes, index 0 up to the checkpoint's size.
    pub leaves: Vec<Vec<u8>>,
    /// A time-stamp authority's RFC 3161 response over `checkpoint`'s
    /// bytes (DER), if the station has one.
    pub timestamp: Option<Vec<u8>>,
    /// Witnesses' cosignature lines of the checkpoint (C2SP
    /// `tlog-cosignature`), without their newlines.
    pub cosignatures: Vec<String>,
}

/// Where a long export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageProgress {
    pub phase: PackagePhase,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackagePhase {
    /// Writing history, report JSON and PDF (counted in reports).
    Reports,
    /// Copying media (counted in bytes).
    Media,
    /// Checking the finished bag (counted in bytes hashed).
    Verifying,
}

impl PackagePhase {
    pub fn label(self) -> &'static str {
        match self {
            PackagePhase::Reports => "reports",
            PackagePhase::Media => "media",
            PackagePhase::Verifying => "verifying",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSummary {
    pub reports: usize,
    pub changes: usize,
    pub devices: usize,
    pub media_files: usize,
    pub payload_bytes: u64,
}

/// Paths inside the bag.
pub fn report_dir(report: Uuid) -> String {
    format!("data/reports/{report}")
}
pub fn media_path(sha256: &str) -> String {
    format!("data/media/{sha256}")
}
pub fn receipts_path(report: Uuid) -> String {
    format!("{}/receipts.jsonl", report_dir(report))
}

/// A time as the package writes it: RFC 3339, UTC, milliseconds.
pub(crate) fn package_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `t` cut to whole milliseconds (what the package can state exactly).
pub(crate) fn to_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// One line of `receipts.jsonl`: the station's receipt time of a change.
pub fn receipt_line(c: &Change, received_at: DateTime<Utc>) -> serde_json::Value {
    json!({
        "change": c.id().to_string(),
        "hash": hex::encode(c.hash()),
        "received_at": package_time(received_at),
    })
}

/// Which media each change attaches: (sha256, signed size if any, change).
pub(crate) fn attached_media(changes: &[Change]) -> Vec<(String, Option<i64>, &Change)> {
    use crate::crdt::Target;
    use crate::model::Value;
    let mut out = Vec::new();
    for c in changes {
        let ops = &c.body().ops;
        for op in ops {
            let (
                Target::EntryField {
                    collection,
                    entry,
                    field,
                },
                Action::Set(Value::Text(sha)),
            ) = (&op.target, &op.action)
            else {
                continue;
            };
            if collection != MEDIA_COLLECTION || field != "sha256" {
                continue;
            }
            // The attaching change sets the size of the same entry.
            let size = ops.iter().find_map(|o| match (&o.target, &o.action) {
                (
                    Target::EntryField {
                        collection: c2,
                        entry: e2,
                        field: f2,
                    },
                    Action::Set(Value::Int(n)),
                ) if c2 == MEDIA_COLLECTION && e2 == entry && f2 == "size" => Some(*n),
                _ => None,
            });
            out.push((sha.clone(), size, c));
        }
    }
    out
}

/// The readable and exact form of one change: one line of `changes.jsonl`.
pub fn change_line(c: &Change) -> serde_json::Value {
    let b = c.body();
    let ops: Vec<serde_json::Value> = b
        .ops
        .iter()
        .map(|op| {
            let (action, value) = match &op.action {
                Action::Set(v) => ("set", serde_json::to_value(v).ok()),
                Action::Add => ("add", None),
                Action::Remove => ("remove", None),
            };
            let pred: Vec<String> = op
                .pred
                .iter()
                .map(|p| format!("{}:{}:{}", p.device, p.seq, p.index))
                .collect();
            let mut o = json!({ "target": op.target.path(), "action": action, "pred": pred });
            if let Some(v) = value {
                o["value"] = v;
            }
            o
        })
        .collect();
    let wall = DateTime::<Utc>::from_timestamp_millis(b.wall_clock_ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
    json!({
        "change": c.id().to_string(),
        "hash": hex::encode(c.hash()),
        "report": b.report,
        "device": b.device,
        "seq": b.seq,
        "clock": { "ms": b.hlc.wall_ms, "counter": b.hlc.counter },
        "wall_clock_ms": b.wall_clock_ms,
        "wall_clock": wall,
        "prev": b.prev.map(hex::encode),
        "ops": ops,
        "signature": hex::encode(c.signature()),
        "body": base64::engine::general_purpose::STANDARD.encode(c.bytes()),
    })
}

/// The report as the bag holds it: pretty, canonical JSON and a newline.
pub fn report_json(report: &Report) -> String {
    // Plain structs and strings: serialisation cannot fail.
    let mut s = serde_json::to_string_pretty(report).expect("report serialises");
    s.push('\n');
    s
}

/// Replays a history into the report it describes.
pub fn replay(report: Uuid, changes: &[Change]) -> Report {
    let mut doc = ReportDoc::new();
    for c in changes {
        doc.insert(std::sync::Arc::new(c.clone()));
    }
    Report::from_state(report, &doc.materialise())
}

/// History order in the bag: causal (clock), then device and seq.
pub fn sort_history(changes: &mut [Change]) {
    changes.sort_by_key(|c| (c.body().hlc, c.device(), c.body().seq));
}

/// Writes a package to `out`, which must not exist or be an empty
/// directory. The bag is built beside it, verified, synced to disk and only
/// then renamed into place, so `out` is never a half-written bag.
pub fn write_package(
    mut input: PackageInput,
    out: &Path,
    progress: &mut dyn FnMut(PackageProgress),
) -> Result<PackageSummary> {
    if out.exists() {
        let empty = out.is_dir() && fs::read_dir(out)?.next().is_none();
        if !empty {
            return Err(Error::Package(format!(
                "{} exists and is not an empty directory",
                out.display()
            )));
        }
    }
    if input.reports.is_empty() {
        return Err(Error::Package("no report to export".into()));
    }
    // What the bag records is what the verifier re-renders the PDF from.
    input.station = clean_tag_value(&input.station);
    input.exported_at = to_ms(input.exported_at);
    for t in input.received.values_mut() {
        *t = to_ms(*t);
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| Error::Package("the output path has no file name".into()))?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    let options = VerifyOptions {
        log_key: input.log.as_ref().map(|l| l.key.clone()),
        without_log: input.log.is_none(),
        ..VerifyOptions::default()
    };
    let result = build(&mut input, &tmp, progress).and_then(|summary| {
        let verdict = verify_package_with(&tmp, &options, &mut |done, total| {
            progress(PackageProgress {
                phase: PackagePhase::Verifying,
                done,
                total,
            })
        })?;
        if let Some(f) = verdict.failures.first() {
            return Err(Error::Corrupt(format!(
                "the export failed its own check: {f}"
            )));
        }
        sync_tree(&tmp)?;
        if out.exists() {
            fs::remove_dir(out)?;
        }
        fs::rename(&tmp, out)?;
        File::open(&parent)?.sync_all()?;
        Ok(summary)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// (bag-relative path, sha256 hex, bytes) of each payload file.
type Manifest = BTreeMap<String, (String, u64)>;

fn write_file(root: &Path, rel: &str, bytes: &[u8], manifest: &mut Manifest) -> Result<()> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, bytes)?;
    manifest.insert(
        rel.to_string(),
        (hex::encode(Sha256::digest(bytes)), bytes.len() as u64),
    );
    Ok(())
}

fn build(
    input: &mut PackageInput,
    root: &Path,
    progress: &mut dyn FnMut(PackageProgress),
) -> Result<PackageSummary> {
    fs::create_dir_all(root.join("data/reports"))?;
    fs::create_dir_all(root.join("data/media"))?;
    let mut manifest = Manifest::new();
    let devices: BTreeMap<Uuid, DeviceEnrollment> = input
        .devices
        .iter()
        .map(|d| (d.record.device_id, d.clone()))
        .collect();

    // Reports: history, replayed JSON, PDF.
    input.reports.sort_by_key(|(id, _)| *id);
    let total_reports = input.reports.len() as u64;
    let mut authors = BTreeSet::new();
    let mut media: BTreeMap<String, (Option<i64>, Uuid)> = BTreeMap::new();
    let mut change_count = 0;
    for (n, (id, changes)) in input.reports.iter_mut().enumerate() {
        if changes.is_empty() {
            return Err(Error::ReportNotFound(*id));
        }
        if let Some(c) = changes.iter().find(|c| c.report() != *id) {
            return Err(Error::Corrupt(format!(
                "change {} is not of report {id}",
                c.id()
            )));
        }
        sort_history(changes);
        change_count += changes.len();
        let mut lines = String::new();
        let mut receipts = String::new();
        for c in changes.iter() {
            authors.insert(c.device());
            lines.push_str(&change_line(c).to_string());
            lines.push('\n');
            let at = input.received.get(c.hash()).ok_or_else(|| {
                Error::Package(format!("change {} has no station receipt time", c.id()))
            })?;
            receipts.push_str(&receipt_line(c, *at).to_string());
            receipts.push('\n');
        }
        for (sha, size, _) in attached_media(changes) {
            media.entry(sha).or_insert((size, *id));
        }
        let dir = report_dir(*id);
        write_file(
            root,
            &format!("{dir}/changes.jsonl"),
            lines.as_bytes(),
            &mut manifest,
        )?;
        write_file(
            root,
            &receipts_path(*id),
            receipts.as_bytes(),
            &mut manifest,
        )?;
        let report = replay(*id, changes);
        write_file(
            root,
            &format!("{dir}/report.json"),
            report_json(&report).as_bytes(),
            &mut manifest,
        )?;
        let pdf = pdf::render(&pdf::PdfInput {
            report: &report,
            changes,
            devices: &devices,
            received: &input.received,
            station: &input.station,
            exported_at: input.exported_at,
        });
        write_file(root, &format!("{dir}/report.pdf"), &pdf, &mut manifest)?;
        progress(PackageProgress {
            phase: PackagePhase::Reports,
            done: n as u64 + 1,
            total: total_reports,
        });
    }

    if let Some(log) = &input.log {
        write_file(
            root,
            LOG_KEY_FILE,
            format!("{}\n", log.key.encode()).as_bytes(),
            &mut manifest,
        )?;
        write_file(
            root,
            LOG_CHECKPOINT_FILE,
            log.checkpoint.as_bytes(),
            &mut manifest,
        )?;
        let mut lines = String::with_capacity(log.leaves.len() * 120);
        for leaf in &log.leaves {
            lines.push_str(&base64::engine::general_purpose::STANDARD.encode(leaf));
            lines.push('\n');
        }
        write_file(root, LOG_LEAVES_FILE, lines.as_bytes(), &mut manifest)?;
        if let Some(tsr) = &log.timestamp {
            write_file(root, LOG_TIMESTAMP_FILE, tsr, &mut manifest)?;
        }
        if !log.cosignatures.is_empty() {
            let mut text = String::new();
            for line in &log.cosignatures {
                text.push_str(line);
                text.push('\n');
            }
            write_file(root, LOG_COSIGNATURES_FILE, text.as_bytes(), &mut manifest)?;
        }
    }

    // Devices that authored the history.
    let mut involved = Vec::new();
    for d in &authors {
        let Some(e) = devices.get(d) else {
            return Err(Error::Package(format!(
                "device {d} authored changes but is not in the station's device list"
            )));
        };
        involved.push(e.clone());
    }
    let mut devices_json =
        serde_json::to_string_pretty(&involved).map_err(|e| Error::Corrupt(e.to_string()))?;
    devices_json.push('\n');
    write_file(root, DEVICES_FILE, devices_json.as_bytes(), &mut manifest)?;
    write_file(root, README_FILE, README.as_bytes(), &mut manifest)?;

    // Media, copied and hashed in one pass.
    let mut sources = Vec::new();
    let mut total_bytes = 0;
    for (sha, (_, report)) in &media {
        let src = input.media.get(sha).ok_or_else(|| {
            Error::Package(format!(
                "media {sha} of report {report} has not reached the station"
            ))
        })?;
        let len = fs::metadata(src)
            .map_err(|_| Error::Package(format!("media {sha} is missing from the station")))?
            .len();
        total_bytes += len;
        sources.push((sha.clone(), src.clone()));
    }
    let mut done_bytes = 0;
    let mut buf = vec![0u8; COPY_BUFFER];
    for (sha, src) in &sources {
        let rel = media_path(sha);
        let mut from = File::open(src)?;
        let mut to = File::create(root.join(&rel))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n])?;
            len += n as u64;
            done_bytes += n as u64;
            progress(PackageProgress {
                phase: PackagePhase::Media,
                done: done_bytes,
                total: total_bytes,
            });
        }
        let got = hex::encode(hasher.finalize());
        if &got != sha {
            return Err(Error::Corrupt(format!(
                "the station's copy of media {sha} has another hash"
            )));
        }
        manifest.insert(rel, (got, len));
    }

    // Manifests and tag files.
    let payload_bytes: u64 = manifest.values().map(|(_, n)| n).sum();
    let mut manifest_txt = String::new();
    for (path, (sha, _)) in &manifest {
        manifest_txt.push_str(&format!("{sha}  {}\n", encode_path(path)));
    }
    let mut info = String::new();
    let clean = clean_tag_value;
    info.push_str(&format!("Source-Organization: {}\n", clean(&input.station)));
    info.push_str(&format!(
        "Bagging-Date: {}\n",
        input.exported_at.format("%Y-%m-%d")
    ));
    info.push_str(&format!(
        "Bag-Software-Agent: fieldreport {}\n",
        env!("CARGO_PKG_VERSION")
    ));
    info.push_str(&format!(
        "External-Description: FieldReport evidence package: {} report(s) with their full signed history, media and device keys. Check it with `fieldreport-station verify <this directory>`.\n",
        input.reports.len()
    ));
    info.push_str(&format!(
        "Export-Time: {}\n",
        input
            .exported_at
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    ));
    info.push_str(&format!("Exporting-Station: {}\n", clean(&input.station)));
    for (id, _) in &input.reports {
        info.push_str(&format!("FieldReport-Report: {id}\n"));
    }
    info.push_str(&format!(
        "Payload-Oxum: {payload_bytes}.{}\n",
        manifest.len()
    ));
    fs::write(root.join("bagit.txt"), BAGIT_TXT)?;
    fs::write(root.join("bag-info.txt"), &info)?;
    fs::write(root.join("manifest-sha256.txt"), &manifest_txt)?;
    let mut tag = String::new();
    for (name, bytes) in [
        ("bag-info.txt", info.as_bytes()),
        ("bagit.txt", BAGIT_TXT.as_bytes()),
        ("manifest-sha256.txt", manifest_txt.as_bytes()),
    ] {
        tag.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(bytes))));
    }
    fs::write(root.join("tagmanifest-sha256.txt"), tag)?;
    Ok(PackageSummary {
        reports: input.reports.len(),
        changes: change_count,
        devices: involved.len(),
        media_files: sources.len(),
        payload_bytes,
    })
}

/// A `bag-info.txt` value on one line.
fn clean_tag_value(s: &str) -> String {
    s.replace(['\r', '\n'], " ").trim().to_string()
}

/// RFC 8493 §2.1.3: CR, LF and `%` in manifest paths are percent-encoded.
fn encode_path(p: &str) -> String {
    p.replace('%', "%25")
        .replace('\n', "%0A")
        .replace('\r', "%0D")
}

pub(crate) fn decode_path(p: &str) -> String {
    p.replace("%0A", "\n")
        .replace("%0a", "\n")
        .replace("%0D", "\r")
        .replace("%0d", "\r")
        .replace("%25", "%")
}

fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        } else {
            File::open(e.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

const README: &str = "\
FieldReport evidence package
============================

This directory is a BagIt bag (RFC 8493). Every payload file is listed with
its SHA-256 in manifest-sha256.txt; the tag files are listed in
tagmanifest-sha256.txt. Any BagIt tool (for example `bagit.py --validate`)
checks those hashes.

What the payload holds:

  devices.json                  each device that made a change: its Ed25519
                                public key (hex), the person it was enrolled
                                to, and its enrollment and revocation times.
  reports/<id>/changes.jsonl    the full signed history of one report, one
                                change per line. `body` is the exact signed
                                byte string (base64, postcard encoding) and
                                `signature` its Ed25519 signature over the
                                bytes \"fieldreport/change/v1\\0\" + body. `hash`
                                is the SHA-256 of body; `prev` is the hash of
                                the same device's previous change to the same
                                report. The other fields render the same bytes
                                readably.
  reports/<id>/receipts.jsonl   when this station received each change of
                                that history (`received_at`, the station's
                                clock: a device cannot set it), one change
                                per line, named by `change` and `hash`.
  reports/<id>/report.json      the report as replaying that history gives it,
                                with every kept conflict.
  reports/<id>/report.pdf       a readable rendering of the report, its
                                conflicts, its field history and its media.
  media/<sha256>                each photo or file the history attaches; the
                                file name is the SHA-256 of its bytes, which
                                the signed change that attaches it also names.
  log/checkpoint.txt            the station's transparency log as of the
                                export: a C2SP signed checkpoint (origin,
                                number of entries, RFC 6962 root hash, and
                                the log key's Ed25519 signature).
  log/key.txt                   the log's verifier key. Compare it with the
                                key the department publishes.
  log/leaves.txt                every entry of the log up to that checkpoint,
                                base64, one a line. A change's entry holds
                                SHA-256(\"fieldreport/report/v1\\n\" + report
                                id) and a hash of the change and its receipt
                                time: it shows which entries are this
                                report's, and no other report's content,
                                author or id (only how many entries share
                                each unnamed report).
  log/checkpoint.tsr            (if the station uses a time-stamp authority)
                                its RFC 3161 response over checkpoint.txt:
                                the log held all of the above by that time.
                                openssl ts -verify -data log/checkpoint.txt
                                -in log/checkpoint.tsr -CAfile <the TSA's CA>
  log/cosignatures.txt          (if the station has witnesses) each witness's
                                cosignature line of checkpoint.txt: the
                                witness saw this tree and checked that it
                                extends every tree of this log it saw before.

`fieldreport-station verify [--log-key KEY] [--tsa-cert PEM] [--witness KEY]... <this directory>` checks, beyond the manifests:
every signature against the device keys, every device's hash chain, that no
change names an operation missing from the history, that every attached file
has the signed hash and size, that the readable fields say what the signed
bytes say, that every change has a receipt time and none was received at or
after its device's revocation (a revoked device's key, on a lost or stolen
phone, proves nothing: the time a change claims is set by whoever holds
it), that replaying the history gives exactly report.json and
report.pdf, and that the log's entries hash to the signed checkpoint and
hold exactly this package's changes of each report: a change dropped from
the package, or one added that the station never logged, is named. With
--tsa-cert it requires a time-stamp over the checkpoint whose signer chains
to that authority; with --witness (and --witness-quorum) it requires those
witnesses' cosignatures.
";
