//! The station's files are its own user's only: the data directory is
//! `0700`, the process creates files `0600` and directories `0700` (umask
//! `077`, set before the storage opens anything), and an existing data
//! directory from an earlier build has its modes tightened when opened.
//!
//! Everything under the data directory is covered this way, whoever writes
//! it (SQLite and its WAL and SHM files, media and partial uploads, export
//! scratch, the TLS pair, the key file, the dashboard's signing stores):
//! the mechanism is the process's, not each writer's.

use std::path::Path;

use crate::error::Result;

/// Files the station creates: this user only.
pub const FILE_MODE: u32 = 0o600;
/// Directories the station creates: this user only.
pub const DIR_MODE: u32 = 0o700;

/// Makes every file and directory this process creates from now on
/// readable by its own user only (umask `077`). Called before the storage
/// opens anything; harmless to call again.
pub fn private_by_default() {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: umask only sets the process's file mode creation
            // mask; it cannot fail and touches no memory.
            unsafe {
                libc::umask(0o077);
            }
        });
    }
}

/// Creates `dir` (and its parents) if needed and makes it `0700`. Each
/// directory it creates is synced into its parent, so that its name
/// survives a power cut (a station whose `tls/` vanished would make a new
/// key, and every phone would refuse it).
pub fn private_dir(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        for made in missing.iter().rev() {
            if let Some(parent) = made.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)?.sync_all()?;
            }
        }
        let meta = std::fs::metadata(dir)?;
        if meta.permissions().mode() & 0o777 != DIR_MODE {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = missing;
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// Opens the data directory: creates it `0700` if needed, sets the umask,
/// and takes group and other permissions off everything already in it
/// (a data directory an earlier build wrote with `0644` files). Symbolic
/// links are not followed.
pub fn open_data_dir(dir: &Path) -> Result<()> {
    private_by_default();
    private_dir(dir)?;
    #[cfg(unix)]
    tighten(dir)?;
    // Names an earlier process made and died before syncing (its keys,
    // its TLS pair, the database) are made durable before anything relies
    // on them.
    for d in [
        dir.join("tls"),
        dir.join("keys"),
        dir.join("media"),
        dir.to_path_buf(),
    ] {
        if d.is_dir() {
            std::fs::File::open(&d)?.sync_all()?;
        }
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(unix)]
fn tighten(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Removed meanwhile (another process's export scratch).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            let e = e?;
            let path = e.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.permissions().mode() & 0o7777;
            let want = if meta.is_dir() {
                todo.push(path.clone());
                DIR_MODE
            } else {
                FILE_MODE
            };
            if mode != want {
                match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path` (`0600`), synced, failing if it
/// exists.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_earlier_data_directory_is_tightened_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("media/ab")).unwrap();
        std::fs::write(data.join("station.db"), b"x").unwrap();
        std::fs::write(data.join("media/ab/f"), b"x").unwrap();
        for (p, m) in [
            (data.clone(), 0o755),
            (data.join("media"), 0o775),
            (data.join("media/ab"), 0o755),
            (data.join("station.db"), 0o644),
            (data.join("media/ab/f"), 0o664),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        // A link out of the data directory is left alone.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        open_data_dir(&data).unwrap();
        for d in [&data, &data.join("media"), &data.join("media/ab")] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        for f in [data.join("station.db"), data.join("media/ab/f")] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
        assert_eq!(mode(&outside), 0o644);
        // And what the process creates from now on is private too.
        std::fs::write(data.join("new"), b"x").unwrap();
        std::fs::create_dir(data.join("newdir")).unwrap();
        assert_eq!(mode(&data.join("new")), 0o600);
        assert_eq!(mode(&data.join("newdir")), 0o700);
    }
}
