//! Backup and restore of a station on its embedded SQLite engine
//! (docs/operations.md): an online, consistent copy while the station
//! serves, with a manifest of every file's SHA-256 and a check, and a
//! restore into a new data directory that checks the copy first and
//! records itself in the restored station's audit log (and so in its
//! transparency log). PostgreSQL stations back up with the database's own
//! tools; docs/operations.md says how.
//!
//! What a backup holds:
//! - `station.db`: the database at one committed state (`VACUUM INTO`),
//!   without the rows of uploads still in progress (phones send those
//!   again from the start);
//! - `media/`: every complete media file that state knows, each checked
//!   against its hash as it is copied;
//! - the keys: `log.key`, the station key (`keys/station.key`, or the
//!   configured file, copied to that name), the development TLS pair if
//!   there is one (a configured certificate is the department's to keep);
//! - `dashboard/<device>/`: each dashboard account's signing store, copied
//!   online with its own key (`fieldreport_core::store::copy_store`);
//! - `MANIFEST.json`: the format, when, the log's newest checkpoint in
//!   the copy, and every file with its size and SHA-256.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, StationError};
use crate::keys::StationKey;
use crate::storage::sqlite::DB_FILE;
use crate::storage::transparency::LOG_KEY_FILE;
use crate::storage::DashboardAccount;

pub const MANIFEST_FILE: &str = "MANIFEST.json";
pub const FORMAT: &str = "fieldreport-station-backup/1";
/// Where a backup keeps the station key, whatever file it came from.
pub const STATION_KEY_IN_BACKUP: &str = "keys/station.key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Station clock when the copy was made, ms.
    pub created_at_ms: i64,
    /// The newest checkpoint in the copied database (its size and note):
    /// where the restored log starts again.
    pub log_size: u64,
    pub log_checkpoint: Option<String>,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// What a backup copied, for the admin.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    pub manifest: Manifest,
    pub media_files: u64,
    pub dashboard_stores: usize,
    pub bytes: u64,
}

fn bad(what: String) -> StationError {
    StationError::Unavailable(what)
}

/// A directory to write into: missing (made `0700`) or empty.
fn fresh_dir(dir: &Path, what: &str) -> Result<()> {
    if dir.exists() {
        let mut entries =
            fs::read_dir(dir).map_err(|e| bad(format!("{what} {}: {e}", dir.display())))?;
        if entries.next().is_some() {
            return Err(bad(format!(
                "{what} {} is not empty: give a new directory",
                dir.display()
            )));
        }
    }
    crate::files::private_dir(dir)
}

/// Copies `from` to `to` (private), returning its SHA-256 and size.
fn copy_hashing(from: &Path, to: &Path) -> Result<(String, u64)> {
    if let Some(parent) = to.parent() {
        crate::files::private_dir(parent)?;
    }
    let mut input = fs::File::open(from)?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(fs::Permissions::from_mode(crate::files::FILE_MODE))?;
    }
    let hashed = hash_stream(&mut input, |chunk| out.write_all(chunk))?;
    out.sync_all()?;
    Ok(hashed)
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    hash_stream(&mut fs::File::open(path)?, |_| Ok(()))
}

/// Reads `input` to its end, handing each chunk to `sink`: its SHA-256
/// (hex) and size.
fn hash_stream(
    input: &mut impl Read,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Every regular file under `root`, relative and `/`-separated.
fn files_under(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                out.push(path);
            } else {
                // A link or a device could point anywhere.
                return Err(bad(format!("{path} is not a regular file")));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Syncs every directory under `root`, deepest first, then `root`: after
/// a power cut, every file synced before is still found by its name.
fn sync_tree(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(root)
}

/// Where media file `sha256` sits under a data directory.
fn media_rel(sha256: &str) -> String {
    let fan = sha256.get(..2).unwrap_or("xx");
    format!("media/{fan}/{sha256}")
}

/// Set in a restored data directory until its restore is recorded in the
/// log; `serve` refuses to start while it is there.
pub const RESTORE_PENDING_FILE: &str = "RESTORE_PENDING";

/// The newest checkpoint in a station database.
fn newest_checkpoint(c: &Connection) -> Result<(u64, Option<String>)> {
    let row: Option<(i64, String)> = c
        .query_row(
            "SELECT size, note FROM log_checkpoints ORDER BY size DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok(match row {
        Some((size, note)) => (u64::try_from(size).unwrap_or(0), Some(note)),
        None => (0, None),
    })
}

/// Backs up the SQLite station in `data` into `out` while it serves.
/// `station_key` is the station key file in use, `accounts` the
/// dashboard accounts (their signing stores are copied with their keys).
/// The copy is checked ([`check`]) before this returns.
pub fn backup(
    data: &Path,
    station_key_file: &Path,
    station_key: &StationKey,
    accounts: &[DashboardAccount],
    out: &Path,
    now_ms: i64,
    progress: &mut dyn FnMut(&str),
) -> Result<BackupSummary> {
    let db = data.join(DB_FILE);
    if !db.is_file() {
        return Err(bad(format!(
            "{} holds no station database ({DB_FILE})",
            data.display()
        )));
    }
    fresh_dir(out, "the backup directory")?;

    // The database at one committed state; a reader does not stop the
    // station's writer.
    progress("database");
    let source = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    source.busy_timeout(std::time::Duration::from_secs(30))?;
    let copy_path = out.join(DB_FILE);
    let target = copy_path
        .to_str()
        .ok_or_else(|| bad("the backup directory's path is not UTF-8".into()))?;
    source.execute("VACUUM INTO ?1", [target])?;
    drop(source);
    let copy = Connection::open(&copy_path)?;
    // Uploads in progress are not copied: their phones send them again.
    copy.execute("DELETE FROM media WHERE complete = 0", [])?;
    let shas: Vec<String> = copy
        .prepare("SELECT sha256 FROM media WHERE complete = 1 ORDER BY sha256")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let (log_size, log_checkpoint) = newest_checkpoint(&copy)?;
    drop(copy);
    fs::File::open(&copy_path)?.sync_all()?;

    // Media the copied state knows: complete files never change, so
    // copying them after the snapshot is consistent with it.
    let media = fieldreport_core::store::MediaStore::open(data.join("media"))?;
    let media_out = out.join("media");
    for (k, sha) in shas.iter().enumerate() {
        if k % 100 == 0 {
            progress(&format!("media {k}/{}", shas.len()));
        }
        let from = media.path_of(sha);
        let rel = from
            .strip_prefix(data)
            .map_err(|_| StationError::Internal("media path outside the data directory".into()))?;
        let (got, _) = copy_hashing(&from, &out.join(rel))
            .map_err(|e| bad(format!("media {sha} cannot be copied: {e}")))?;
        if &got != sha {
            return Err(bad(format!(
                "media {sha} in the data directory does not hash to its name (damaged on disk): restore it from an older backup or a phone"
            )));
        }
    }
    if media_out.is_dir() {
        sync_dir(&media_out)?;
    }

    // Keys: without the log key the restored station cannot go on signing
    // its log; without the station key the dashboard's secrets stay sealed.
    progress("keys");
    copy_hashing(&data.join(LOG_KEY_FILE), &out.join(LOG_KEY_FILE))?;
    copy_hashing(station_key_file, &out.join(STATION_KEY_IN_BACKUP))?;
    let (cert, key) = crate::tls::dev_paths(data);
    if cert.is_file() && key.is_file() {
        for f in [cert, key] {
            let rel = f
                .strip_prefix(data)
                .map_err(|_| StationError::Internal("TLS path".into()))?;
            copy_hashing(&f, &out.join(rel))?;
        }
    }

    // Dashboard signing stores, each with its own key.
    progress("dashboard accounts");
    let dashboard = data.join("dashboard");
    let mut dashboard_stores = 0;
    for a in accounts {
        let dir = dashboard.join(a.device_id.to_string());
        if !dir.is_dir() {
            continue;
        }
        let key = crate::accounts::signing_store_key(station_key, a)?;
        fieldreport_core::store::copy_store(
            &dir,
            Some(&key),
            &out.join("dashboard").join(a.device_id.to_string()),
        )?;
        dashboard_stores += 1;
    }

    sync_tree(out)?;
    // The manifest, over what is now on disk.
    progress("manifest");
    let mut files = Vec::new();
    let mut bytes = 0u64;
    for path in files_under(out)? {
        let (sha256, size) = hash_file(&out.join(&path))?;
        bytes += size;
        files.push(ManifestFile { path, size, sha256 });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        created_at_ms: now_ms,
        log_size,
        log_checkpoint,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| StationError::Internal(format!("manifest: {e}")))?;
    crate::files::write_new_private(&out.join(MANIFEST_FILE), &text)?;
    sync_dir(out)?;

    progress("check");
    let checked = check(out)?;
    Ok(BackupSummary {
        manifest: checked,
        media_files: shas.len() as u64,
        dashboard_stores,
        bytes,
    })
}

/// Checks a backup: the manifest parses and is of this format; every file
/// it lists is there with its size and SHA-256 and nothing else is; the
/// database passes SQLite's integrity check and holds the checkpoint the
/// manifest names, which the log key in the backup signed. Every problem
/// is named.
pub fn check(dir: &Path) -> Result<Manifest> {
    let text = fs::read(dir.join(MANIFEST_FILE)).map_err(|e| {
        bad(format!(
            "{} is not a station backup ({MANIFEST_FILE}: {e})",
            dir.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{MANIFEST_FILE} does not parse: {e}")))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "{MANIFEST_FILE} is of format {}, this build reads {FORMAT}",
            manifest.format
        )));
    }
    let mut problems = Vec::new();
    let listed: BTreeMap<&str, &ManifestFile> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    if listed.len() != manifest.files.len() {
        problems.push("the manifest lists a file twice".to_string());
    }
    let present = files_under(dir)?;
    for path in &present {
        if path != MANIFEST_FILE && !listed.contains_key(path.as_str()) {
            problems.push(format!("{path} is not in the manifest"));
        }
    }
    for f in &manifest.files {
        let safe = !f.path.is_empty()
            && !f.path.starts_with('/')
            && f.path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !safe {
            problems.push(format!(
                "the manifest lists `{}`, outside the backup",
                f.path
            ));
            continue;
        }
        match hash_file(&dir.join(&f.path)) {
            Ok((sha, size)) if sha == f.sha256 && size == f.size => {}
            Ok((sha, size)) => problems.push(format!(
                "{}: {size} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                f.path, f.size, f.sha256
            )),
            Err(_) => problems.push(format!("{} is missing", f.path)),
        }
    }
    for needed in [DB_FILE, LOG_KEY_FILE, STATION_KEY_IN_BACKUP] {
        if !listed.contains_key(needed) {
            problems.push(format!("{needed} is not in the backup"));
        }
    }
    if problems.is_empty() {
        let db = Connection::open_with_flags(dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let integrity: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if integrity != "ok" {
            problems.push(format!(
                "{DB_FILE} fails SQLite's integrity check: {integrity}"
            ));
        }
        // Every photo the database holds complete is in the backup, under
        // its hash.
        let shas: Vec<String> = db
            .prepare("SELECT sha256 FROM media WHERE complete = 1 ORDER BY sha256")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for sha in shas {
            match listed.get(media_rel(&sha).as_str()) {
                Some(f) if f.sha256 == sha => {}
                Some(_) => problems.push(format!("media {sha} does not hash to its name")),
                None => problems.push(format!(
                    "media {sha} is complete in {DB_FILE} but not in the backup"
                )),
            }
        }
        let (size, note) = newest_checkpoint(&db)?;
        if (size, &note) != (manifest.log_size, &manifest.log_checkpoint) {
            problems.push(format!(
                "{DB_FILE}'s newest checkpoint (size {size}) is not the manifest's (size {})",
                manifest.log_size
            ));
        }
        if let Some(note) = &note {
            let signer = crate::storage::transparency::LogSigner::load_or_create(
                &dir.join(LOG_KEY_FILE),
                None,
            );
            match signer {
                Ok(s) => {
                    if fieldreport_core::tlog::SignedCheckpoint::verify(
                        note.as_bytes(),
                        &s.verifier(),
                    )
                    .is_err()
                    {
                        problems.push(format!(
                            "{LOG_KEY_FILE} did not sign the database's newest checkpoint"
                        ));
                    }
                }
                Err(e) => problems.push(format!("{LOG_KEY_FILE}: {e}")),
            }
        }
    }
    if !problems.is_empty() {
        return Err(bad(format!(
            "the backup in {} does not check: {}",
            dir.display(),
            problems.join("; ")
        )));
    }
    Ok(manifest)
}

/// Restores the backup in `from` into `data`, which must be missing or
/// empty: checks it first, copies every file into a sibling
/// `<data>.partial` (private, each synced), syncs every directory, leaves
/// a [`RESTORE_PENDING_FILE`] marker holding the backup's time, and
/// renames it into place. The caller opens the restored station, records
/// the restore ([`crate::storage::StationStorage::record_restore`]) and
/// then removes the marker ([`finish_restore`]); `serve` refuses a data
/// directory with the marker, so an interrupted restore never serves
/// without its restore entry.
pub fn restore(from: &Path, data: &Path, progress: &mut dyn FnMut(&str)) -> Result<Manifest> {
    progress("check");
    let manifest = check(from)?;
    fresh_dir(data, "the data directory")?;
    let name = data
        .file_name()
        .ok_or_else(|| bad(format!("{} is not a directory name", data.display())))?;
    let partial = data.with_file_name(format!("{}.partial", name.to_string_lossy()));
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    crate::files::private_dir(&partial)?;
    progress("copy");
    for f in &manifest.files {
        let (sha, _) = copy_hashing(&from.join(&f.path), &partial.join(&f.path))?;
        if sha != f.sha256 {
            return Err(bad(format!("{} changed while it was restored", f.path)));
        }
    }
    crate::files::write_new_private(
        &partial.join(RESTORE_PENDING_FILE),
        manifest.created_at_ms.to_string().as_bytes(),
    )?;
    sync_tree(&partial)?;
    // `data` is missing or empty (checked above): the rename replaces it
    // in one step (there is never no directory at all).
    fs::rename(&partial, data)?;
    if let Some(parent) = data.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(manifest)
}

/// The backup time a restored data directory's marker holds, if its
/// restore is not recorded yet.
pub fn pending_restore(data: &Path) -> Result<Option<i64>> {
    match fs::read_to_string(data.join(RESTORE_PENDING_FILE)) {
        Ok(t) => Ok(Some(t.trim().parse().map_err(|_| {
            bad(format!(
                "{RESTORE_PENDING_FILE} in {} is not a time",
                data.display()
            ))
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the marker once the restore is recorded.
pub fn finish_restore(data: &Path) -> Result<()> {
    fs::remove_file(data.join(RESTORE_PENDING_FILE))?;
    sync_dir(data)
}
