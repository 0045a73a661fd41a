//! Content-addressed media files. A file is streamed once, in bounded
//! memory: each chunk is hashed and written to a temporary file, which is
//! flushed to disk and renamed to its SHA-256 name only when complete.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const CHUNK: usize = 1 << 20;
/// Chunks queued between the hashing and the writing thread.
const QUEUE: usize = 4;
/// Bytes written between two writeback starts.
const FLUSH_EVERY: u64 = 8 << 20;

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

    /// Takes a complete file that already sits on the same filesystem (a
    /// finished upload): hashes it in one read and, if it is what
    /// `expected_sha256` says, moves it into place without copying.
    /// Otherwise the file is deleted and `None` returned.
    pub fn adopt(&self, file: &Path, expected_sha256: &str) -> Result<Option<StoredMedia>> {
        let mut input = File::open(file)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut size = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let sha256 = hex::encode(hasher.finalize());
        if sha256 != expected_sha256 {
            fs::remove_file(file)?;
            return Ok(None);
        }
        input.sync_all()?;
        let dest = self.path_of(&sha256);
        let parent = dest.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)?;
        fs::rename(file, &dest)?;
        File::open(parent)?.sync_all()?;
        Ok(Some(StoredMedia { sha256, size }))
    }

    /// Streams from any reader (used for uploads too). Hashing (on this
    /// thread) overlaps writing and flushing (on a writer thread); at most
    /// `QUEUE` chunks are in flight, so memory stays bounded.
    pub fn ingest_from(
        &self,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<StoredMedia> {
        let tmp = tempfile_in(&self.dir.join("tmp"))?;
        let result = self.ingest_to(&tmp, read);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn ingest_to(
        &self,
        tmp: &Path,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
    ) -> Result<StoredMedia> {
        let mut out = File::create(tmp)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE + 2);
        let (hash, size) = std::thread::scope(|scope| -> Result<(String, u64)> {
            let writer = scope.spawn(move || -> Result<()> {
                let mut written = 0u64;
                let mut flushed = 0u64;
                for chunk in rx {
                    out.write_all(&chunk)?;
                    written += chunk.len() as u64;
                    // Start writing back what we have, without waiting, so
                    // the disk works while we hash; the final fsync is short.
                    if written - flushed >= FLUSH_EVERY {
                        start_writeback(&out, flushed, written - flushed);
                        flushed = written;
                    }
                    let _ = free_tx.try_send(chunk);
                }
                out.sync_all()?;
                Ok(())
            });
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let read_result = (|| -> Result<()> {
                loop {
                    let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
                    buf.resize(CHUNK, 0);
                    let n = read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    hasher.update(&buf);
                    size += n as u64;
                    if tx.send(buf).is_err() {
                        return Ok(()); // the writer failed; its error is reported below
                    }
                }
            })();
            drop(tx);
            let write_result = writer
                .join()
                .unwrap_or_else(|_| Err(Error::Io(std::io::ErrorKind::Other)));
            read_result?;
            write_result?;
            Ok((hex::encode(hasher.finalize()), size))
        })?;
        let dest = self.path_of(&hash);
        let parent = dest.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)?;
        fs::rename(tmp, &dest)?;
        File::open(parent)?.sync_all()?;
        Ok(StoredMedia { sha256: hash, size })
    }
}

/// Asks the kernel to start writing a range to disk, without waiting.
/// Only a hint: durability comes from the final `sync_all`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor we own; it reads no memory.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

fn tempfile_in(dir: &Path) -> Result<PathBuf> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
    Ok(dir.join(format!("ingest-{}", hex::encode(rnd))))
}
