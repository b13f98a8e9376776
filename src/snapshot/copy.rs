//! Copying a workspace tree on the host: for snapshots, restores and forks.
//!
//! The source is a workspace that a container may be writing to, and whose contents
//! that container chose: every step is taken from a directory descriptor with
//! `O_NOFOLLOW` and `AT_SYMLINK_NOFOLLOW`, so a symlink (or a directory swapped for one
//! mid-copy) is copied as a link and never followed out of the tree. Files are cloned
//! (`FICLONE`, a reflink) where the filesystem can, else copied in the kernel
//! (`copy_file_range`), by a few threads; modes, owners (when berthd is root), times,
//! hard links and FIFOs come along; sockets and device nodes are skipped. The destination must not exist: it
//! is made here, and on any error the caller removes it (`remove_tree`), so a failed
//! copy leaves nothing behind.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Room kept free on the destination's filesystem beyond what a copy writes.
pub const RESERVE: u64 = 16 << 20;

/// A failed copy: the path it was at and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CopyError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl CopyError {
    /// The destination's filesystem is full (or over quota).
    pub fn no_space(&self) -> bool {
        matches!(self.source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError { path: path.to_path_buf(), source }
}

/// What a walk found: bytes of regular files (each hard-linked file once) and entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub bytes: u64,
    pub entries: u64,
}

/// Opens a directory without following a link at its last component.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: a valid C string; the fd is owned on success.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    owned(fd)
}

fn open_at(dir: &OwnedFd, name: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a valid descriptor and C string; the fd is owned on success.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    owned(fd)
}

fn owned(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with NUL"))
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: a zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out-pointer.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The names in a directory held open (read through its descriptor, never by path).
fn names(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        out.push(e?.file_name());
    }
    out.sort();
    Ok(out)
}

fn kind(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// Sums the tree under `src` (not following links): what a copy of it writes.
pub fn measure(src: &Path) -> Result<Tally, CopyError> {
    let root = open_dir(src).map_err(at(src))?;
    let mut t = Tally::default();
    let mut seen = HashMap::new();
    measure_dir(&root, src, &mut t, &mut seen)?;
    Ok(t)
}

fn measure_dir(dir: &OwnedFd, path: &Path, t: &mut Tally, seen: &mut HashMap<(u64, u64), ()>) -> Result<(), CopyError> {
    for name in names(dir).map_err(at(path))? {
        let p = path.join(&name);
        let st = match stat_at(dir, &name) {
            Ok(st) => st,
            // Removed since the listing: a workspace in use changes under a walk.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(at(&p)(e)),
        };
        t.entries += 1;
        match kind(&st) {
            libc::S_IFDIR => match open_at(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(sub) => measure_dir(&sub, &p, t, seen)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(&p)(e)),
            },
            libc::S_IFREG if st.st_nlink <= 1 || seen.insert((st.st_dev, st.st_ino), ()).is_none() => {
                t.bytes += st.st_size as u64;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let c = cstr(dir.as_os_str())?;
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// Removes a tree if it is there (a link is removed, never followed).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies the tree under `src` to `dst`, which must not exist; returns what was copied.
/// On error the partial `dst` is left for the caller to remove.
///
/// One thread walks the tree, making every entry (directories, links, FIFOs, and each
/// file, opened with its copy); the files' bytes are copied by a few workers through a
/// bounded queue, so the copy uses every core the kernel's copying needs and holds at
/// most a few hundred descriptors. Directories get their times last, deepest first, once
/// nothing more is created in them.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<Tally, CopyError> {
    let root = open_dir(src).map_err(at(src))?;
    let st = fstat(&root).map_err(at(src))?;
    std::fs::DirBuilder::new().mode(0o700).create(dst).map_err(at(dst))?;
    let shared = Arc::new(Shared { bytes: AtomicU64::new(0), failed: Mutex::new(None), stop: AtomicBool::new(false) });
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let owners = is_root();
    let workers: Vec<_> = (0..workers())
        .map(|_| {
            let (rx, shared) = (rx.clone(), shared.clone());
            std::thread::spawn(move || loop {
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                if shared.stop.load(Ordering::Relaxed) {
                    continue;
                }
                match fill(job.input, job.out, &job.st, &job.dst, owners) {
                    Ok(bytes) => {
                        shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(e) => shared.fail(e),
                }
            })
        })
        .collect();
    let mut c = Copier {
        t: Tally::default(),
        links: HashMap::new(),
        root: owners,
        jobs: Some(tx),
        dirs: Vec::new(),
        shared: shared.clone(),
    };
    let walked = c.dir(&Arc::new(root), src, dst);
    c.jobs = None;
    for w in workers {
        let _ = w.join();
    }
    walked?;
    if let Some(e) = shared.failed.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    for (path, st) in c.dirs.iter().rev() {
        finish(path, st, false, owners)?;
    }
    finish(dst, &st, false, owners)?;
    c.t.bytes += shared.bytes.load(Ordering::Relaxed);
    Ok(c.t)
}

/// Files queued for the workers at most; each holds two open descriptors.
const QUEUE: usize = 64;

fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 4)
}

struct Shared {
    bytes: AtomicU64,
    failed: Mutex<Option<CopyError>>,
    stop: AtomicBool,
}

impl Shared {
    fn fail(&self, e: CopyError) {
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(e);
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One regular file for a worker: the source and the copy, both open (the walker made
/// the copy: creating files in one directory from several threads makes them queue on
/// the directory's lock, and on two cores the waiter's spinning starves the holder).
struct Job {
    input: File,
    out: File,
    st: libc::stat,
    dst: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

struct Copier {
    t: Tally,
    /// Hard-linked files already copied: (dev, ino) of the source, path of the copy.
    links: HashMap<(u64, u64), PathBuf>,
    /// Owners are kept only when berthd may set them.
    root: bool,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    /// Directories made, in the order made, with the source's stat: finished last.
    dirs: Vec<(PathBuf, libc::stat)>,
    shared: Arc<Shared>,
}

impl Copier {
    fn dir(&mut self, dir: &Arc<OwnedFd>, from: &Path, to: &Path) -> Result<(), CopyError> {
        for name in names(dir).map_err(at(from))? {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let (src, dst) = (from.join(&name), to.join(&name));
            let st = match stat_at(dir, &name) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(at(&src)(e)),
            };
            match kind(&st) {
                libc::S_IFDIR => {
                    let sub = match open_at(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY) {
                        Ok(sub) => sub,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        // Swapped for a link (or a file) after the stat: not followed, not copied.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => continue,
                        Err(e) => return Err(at(&src)(e)),
                    };
                    std::fs::DirBuilder::new().mode(0o700).create(&dst).map_err(at(&dst))?;
                    self.dirs.push((dst.clone(), st));
                    self.dir(&Arc::new(sub), &src, &dst)?;
                }
                libc::S_IFREG if st.st_nlink > 1 => self.linked_file(dir, &name, &st, &src, &dst)?,
                libc::S_IFREG => {
                    let Some((input, out, st)) = open_pair(dir, &name, &src, &dst)? else { continue };
                    let job = Job { input, out, st, dst };
                    let sent = self.jobs.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
                    if !sent {
                        return Ok(());
                    }
                }
                libc::S_IFLNK => {
                    let target = readlink_at(dir, &name).map_err(at(&src))?;
                    std::os::unix::fs::symlink(&target, &dst).map_err(at(&dst))?;
                    finish(&dst, &st, true, self.root)?;
                }
                libc::S_IFIFO => {
                    let c = cstr(dst.as_os_str()).map_err(at(&dst))?;
                    // SAFETY: a valid C string.
                    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
                        return Err(at(&dst)(io::Error::last_os_error()));
                    }
                    finish(&dst, &st, false, self.root)?;
                }
                // Sockets and device nodes mean nothing in a copy.
                _ => {
                    tracing::debug!(path = %src.display(), "not copied: a socket or device node");
                    continue;
                }
            }
            self.t.entries += 1;
        }
        Ok(())
    }

    /// A file with several names: copied once (here, in order), linked for the others.
    fn linked_file(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        st: &libc::stat,
        src: &Path,
        dst: &Path,
    ) -> Result<(), CopyError> {
        if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
            return std::fs::hard_link(first, dst).map_err(at(dst));
        }
        if let Some((input, out, now)) = open_pair(dir, name, src, dst)? {
            self.t.bytes += fill(input, out, &now, dst, self.root)?;
            self.links.insert((now.st_dev, now.st_ino), dst.to_path_buf());
        }
        Ok(())
    }
}

/// Opens a regular file and makes its copy (empty); `None` if it is gone or no longer a
/// regular file.
fn open_pair(
    dir: &OwnedFd,
    name: &OsStr,
    src: &Path,
    dst: &Path,
) -> Result<Option<(File, File, libc::stat)>, CopyError> {
    let fd = match open_at(dir, name, libc::O_RDONLY | libc::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(at(src)(e)),
    };
    let now = fstat(&fd).map_err(at(src))?;
    if kind(&now) != libc::S_IFREG {
        return Ok(None);
    }
    let out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst).map_err(at(dst))?;
    Ok(Some((File::from(fd), out, now)))
}

/// Fills a copy from its source, then gives it the source's owner, mode and times
/// (through the descriptor: no path is looked up again); returns the bytes copied.
fn fill(mut input: File, mut out: File, st: &libc::stat, dst: &Path, owners: bool) -> Result<u64, CopyError> {
    // A reflink where the filesystem has them; otherwise the kernel copies
    // (`std::io::copy` between files uses copy_file_range).
    // SAFETY: two valid descriptors; FICLONE only reads the source's.
    let cloned = unsafe { libc::ioctl(out.as_raw_fd(), FICLONE, input.as_raw_fd()) } == 0;
    let bytes = if cloned { st.st_size as u64 } else { io::copy(&mut input, &mut out).map_err(at(dst))? };
    let fd = out.as_raw_fd();
    // SAFETY: a valid descriptor throughout. Owner before mode: chown clears set-id bits.
    if owners && unsafe { libc::fchown(fd, st.st_uid, st.st_gid) } < 0 {
        return Err(at(dst)(io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::fchmod(fd, st.st_mode & 0o7777) } < 0 {
        return Err(at(dst)(io::Error::last_os_error()));
    }
    let times = [
        libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
        libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
    ];
    // SAFETY: a valid descriptor and two timespecs.
    if unsafe { libc::futimens(fd, times.as_ptr()) } < 0 {
        return Err(at(dst)(io::Error::last_os_error()));
    }
    Ok(bytes)
}

/// Owner (when `owners`), mode and times of a copied entry, from the source's stat.
fn finish(dst: &Path, st: &libc::stat, link: bool, owners: bool) -> Result<(), CopyError> {
    let c = cstr(dst.as_os_str()).map_err(at(dst))?;
    if owners {
        // SAFETY: a valid C string. Owner before mode: chown clears set-id bits.
        if unsafe { libc::lchown(c.as_ptr(), st.st_uid, st.st_gid) } < 0 {
            return Err(at(dst)(io::Error::last_os_error()));
        }
    }
    if !link {
        // SAFETY: a valid C string.
        if unsafe { libc::chmod(c.as_ptr(), st.st_mode & 0o7777) } < 0 {
            return Err(at(dst)(io::Error::last_os_error()));
        }
    }
    let times = [
        libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
        libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
    ];
    // SAFETY: a valid C string and two timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(at(dst)(io::Error::last_os_error()));
    }
    Ok(())
}

/// `_IOW(0x94, 9, int)`: clone a whole file (a reflink).
const FICLONE: libc::c_ulong = 0x4004_9409;

fn readlink_at(dir: &OwnedFd, name: &OsStr) -> io::Result<PathBuf> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid descriptor, C string and buffer of the given length.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&buf))))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn a_tree_comes_across_whole_and_links_stay_links() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/data"), vec![7u8; 300_000]).unwrap();
        std::fs::write(src.join("x.sh"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("x.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::fs::hard_link(src.join("x.sh"), src.join("x-again")).unwrap();
        // A link out of the tree: copied as a link, never followed.
        let secret = t.path().join("secret");
        std::fs::write(&secret, b"host only").unwrap();
        std::os::unix::fs::symlink(&secret, src.join("out")).unwrap();
        std::os::unix::fs::symlink(t.path(), src.join("up")).unwrap();
        let c = CString::new(src.join("pipe").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);

        let measured = measure(&src).unwrap();
        let dst = t.path().join("dst");
        let copied = copy_tree(&src, &dst).unwrap();
        assert_eq!(copied.bytes, 300_000 + 10);
        assert_eq!(measured.bytes, copied.bytes, "measure counts what the copy writes");
        assert_eq!(std::fs::read(dst.join("a/b/data")).unwrap(), vec![7u8; 300_000]);
        assert_eq!(std::fs::metadata(dst.join("x.sh")).unwrap().permissions().mode() & 0o7777, 0o751);
        assert_eq!(
            std::fs::metadata(dst.join("x.sh")).unwrap().ino(),
            std::fs::metadata(dst.join("x-again")).unwrap().ino(),
            "hard links stay one file"
        );
        assert_eq!(std::fs::read_link(dst.join("out")).unwrap(), secret);
        assert!(std::fs::symlink_metadata(dst.join("up")).unwrap().file_type().is_symlink());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(dst.join("pipe")).unwrap().file_type().is_fifo());
        assert_eq!(
            std::fs::metadata(src.join("a/b/data")).unwrap().mtime(),
            std::fs::metadata(dst.join("a/b/data")).unwrap().mtime(),
            "times come along"
        );
        // The destination must be new: nothing is merged into an existing tree.
        let e = copy_tree(&src, &dst).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists, "{e}");
    }

    /// Running out of room mid-way is an error that says so (the caller then removes the
    /// partial copy). Needs root for a small tmpfs to fill.
    #[test]
    fn a_full_filesystem_is_reported_as_such() {
        if !is_root() {
            assert!(std::env::var_os("REQUIRE_DOCKER").is_none(), "this test needs root (a tmpfs mount) under CI");
            eprintln!("skipped: needs root to mount a small tmpfs");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (src, small) = (t.path().join("src"), t.path().join("small"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&small).unwrap();
        for i in 0..4 {
            std::fs::write(src.join(format!("f{i}")), vec![1u8; 1 << 20]).unwrap();
        }
        let (fs, target, opts) =
            (CString::new("tmpfs").unwrap(), cstr(small.as_os_str()).unwrap(), CString::new("size=2m").unwrap());
        // SAFETY: valid C strings.
        let rc = unsafe { libc::mount(fs.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, opts.as_ptr().cast()) };
        assert_eq!(rc, 0, "mount tmpfs: {}", io::Error::last_os_error());
        struct Unmount(CString);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // SAFETY: a valid C string.
                unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _u = Unmount(target);
        assert!(free_space(&small).unwrap() <= 2 << 20);
        let e = copy_tree(&src, &small.join("copy")).unwrap_err();
        assert!(e.no_space(), "{e}");
        remove_tree(&small.join("copy")).unwrap();
        assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0, "the partial copy is gone");
    }

    #[test]
    fn a_link_as_the_source_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
        let e = copy_tree(&t.path().join("link"), &t.path().join("dst")).unwrap_err();
        assert!(matches!(e.source.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)), "{e}");
        assert!(!t.path().join("dst").exists());
    }
}
