//! Content-addressed media files. A file is streamed once, in bounded
//! memory: each chunk is hashed and written to a temporary file, which is
//! flushed to disk and renamed to its SHA-256 name only when complete.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct MediaStore {
    dir: PathBuf,
}

/// A stored media file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMedia {
    pub sha256: String,
    pub size: u64,
}

impl MediaStore {
    pub fn open(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(dir.join("tmp"))?;
        // Leftovers of an ingest interrupted by a crash are never referenced.
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(MediaStore { dir })
    }

    /// Where the file with this hash lives (whether or not it exists).
    pub fn path_of(&self, sha256_hex: &str) -> PathBuf {
        let fan = sha256_hex.get(..2).unwrap_or("xx");
        self.dir.join(fan).join(sha256_hex)
    }

    pub fn contains(&self, sha256_hex: &str) -> bool {
        self.path_of(sha256_hex).is_file()
    }

    /// Copies `src` into the store; returns its hash and size.
    pub fn ingest(&self, src: &Path) -> Result<StoredMedia> {
        let mut input = File::open(src).map_err(|e| Error::MediaUnreadable(e.kind()))?;
        let mut reader = |buf: &mut [u8]| {
            input
                .read(buf)
                .map_err(|e| Error::MediaUnreadable(e.kind()))
        };
        self.ingest_from(&mut reader)
    }

    /// Streams from any reader (used for uploads too).
    pub fn ingest_from(
        &self,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<StoredMedia> {
        let tmp = tempfile_in(&self.dir.join("tmp"))?;
        let result = (|| {
            let mut out = File::create(&tmp)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            let mut size = 0u64;
            loop {
                let n = read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                size += n as u64;
            }
            out.sync_all()?;
            let sha256 = hex::encode(hasher.finalize());
            let dest = self.path_of(&sha256);
            let parent = dest.parent().unwrap_or(&self.dir);
            fs::create_dir_all(parent)?;
            fs::rename(&tmp, &dest)?;
            File::open(parent)?.sync_all()?;
            Ok(StoredMedia { sha256, size })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn tempfile_in(dir: &Path) -> Result<PathBuf> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
    Ok(dir.join(format!("ingest-{}", hex::encode(rnd))))
}
