//! Content-addressed media files. A file is streamed once, in bounded
//! memory: each chunk is hashed and written to a temporary file, which is
//! flushed to disk and renamed to its SHA-256 name only when complete.
//!
//! On a device with an encrypted store, files are sealed with AES-256-GCM
//! in the STREAM construction (`aead::stream::StreamBE32`): a header (magic
//! and a random 7-byte nonce prefix), then 64 KiB segments, each with its
//! own tag and a counter in its nonce, the last one flagged as last. So a
//! file is encrypted and read back in bounded memory, any segment can be
//! read on its own (seeking), and reordering, truncating or extending a
//! file fails authentication. The name stays the hash of the plain bytes,
//! which is what reports sign and the station checks.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::{Aes256Gcm, KeyInit};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub(crate) const MAGIC: &[u8; 8] = b"FRMEDIA1";
const NONCE_PREFIX: usize = 7;
const HEADER: usize = MAGIC.len() + NONCE_PREFIX;
/// Plain bytes per sealed segment.
const SEGMENT: usize = 64 * 1024;
const TAG: usize = 16;
const SEALED_SEGMENT: u64 = (SEGMENT + TAG) as u64;

/// The key that seals a store's media files. Kept inside the encrypted
/// database, so changing the store key does not re-encrypt media.
#[derive(Clone)]
pub struct MediaKey(Zeroizing<[u8; 32]>);

impl MediaKey {
    pub fn generate() -> Result<Self> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
        Ok(MediaKey(k))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Corrupt("media key has the wrong length".into()))?;
        Ok(MediaKey(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    fn stream(&self, prefix: &[u8]) -> StreamBE32<Aes256Gcm> {
        let aead = Aes256Gcm::new(self.0.as_ref().into());
        StreamBE32::from_aead(aead, prefix.into())
    }
}

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaKey(..)")
    }
}

fn auth_failed() -> Error {
    Error::Corrupt("media file fails authentication".into())
}

/// Encrypts a stream of plain bytes segment by segment.
struct Sealer {
    stream: StreamBE32<Aes256Gcm>,
    header: [u8; HEADER],
    position: u32,
    pending: Vec<u8>,
}

impl Sealer {
    fn new(key: &MediaKey) -> Result<Self> {
        let mut header = [0u8; HEADER];
        header[..MAGIC.len()].copy_from_slice(MAGIC);
        getrandom::fill(&mut header[MAGIC.len()..])
            .map_err(|_| Error::Io(std::io::ErrorKind::Other))?;
        Ok(Sealer {
            stream: key.stream(&header[MAGIC.len()..]),
            header,
            position: 0,
            pending: Vec::with_capacity(SEGMENT + TAG),
        })
    }

    fn seal_pending(&mut self, last: bool, out: &mut impl Write) -> Result<()> {
        let mut segment = std::mem::replace(&mut self.pending, Vec::with_capacity(SEGMENT + TAG));
        self.stream
            .encrypt_in_place(self.position, last, &self.header, &mut segment)
            .map_err(|_| Error::Corrupt("media segment cannot be sealed".into()))?;
        self.position = self
            .position
            .checked_add(1)
            .ok_or_else(|| Error::Corrupt("media file too large to seal".into()))?;
        out.write_all(&segment)?;
        Ok(())
    }

    /// Seals every full segment of `data`; keeps the rest, and always at
    /// least one byte once any arrived, so `finish` has a last segment.
    fn push(&mut self, mut data: &[u8], out: &mut impl Write) -> Result<()> {
        while !data.is_empty() {
            let take = (SEGMENT - self.pending.len()).min(data.len());
            if take == 0 {
                self.seal_pending(false, out)?;
                continue;
            }
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    fn finish(mut self, out: &mut impl Write) -> Result<()> {
        self.seal_pending(true, out)
    }
}

/// Reads a stored media file's plain bytes, decrypting sealed files one
/// segment at a time. Seekable, for resumed uploads and partial reads.
pub struct MediaReader {
    file: File,
    inner: ReaderKind,
    /// Plain size of the file.
    size: u64,
    /// Plain offset of the next byte `read` returns.
    pos: u64,
}

enum ReaderKind {
    Plain,
    Sealed {
        stream: Box<StreamBE32<Aes256Gcm>>,
        header: [u8; HEADER],
        segments: u64,
        /// Decrypted segment `.0`, if any.
        current: Option<(u64, Vec<u8>)>,
    },
}

impl MediaReader {
    fn open(path: &Path, key: Option<&MediaKey>) -> Result<Self> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let Some(key) = key else {
            return Ok(MediaReader {
                file,
                inner: ReaderKind::Plain,
                size: len,
                pos: 0,
            });
        };
        let mut header = [0u8; HEADER];
        file.read_exact(&mut header).map_err(|_| auth_failed())?;
        if &header[..MAGIC.len()] != MAGIC {
            return Err(auth_failed());
        }
        let body = len - HEADER as u64;
        let segments = body.div_ceil(SEALED_SEGMENT).max(1);
        let size = body
            .checked_sub(segments * TAG as u64)
            .ok_or_else(auth_failed)?;
        let mut reader = MediaReader {
            file,
            inner: ReaderKind::Sealed {
                stream: Box::new(key.stream(&header[MAGIC.len()..])),
                header,
                segments,
                current: None,
            },
            size,
            pos: 0,
        };
        // Authenticate the last segment now: the segment count comes from
        // the file's length, so a truncated or extended file fails here
        // even when the bytes read never reach its end.
        reader.load_segment(segments - 1).map_err(read_error)?;
        Ok(reader)
    }

    /// The number of plain bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads everything left (for small files and tests).
    pub fn read_all(mut self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity((self.size - self.pos.min(self.size)) as usize);
        self.read_to_end(&mut out).map_err(read_error)?;
        Ok(out)
    }
}

/// A failed read of a stored file, as the core's error.
pub fn read_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        auth_failed()
    } else {
        Error::from(e)
    }
}

impl Read for MediaReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        match &mut self.inner {
            ReaderKind::Plain => {
                let n = self.file.read(buf)?;
                self.pos += n as u64;
                Ok(n)
            }
            ReaderKind::Sealed { .. } => {
                let index = self.pos / SEGMENT as u64;
                let start = (self.pos - index * SEGMENT as u64) as usize;
                let seg = self.load_segment(index)?;
                let avail = seg.get(start..).ok_or_else(invalid_data)?;
                let n = avail.len().min(buf.len());
                buf[..n].copy_from_slice(&avail[..n]);
                self.pos += n as u64;
                Ok(n)
            }
        }
    }
}

impl MediaReader {
    /// Decrypts segment `index` (kept until another one is needed).
    fn load_segment(&mut self, index: u64) -> std::io::Result<&[u8]> {
        let ReaderKind::Sealed {
            stream,
            header,
            segments,
            current,
        } = &mut self.inner
        else {
            return Err(invalid_data());
        };
        if current.as_ref().map(|c| c.0) != Some(index) {
            let mut seg = vec![0u8; SEALED_SEGMENT as usize];
            self.file
                .seek(SeekFrom::Start(HEADER as u64 + index * SEALED_SEGMENT))?;
            let n = read_full(&mut self.file, &mut seg)?;
            seg.truncate(n);
            let position = u32::try_from(index).map_err(|_| invalid_data())?;
            stream
                .decrypt_in_place(position, index + 1 == *segments, header, &mut seg)
                .map_err(|_| invalid_data())?;
            *current = Some((index, seg));
        }
        match current {
            Some((_, seg)) => Ok(seg),
            None => Err(invalid_data()),
        }
    }
}

impl Seek for MediaReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        }
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        if let ReaderKind::Plain = self.inner {
            self.file.seek(SeekFrom::Start(target))?;
        }
        self.pos = target;
        Ok(target)
    }
}

fn invalid_data() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::InvalidData)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

const CHUNK: usize = 1 << 20;
/// Chunks queued between the hashing and the writing thread.
const QUEUE: usize = 4;
/// Bytes written between two writeback starts.
const FLUSH_EVERY: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct MediaStore {
    dir: PathBuf,
    /// Set on an encrypted device store: files are sealed.
    key: Option<MediaKey>,
}

/// A stored media file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMedia {
    pub sha256: String,
    pub size: u64,
}

impl MediaStore {
    /// A store of plain files (the station's).
    pub fn open(dir: PathBuf) -> Result<Self> {
        Self::open_with(dir, None)
    }

    /// A store whose files are sealed with `key` when given.
    pub fn open_with(dir: PathBuf, key: Option<MediaKey>) -> Result<Self> {
        create_dir_durable(&dir.join("tmp"))?;
        // Leftovers of an ingest interrupted by a crash are never referenced.
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        Ok(MediaStore { dir, key })
    }

    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// Opens a stored file for reading its plain bytes.
    pub fn open_reader(&self, sha256_hex: &str) -> Result<MediaReader> {
        let path = self.path_of(sha256_hex);
        if !path.is_file() {
            return Err(Error::MediaNotFound(sha256_hex.to_string()));
        }
        MediaReader::open(&path, self.key.as_ref())
    }

    /// Seals a plain file already in place (a store being encrypted for
    /// the first time). The plain file is replaced only once the sealed
    /// copy is on disk.
    pub(crate) fn seal_in_place(&self, sha256_hex: &str) -> Result<()> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let path = self.path_of(sha256_hex);
        let mut input = File::open(&path)?;
        let tmp = tempfile_in(&self.dir.join("tmp"))?;
        let result = (|| -> Result<()> {
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            let mut sealer = Sealer::new(key)?;
            out.write_all(&sealer.header)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sealer.push(&buf[..n], &mut out)?;
            }
            sealer.finish(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, &path)?;
            if let Some(parent) = path.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The hashes of every stored file (for sealing a whole store).
    pub(crate) fn stored_hashes(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for fan in fs::read_dir(&self.dir)?.flatten() {
            if fan.file_name() == "tmp" || !fan.path().is_dir() {
                continue;
            }
            for f in fs::read_dir(fan.path())?.flatten() {
                if let Some(name) = f.file_name().to_str() {
                    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                        out.push(name.to_string());
                    }
                }
            }
        }
        Ok(out)
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
        if self.key.is_some() {
            // A sealed store cannot take plain bytes as they are.
            let stored = self.ingest(file)?;
            fs::remove_file(file)?;
            if stored.sha256 != expected_sha256 {
                return Ok(None);
            }
            return Ok(Some(stored));
        }
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
        create_dir_durable(parent)?;
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
        self.ingest_checked(read, None)?
            .ok_or_else(|| Error::Corrupt("media ingest".into()))
    }

    /// As [`MediaStore::ingest_from`], for bytes that must hash to
    /// `sha256` (from a peer or the station): `None`, and nothing kept,
    /// when they do not.
    pub fn ingest_expecting(
        &self,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
        sha256: &str,
    ) -> Result<Option<StoredMedia>> {
        self.ingest_checked(read, Some(sha256))
    }

    fn ingest_checked(
        &self,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
        expected: Option<&str>,
    ) -> Result<Option<StoredMedia>> {
        let tmp = tempfile_in(&self.dir.join("tmp"))?;
        let result = self.ingest_to(&tmp, read, expected);
        if !matches!(result, Ok(Some(_))) {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn ingest_to(
        &self,
        tmp: &Path,
        read: &mut dyn FnMut(&mut [u8]) -> Result<usize>,
        expected: Option<&str>,
    ) -> Result<Option<StoredMedia>> {
        let mut out = File::create(tmp)?;
        let mut sealer = self.key.as_ref().map(Sealer::new).transpose()?;
        if let Some(s) = &sealer {
            out.write_all(&s.header)?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE + 2);
        let (hash, size) = std::thread::scope(|scope| -> Result<(String, u64)> {
            let writer = scope.spawn(move || -> Result<()> {
                let mut written = 0u64;
                let mut flushed = 0u64;
                for chunk in rx {
                    match &mut sealer {
                        Some(s) => s.push(&chunk, &mut out)?,
                        None => out.write_all(&chunk)?,
                    }
                    written += chunk.len() as u64;
                    // Start writing back what we have, without waiting, so
                    // the disk works while we hash; the final fsync is short.
                    if written - flushed >= FLUSH_EVERY {
                        start_writeback(&out, flushed, written - flushed);
                        flushed = written;
                    }
                    let _ = free_tx.try_send(chunk);
                }
                if let Some(s) = sealer {
                    s.finish(&mut out)?;
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
        if expected.is_some_and(|e| e != hash) {
            return Ok(None);
        }
        let dest = self.path_of(&hash);
        let parent = dest.parent().unwrap_or(&self.dir);
        create_dir_durable(parent)?;
        fs::rename(tmp, &dest)?;
        File::open(parent)?.sync_all()?;
        Ok(Some(StoredMedia { sha256: hash, size }))
    }
}

/// Creates `dir` and any missing parent so that it survives a power cut:
/// each new directory's name is synced into its parent (a new name is
/// durable only once its directory is synced; the power-loss test finds
/// a store or a photo's directory gone otherwise).
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if dir.is_dir() {
        // Made by a process that died before syncing it, maybe: its name
        // is synced again (cheap, and this runs once per photo or open).
        if let Some(parent) = parent {
            File::open(parent)?.sync_all()?;
        }
        return Ok(());
    }
    if let Some(parent) = parent {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(parent) = parent {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
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
