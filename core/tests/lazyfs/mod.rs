//! A FUSE file system for power-loss tests, in the manner of Jepsen's
//! LazyFS: it keeps everything in memory, and keeps apart what was made
//! durable (a file's bytes by `fsync`, a directory's entries by `fsync` of
//! the directory) from what was only written. [`LazyFs::cut_power`]
//! stops it at that instant (every later operation fails, as on a dead
//! disk) and returns what a disk would hold after a power cut: only the
//! durable state. Mounting that state again is the reboot.
//!
//! What it models: a file's data and size survive only from its last
//! `fsync` (`fdatasync` alike); a name (created, renamed, removed)
//! survives only from the last `fsync` of its directory; a file whose name
//! is not durable is gone. It catches a missing fsync of a file or of a
//! directory. It does not model what real file systems also do: write
//! renames and creations to disk in order without a sync, or keep some
//! unsynced blocks of a file (a torn file under its final name); code
//! that renames a file into place must sync the file first, as ours does.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

const ROOT: u64 = 1;
// Only this file system changes its files: the kernel may cache what it
// was told for a while.
const TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Node {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<Vec<u8>, u64>,
        durable: BTreeMap<Vec<u8>, u64>,
    },
}

/// The durable state: what survives a power cut.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    nodes: BTreeMap<u64, Node>,
}

impl Disk {
    fn empty() -> Disk {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            ROOT,
            Node::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        );
        Disk { nodes }
    }

    /// What a reboot finds: durable bytes and names, from the root.
    fn after_power_cut(&self) -> Disk {
        let mut out = BTreeMap::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            match self.nodes.get(&ino) {
                Some(Node::File { durable, .. }) => {
                    out.insert(
                        ino,
                        Node::File {
                            data: durable.clone(),
                            durable: durable.clone(),
                        },
                    );
                }
                Some(Node::Dir { durable, .. }) => {
                    let kept: BTreeMap<Vec<u8>, u64> = durable
                        .iter()
                        .filter(|(_, i)| self.nodes.contains_key(i))
                        .map(|(n, i)| (n.clone(), *i))
                        .collect();
                    todo.extend(kept.values().copied());
                    out.insert(
                        ino,
                        Node::Dir {
                            entries: kept.clone(),
                            durable: kept,
                        },
                    );
                }
                None => {}
            }
        }
        Disk { nodes: out }
    }
}

#[derive(Default)]
struct State {
    disk: Disk,
    next_ino: u64,
    /// Power is off: every operation fails.
    dead: bool,
    /// Syncs seen (of files and directories): the crash points.
    syncs: u64,
    /// Cut the power when this sync arrives (before it takes effect).
    cut_at_sync: Option<u64>,
    /// What the disk held when the power was cut at a sync.
    cut: Option<Disk>,
}

/// A handle on a mounted lazy file system.
#[derive(Clone)]
pub struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the power: from now on every operation fails; returns what the
    /// disk holds.
    pub fn cut_power(&self) -> Disk {
        let mut s = self.lock();
        s.dead = true;
        s.disk.after_power_cut()
    }

    /// How many file and directory syncs it has seen.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Cuts the power when the `n`th sync (counting from the mount)
    /// arrives, before it takes effect: the syncing call fails.
    pub fn cut_at_sync(&self, n: u64) {
        self.lock().cut_at_sync = Some(n);
    }

    /// The disk as the power cut at a sync left it, once it happened.
    pub fn take_cut(&self) -> Option<Disk> {
        self.lock().cut.take()
    }
}

/// Mounts `disk` (or an empty disk) at `at`. Dropping the session
/// unmounts it.
pub fn mount(
    at: &std::path::Path,
    disk: Option<Disk>,
) -> std::io::Result<(LazyFs, fuser::BackgroundSession)> {
    let disk = disk.unwrap_or_else(Disk::empty);
    let next_ino = disk.nodes.keys().max().copied().unwrap_or(ROOT) + 1;
    let fs = LazyFs {
        state: Arc::new(Mutex::new(State {
            disk,
            next_ino,
            dead: false,
            syncs: 0,
            cut_at_sync: None,
            cut: None,
        })),
    };
    let session = fuser::spawn_mount2(
        Fuse(fs.clone()),
        at,
        &[MountOption::FSName("lazyfs".into())],
    )?;
    Ok((fs, session))
}

struct Fuse(LazyFs);

fn attr(ino: u64, node: &Node) -> FileAttr {
    let (kind, size, perm, nlink) = match node {
        Node::File { data, .. } => (FileType::RegularFile, data.len() as u64, 0o600, 1),
        Node::Dir { .. } => (FileType::Directory, 0, 0o700, 2),
    };
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

const EIO: i32 = libc::EIO;

impl Fuse {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T, i32>) -> Result<T, i32> {
        let mut s = self.0.lock();
        if s.dead {
            return Err(EIO);
        }
        f(&mut s)
    }
}

fn dir_entries(s: &mut State, ino: u64) -> Result<&mut BTreeMap<Vec<u8>, u64>, i32> {
    match s.disk.nodes.get_mut(&ino) {
        Some(Node::Dir { entries, .. }) => Ok(entries),
        Some(_) => Err(libc::ENOTDIR),
        None => Err(libc::ENOENT),
    }
}

fn name(n: &OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    n.as_bytes().to_vec()
}

impl Filesystem for Fuse {
    fn lookup(&mut self, _: &Request<'_>, parent: u64, n: &OsStr, reply: ReplyEntry) {
        match self.with(|s| {
            let ino = *dir_entries(s, parent)?.get(&name(n)).ok_or(libc::ENOENT)?;
            let node = s.disk.nodes.get(&ino).ok_or(libc::ENOENT)?;
            Ok(attr(ino, node))
        }) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _: &Request<'_>, ino: u64, _: Option<u64>, reply: ReplyAttr) {
        match self.with(|s| Ok(attr(ino, s.disk.nodes.get(&ino).ok_or(libc::ENOENT)?))) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        match self.with(|s| {
            let node = s.disk.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
            if let (Some(size), Node::File { data, .. }) = (size, &mut *node) {
                let size = usize::try_from(size).map_err(|_| libc::EFBIG)?;
                data.resize(size, 0);
            }
            Ok(attr(ino, node))
        }) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _: &Request<'_>,
        parent: u64,
        n: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.with(|s| {
            let ino = s.next_ino;
            let entries = dir_entries(s, parent)?;
            if entries.contains_key(&name(n)) {
                return Err(libc::EEXIST);
            }
            entries.insert(name(n), ino);
            s.next_ino += 1;
            let node = Node::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            };
            let a = attr(ino, &node);
            s.disk.nodes.insert(ino, node);
            Ok(a)
        }) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _: &Request<'_>,
        parent: u64,
        n: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|s| {
            let existing = dir_entries(s, parent)?.get(&name(n)).copied();
            if let Some(ino) = existing {
                if flags & libc::O_EXCL != 0 {
                    return Err(libc::EEXIST);
                }
                let node = s.disk.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
                if let Node::File { data, .. } = node {
                    if flags & libc::O_TRUNC != 0 {
                        data.clear();
                    }
                }
                return Ok(attr(ino, node));
            }
            let ino = s.next_ino;
            s.next_ino += 1;
            dir_entries(s, parent)?.insert(name(n), ino);
            let node = Node::File {
                data: Vec::new(),
                durable: Vec::new(),
            };
            let a = attr(ino, &node);
            s.disk.nodes.insert(ino, node);
            Ok(a)
        }) {
            Ok(a) => reply.created(&TTL, &a, 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match self.with(|s| {
            let node = s.disk.nodes.get_mut(&ino).ok_or(libc::ENOENT)?;
            if let Node::File { data, .. } = node {
                if flags & libc::O_TRUNC != 0 {
                    data.clear();
                }
            }
            Ok(())
        }) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        match self.with(|s| match s.disk.nodes.get(&ino) {
            Some(Node::File { data, .. }) => {
                let start = usize::try_from(offset)
                    .map_err(|_| libc::EINVAL)?
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(data[start..end].to_vec())
            }
            Some(_) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        bytes: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.with(|s| match s.disk.nodes.get_mut(&ino) {
            Some(Node::File { data, .. }) => {
                let start = usize::try_from(offset).map_err(|_| libc::EINVAL)?;
                let end = start.checked_add(bytes.len()).ok_or(libc::EFBIG)?;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
                Ok(bytes.len() as u32)
            }
            Some(_) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&mut self, _: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        match self.with(|s| {
            s.syncs += 1;
            if s.cut_at_sync == Some(s.syncs) {
                s.cut = Some(s.disk.after_power_cut());
                s.dead = true;
                return Err(EIO);
            }
            match s.disk.nodes.get_mut(&ino) {
                Some(Node::File { data, durable }) => *durable = data.clone(),
                Some(Node::Dir { entries, durable }) => *durable = entries.clone(),
                None => return Err(libc::ENOENT),
            }
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&mut self, r: &Request<'_>, ino: u64, fh: u64, data: bool, reply: ReplyEmpty) {
        self.fsync(r, ino, fh, data, reply)
    }

    fn unlink(&mut self, _: &Request<'_>, parent: u64, n: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| {
            dir_entries(s, parent)?
                .remove(&name(n))
                .map(|_| ())
                .ok_or(libc::ENOENT)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _: &Request<'_>, parent: u64, n: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| {
            let ino = *dir_entries(s, parent)?.get(&name(n)).ok_or(libc::ENOENT)?;
            if !dir_entries(s, ino)?.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            dir_entries(s, parent)?.remove(&name(n));
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _: &Request<'_>,
        parent: u64,
        n: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| {
            let ino = *dir_entries(s, parent)?.get(&name(n)).ok_or(libc::ENOENT)?;
            let target = dir_entries(s, newparent)?;
            if flags & libc::RENAME_NOREPLACE != 0 && target.contains_key(&name(newname)) {
                return Err(libc::EEXIST);
            }
            target.insert(name(newname), ino);
            if (parent, name(n)) != (newparent, name(newname)) {
                dir_entries(s, parent)?.remove(&name(n));
            }
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.with(|s| {
            let entries = dir_entries(s, newparent)?;
            if entries.contains_key(&name(newname)) {
                return Err(libc::EEXIST);
            }
            entries.insert(name(newname), ino);
            Ok(attr(ino, s.disk.nodes.get(&ino).ok_or(libc::ENOENT)?))
        }) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.with(|s| {
            let entries = dir_entries(s, ino)?.clone();
            let mut out = vec![
                (ino, FileType::Directory, b".".to_vec()),
                (ino, FileType::Directory, b"..".to_vec()),
            ];
            for (n, i) in entries {
                let kind = match s.disk.nodes.get(&i) {
                    Some(Node::Dir { .. }) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                out.push((i, kind, n));
            }
            Ok(out)
        });
        match listed {
            Ok(all) => {
                use std::os::unix::ffi::OsStrExt;
                for (k, (i, kind, n)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
                    if reply.add(i, (k + 1) as i64, kind, OsStr::from_bytes(&n)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }
}

/// Skips a power-loss test with a message, or fails it when
/// `FR_REQUIRE_TOOLS` is set (CI must never pass it by skipping).
pub fn skip(why: &str) {
    if std::env::var_os("FR_REQUIRE_TOOLS").is_some() {
        panic!("{why}, and FR_REQUIRE_TOOLS is set: this test must run");
    }
    eprintln!("SKIPPED: {why}");
}

/// Where the power-loss tests cut: a seeded generator (the seed printed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Whether this machine can mount the power-loss file system (root and
/// /dev/fuse); if not, the test is skipped (see [`skip`]).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/fuse").exists() {
        skip("the power-loss file system needs root and /dev/fuse");
        return false;
    }
    true
}

/// Power cuts per test: `FR_POWER_ROUNDS`, 200 by default.
pub fn rounds() -> u32 {
    std::env::var("FR_POWER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}
