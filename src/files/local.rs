//! File calls for projects that run on the host (no engine, `[local] enabled`): every
//! call is confined to the project's workspace.
//!
//! Paths are the container's: `/workspace` and `/workspace/...` mean the workspace, any
//! other path is refused, and results name paths the same way. The project's own
//! commands can write anywhere in the workspace, so it may hold symlinks and `..` meant
//! to lead out of it. Nothing here resolves a path by joining host path strings: every
//! lookup starts at an `O_PATH` descriptor of the workspace and goes through `openat2(2)`
//! with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so the kernel follows symlinks that
//! stay inside the workspace and refuses (`EXDEV`) a `..` past it, an absolute symlink or
//! a symlink that leads out. Operations on a final component (`fstatat`, `readlinkat`,
//! `mkdirat`, `unlinkat`) act on a descriptor of its parent opened that way; a recursive
//! removal walks the tree with `O_NOFOLLOW` descriptors and `unlinkat`, so it never
//! follows a symlink. Without `openat2` (Linux before 5.6, or a seccomp filter that
//! blocks it) every call is refused; there is no unconfined fallback.
//!
//! Acting as the user: with `user` given and berthd root, the calling thread takes the
//! user's filesystem uid and gid (`setfsuid`/`setfsgid`, which Linux keeps per thread)
//! and drops its supplementary groups (the raw `setgroups` system call, which, unlike
//! the C library's wrapper, changes only the calling thread), so files are created
//! owned by the user and permissions are checked as the user's, with no group access
//! beyond the user's own gid: the same groups as the user's local commands have (the
//! standard library drops them when it starts those). All of it is undone before the
//! call returns, on every path (a guard's `Drop`). This relies on nothing else in berthd
//! changing credentials through the C library while a call runs (glibc applies
//! `setuid`/`setgroups` to every thread).
//!
//! Choices where the container's agent has nothing to copy:
//! - `Read` returns at most `limit` bytes and no more than the file holds; it sets no
//!   limit of its own (the caller bounds `limit`).
//! - `Write` creates a missing file with `mode` or 0644, set exactly (not through the
//!   umask); an explicit `mode` is also set exactly on an existing file, and set again
//!   after the data is written when it has set-id bits (a write by the unprivileged
//!   user clears them). The final component may be a symlink inside the workspace
//!   (written through, as `open` does); a path that is not a regular file (a FIFO, a
//!   socket, a device) is refused without blocking.
//! - `Mkdir` and `mkdirs` make directories 0755 (or `mode` for the last one), set
//!   exactly; with `parents`, an existing directory (or a symlink to one inside the
//!   workspace) is kept as it is, its mode unchanged.
//! - A trailing `/` is dropped from every path: `/workspace/link/` names the symlink
//!   `link` itself for `Stat` and `Remove`, and `Write` to `file/` writes `file`.
//! - `Remove` of a path ending in `.` or `..` is refused (name the directory itself).
//! - Entry paths are the request's path (trailing `/` dropped) joined with the name;
//!   `Stat` of `/workspace` names the entry `workspace`.
//! - Names that are not UTF-8 are converted lossily (U+FFFD) in `name`, `path` and a
//!   symlink's `target`; `List` sorts by the raw bytes.
//! - A recursive removal holds one descriptor per directory level, so a tree deeper
//!   than the open-file limit fails (`runtime_error`, too many open files) after removing
//!   what it reached.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{EntryType, FsCall, FsEntry, FsPath, FsReply, WriteAt, WORKSPACE_IN_CONTAINER};
use crate::error::{Error, ErrorKind};

const CONFINED: &str = "project files on the host are confined to /workspace";

/// Carries out `call` in `workspace` as `user` (uid, gid; `None`: berthd's own user).
/// Blocking: run it off the async workers (it changes the calling thread's filesystem
/// credentials for the duration, and restores them).
pub fn call(workspace: &Path, user: Option<(u32, u32)>, call: FsCall) -> Result<FsReply, Error> {
    let target = Target::parse(call.path())?;
    let _user = ActAs::enter(user)?;
    let ws = Ws::open_root(workspace)?;
    match &call {
        FsCall::Read { offset, limit, .. } => read(&ws, &target, *offset, *limit),
        FsCall::Write { data, at, mode, mkdirs, .. } => write(&ws, &target, data, *at, *mode, *mkdirs),
        FsCall::List { .. } => list(&ws, &target),
        FsCall::Stat { .. } => stat(&ws, &target),
        FsCall::Remove { recursive, .. } => remove(&ws, &target, *recursive),
        FsCall::Mkdir { parents, mode, .. } => mkdir(&ws, &target, *parents, *mode),
    }
}

// ---------------------------------------------------------------------------------------
// Paths

/// A request's path: as the request gave it (for messages and results, without trailing
/// `/`) and relative to the workspace (no leading or trailing `/`; empty: the workspace).
struct Target<'a> {
    shown: &'a str,
    rel: &'a str,
}

/// How a path ends.
enum Last<'a> {
    /// The workspace itself, or a path ending in `.` or `..`: no final name to act on in
    /// a parent directory.
    Whole,
    Named {
        parent_rel: &'a str,
        parent_shown: &'a str,
        name: &'a str,
    },
}

impl<'a> Target<'a> {
    fn parse(path: &'a FsPath) -> Result<Target<'a>, Error> {
        let s = path.as_str();
        let rest = match s.strip_prefix(WORKSPACE_IN_CONTAINER) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return Err(forbidden(format!("path {s} is outside the workspace: {CONFINED}"))),
        };
        // Never shorter than "/workspace", which does not end in '/'.
        Ok(Target { shown: s.trim_end_matches('/'), rel: rest.trim_matches('/') })
    }

    fn last(&self) -> Last<'a> {
        let (parent_rel, name) = match self.rel.rsplit_once('/') {
            Some((p, n)) => (p.trim_end_matches('/'), n),
            None => ("", self.rel),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Last::Whole;
        }
        let parent_shown = match self.shown.rsplit_once('/') {
            Some((p, _)) => p.trim_end_matches('/'),
            None => self.shown,
        };
        Last::Named { parent_rel, parent_shown, name }
    }

    /// The last component as the request gave it (`workspace` for the workspace).
    fn name(&self) -> &'a str {
        self.shown.rsplit('/').next().unwrap_or(self.shown)
    }
}

fn c_string(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::invalid_params(format!("invalid path {s:?}: contains NUL")))
}

/// `rel` as a path for `openat2` (the workspace itself is `.`).
fn c_rel(rel: &str) -> Result<CString, Error> {
    c_string(if rel.is_empty() { "." } else { rel })
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

// ---------------------------------------------------------------------------------------
// Errors

/// An errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Errno(i32);

impl Errno {
    fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }

    fn of(e: &std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }

    fn message(self) -> String {
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        match text.find(" (os error") {
            Some(i) => text[..i].to_string(),
            None => text,
        }
    }
}

type Sys<T> = Result<T, Errno>;

fn cvt(r: libc::c_int) -> Sys<libc::c_int> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

fn forbidden(message: String) -> Error {
    Error::new(ErrorKind::Forbidden, message)
}

fn runtime_error(message: String) -> Error {
    Error::new(ErrorKind::RuntimeError, message)
}

/// What `e`, met while acting on `shown`, means to the caller.
fn fail(shown: &str, e: Errno) -> Error {
    match e.0 {
        libc::ENOENT => Error::new(ErrorKind::NotFound, format!("{shown} does not exist")),
        libc::EACCES | libc::EPERM | libc::EROFS => forbidden(format!("{shown}: {}", e.message().to_lowercase())),
        libc::EXDEV => {
            forbidden(format!("path {shown} leads outside the workspace (through .. or a symlink): {CONFINED}"))
        }
        libc::EISDIR => Error::invalid_params(format!("{shown} is a directory")),
        libc::ENOTDIR => Error::invalid_params(format!("{shown}: a component of the path is not a directory")),
        libc::ENOTEMPTY => Error::invalid_params(format!("{shown} is not empty")),
        libc::ELOOP => Error::invalid_params(format!("{shown}: too many levels of symbolic links")),
        libc::EEXIST => Error::new(ErrorKind::AlreadyExists, format!("{shown} already exists")),
        _ => runtime_error(format!("{shown}: {}", e.message().to_lowercase())),
    }
}

fn not_regular(shown: &str) -> Error {
    Error::invalid_params(format!("{shown} is not a regular file"))
}

fn check_mode(shown: &str, mode: Option<u32>) -> Result<(), Error> {
    match mode {
        Some(m) if m > 0o7777 => Err(Error::invalid_params(format!("invalid mode {m:#o} for {shown}: at most 0o7777"))),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// System calls

/// `openat2(dir, path, flags | O_CLOEXEC, mode)` resolved beneath `dir`.
fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: libc::c_int, mode: u32) -> Sys<OwnedFd> {
    // SAFETY: open_how is plain integers; all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { u64::from(mode) } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let mut renamed = 0;
    loop {
        // SAFETY: path is NUL-terminated and `how` outlives the call, whose size is given.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        match Errno::last() {
            Errno(libc::EINTR) => {}
            // A rename or mount raced with a `..` lookup: the kernel asks to try again.
            Errno(libc::EAGAIN) if renamed < 16 => renamed += 1,
            e => return Err(e),
        }
    }
}

/// Plain `openat` of one name in `dir` (never a path: callers pass single components).
fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Sys<OwnedFd> {
    loop {
        // SAFETY: name is NUL-terminated.
        let r = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
        if r >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r) });
        }
        match Errno::last() {
            Errno(libc::EINTR) => {}
            e => return Err(e),
        }
    }
}

fn fstat(fd: BorrowedFd<'_>) -> Sys<libc::stat> {
    // SAFETY: all zeroes is a valid stat; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid, writable stat.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `lstat` of `name` in `dir`.
fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> Sys<libc::stat> {
    // SAFETY: all zeroes is a valid stat; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated, st is a valid, writable stat.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> Sys<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: name is NUL-terminated; buf is writable for its length.
        let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(Errno::last());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Sys<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Sys<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Sys<()> {
    // SAFETY: plain system call on a descriptor we hold.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// The names in a directory (opened for reading), without `.` and `..`, in no order.
fn read_names(dir: BorrowedFd<'_>) -> Sys<Vec<CString>> {
    struct Dir(*mut libc::DIR);
    impl Drop for Dir {
        fn drop(&mut self) {
            // SAFETY: a stream from fdopendir, closed once (this also closes its fd).
            unsafe { libc::closedir(self.0) };
        }
    }
    // A duplicate for the stream to own; it shares the directory's offset, so rewind.
    // SAFETY: plain system calls on a descriptor we hold.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: dup is ours.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    // SAFETY: as above.
    if unsafe { libc::lseek(dup.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: on success the stream owns the descriptor (released from `dup`).
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(Errno::last());
    }
    let stream = Dir(stream);
    std::mem::forget(dup);
    let mut names = Vec::new();
    loop {
        // SAFETY: errno is thread-local; readdir64 reports errors only through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a live stream, used by this thread only.
        let ent = unsafe { libc::readdir64(stream.0) };
        if ent.is_null() {
            match Errno::last() {
                Errno(0) => return Ok(names),
                e => return Err(e),
            }
        }
        // SAFETY: d_name is NUL-terminated and valid until the next readdir64.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Acting as the user

#[cfg(any(target_arch = "x86", target_arch = "arm"))]
mod nr {
    pub const SETFSUID: libc::c_long = libc::SYS_setfsuid32;
    pub const SETFSGID: libc::c_long = libc::SYS_setfsgid32;
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
}

#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
mod nr {
    pub const SETFSUID: libc::c_long = libc::SYS_setfsuid;
    pub const SETFSGID: libc::c_long = libc::SYS_setfsgid;
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;
}

/// Sets this thread's filesystem uid (`u32::MAX`: only asks); returns the one before.
fn setfsuid(uid: u32) -> u32 {
    // SAFETY: the raw system call changes only the calling thread's credentials.
    unsafe { libc::syscall(nr::SETFSUID, uid as libc::c_long) as u32 }
}

/// Sets this thread's filesystem gid (`u32::MAX`: only asks); returns the one before.
fn setfsgid(gid: u32) -> u32 {
    // SAFETY: as for setfsuid.
    unsafe { libc::syscall(nr::SETFSGID, gid as libc::c_long) as u32 }
}

/// This thread's supplementary groups.
fn groups() -> Sys<Vec<libc::gid_t>> {
    loop {
        // SAFETY: with 0, getgroups only counts.
        let n = cvt(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
        let mut groups = vec![0; n as usize];
        // SAFETY: groups is writable for n entries.
        match cvt(unsafe { libc::getgroups(n, groups.as_mut_ptr()) }) {
            Ok(m) => {
                groups.truncate(m as usize);
                return Ok(groups);
            }
            Err(Errno(libc::EINVAL)) => continue, // they changed in between
            Err(e) => return Err(e),
        }
    }
}

/// Sets this thread's supplementary groups (the raw call: this thread only).
fn set_groups(groups: &[libc::gid_t]) -> Sys<()> {
    // SAFETY: groups is readable for its length.
    let r = unsafe { libc::syscall(nr::SETGROUPS, groups.len(), groups.as_ptr()) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// The thread's credentials before a call acted as the user; put back on drop.
#[derive(Debug)]
struct ActAs {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<libc::gid_t>,
}

impl ActAs {
    fn enter(user: Option<(u32, u32)>) -> Result<Option<ActAs>, Error> {
        let Some((uid, gid)) = user else { return Ok(None) };
        // SAFETY: geteuid/getegid cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if euid != 0 {
            if (uid, gid) == (euid, egid) {
                return Ok(None);
            }
            return Err(runtime_error(format!(
                "berthd runs as uid {euid}, not as root: it cannot act as uid {uid} for project files"
            )));
        }
        let cannot = |what: &str, e: Errno| runtime_error(format!("cannot act as uid {uid} ({what}): {}", e.message()));
        let groups = groups().map_err(|e| cannot("reading groups", e))?;
        // From here on, dropping the guard restores whatever was changed.
        let guard = ActAs { fsuid: setfsuid(u32::MAX), fsgid: setfsgid(u32::MAX), groups };
        set_groups(&[]).map_err(|e| cannot("dropping supplementary groups", e))?;
        setfsgid(gid);
        if setfsgid(u32::MAX) != gid {
            return Err(cannot("setfsgid", Errno(libc::EPERM)));
        }
        setfsuid(uid);
        if setfsuid(u32::MAX) != uid {
            return Err(cannot("setfsuid", Errno(libc::EPERM)));
        }
        Ok(Some(guard))
    }
}

impl Drop for ActAs {
    fn drop(&mut self) {
        // uid first: going back to fsuid 0 gives back the file capabilities.
        setfsuid(self.fsuid);
        setfsgid(self.fsgid);
        let groups = set_groups(&self.groups);
        if setfsuid(u32::MAX) != self.fsuid || setfsgid(u32::MAX) != self.fsgid || groups.is_err() {
            tracing::error!(
                fsuid = self.fsuid,
                fsgid = self.fsgid,
                "could not restore this thread's credentials after a file call"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The workspace

struct Ws {
    root: OwnedFd,
}

impl Ws {
    fn open_root(workspace: &Path) -> Result<Ws, Error> {
        let host = workspace.display();
        let path = CString::new(workspace.as_os_str().as_bytes())
            .map_err(|_| Error::internal(format!("workspace path {host} contains NUL")))?;
        // The workspace path is berthd's own (a validated name under the state dir); a
        // symlink planted at it is refused, not followed.
        let root = loop {
            // SAFETY: path is NUL-terminated.
            let r = unsafe {
                libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            };
            if r >= 0 {
                // SAFETY: a new descriptor that nothing else owns.
                break unsafe { OwnedFd::from_raw_fd(r) };
            }
            match Errno::last() {
                Errno(libc::EINTR) => {}
                e => {
                    return Err(runtime_error(format!(
                        "the project's workspace {host} cannot be opened: {}",
                        e.message().to_lowercase()
                    )))
                }
            }
        };
        // Refuse at once, and clearly, where openat2 cannot confine anything.
        match openat2(root.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(_) => Ok(Ws { root }),
            Err(Errno(libc::ENOSYS)) => Err(runtime_error(
                "project files on the host need openat2(2) (Linux 5.6 or later) to stay confined to the \
                 workspace, and this kernel has none; refusing rather than resolving paths unsafely"
                    .into(),
            )),
            Err(Errno(libc::EPERM)) => Err(runtime_error(
                "project files on the host need openat2(2) to stay confined to the workspace, and it is not \
                 permitted here (a seccomp filter?); refusing rather than resolving paths unsafely"
                    .into(),
            )),
            Err(e) => Err(fail(WORKSPACE_IN_CONTAINER, e)),
        }
    }

    /// Opens `rel` (relative to the workspace; empty: the workspace) confined to it.
    fn open(&self, rel: &str, flags: libc::c_int, mode: u32) -> Result<Sys<OwnedFd>, Error> {
        Ok(openat2(self.root.as_fd(), &c_rel(rel)?, flags, mode))
    }

    /// Opens the directory `rel` as an `O_PATH` descriptor, confined.
    fn dir(&self, rel: &str) -> Result<Sys<OwnedFd>, Error> {
        self.open(rel, libc::O_PATH | libc::O_DIRECTORY, 0)
    }

    fn is_root(&self, fd: BorrowedFd<'_>) -> Sys<bool> {
        let (a, b) = (fstat(self.root.as_fd())?, fstat(fd)?);
        Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
    }
}

// ---------------------------------------------------------------------------------------
// Entries

fn kind(st: &libc::stat) -> EntryType {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => EntryType::File,
        libc::S_IFDIR => EntryType::Dir,
        libc::S_IFLNK => EntryType::Symlink,
        _ => EntryType::Other,
    }
}

// time_t is 32 bits wide on some targets.
#[allow(clippy::unnecessary_cast)]
fn entry(name: String, path: String, st: &libc::stat, target: Option<Vec<u8>>) -> FsEntry {
    FsEntry {
        name,
        path,
        kind: kind(st),
        size: st.st_size.max(0) as u64,
        mode: st.st_mode & 0o7777,
        mtime_ms: (st.st_mtime as i64).saturating_mul(1000).saturating_add(st.st_mtime_nsec as i64 / 1_000_000),
        target: target.map(|t| lossy(&t)),
    }
}

/// `lstat` of `name` in `dir`, with the target if it is a symlink.
fn lstat_entry(dir: BorrowedFd<'_>, name: &CStr) -> Sys<(libc::stat, Option<Vec<u8>>)> {
    let st = lstatat(dir, name)?;
    let target = match kind(&st) {
        EntryType::Symlink => Some(readlinkat(dir, name)?),
        _ => None,
    };
    Ok((st, target))
}

// ---------------------------------------------------------------------------------------
// The calls

fn check_regular(shown: &str, st: &libc::stat) -> Result<(), Error> {
    match kind(st) {
        EntryType::File => Ok(()),
        EntryType::Dir => Err(Error::invalid_params(format!("{shown} is a directory"))),
        _ => Err(not_regular(shown)),
    }
}

fn read(ws: &Ws, t: &Target<'_>, offset: u64, limit: u64) -> Result<FsReply, Error> {
    // O_NONBLOCK: a FIFO opens at once (and is then refused) instead of waiting for a writer.
    let fd = match ws.open(t.rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0)? {
        Ok(fd) => fd,
        Err(Errno(libc::ENXIO)) => return Err(not_regular(t.shown)),
        Err(e) => return Err(fail(t.shown, e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| fail(t.shown, e))?;
    check_regular(t.shown, &st)?;
    let size = st.st_size.max(0) as u64;
    let want = usize::try_from(limit.min(size.saturating_sub(offset))).unwrap_or(usize::MAX);
    let file = File::from(fd);
    let mut data = vec![0u8; want];
    let (mut n, mut at_end) = (0, false);
    while n < want {
        match file.read_at(&mut data[n..], offset + n as u64) {
            Ok(0) => {
                at_end = true;
                break;
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(t.shown, Errno::of(&e))),
        }
    }
    data.truncate(n);
    let eof = at_end || offset.saturating_add(n as u64) >= size;
    Ok(FsReply::Data { data, size, eof })
}

fn write(ws: &Ws, t: &Target<'_>, data: &[u8], at: WriteAt, mode: Option<u32>, mkdirs: bool) -> Result<FsReply, Error> {
    check_mode(t.shown, mode)?;
    if let WriteAt::Offset(n) = at {
        if n.checked_add(data.len() as u64).is_none_or(|end| end > i64::MAX as u64) {
            return Err(Error::invalid_params(format!("offset {n} is too large for {}", t.shown)));
        }
    }
    let flags =
        libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | if at == WriteAt::Append { libc::O_APPEND } else { 0 };
    let opened = |r: Sys<OwnedFd>| match r {
        Err(Errno(libc::ENXIO)) => Err(not_regular(t.shown)),
        r => Ok(r),
    };
    // The file is opened (and created) by openat2 from the workspace with the whole
    // path, not by name in a parent descriptor: the kernel then resolves the parent with
    // the same confinement, and a last component that is a symlink inside the workspace
    // (but outside its parent directory) is written through as `open` would, which
    // RESOLVE_BENEATH from the parent would refuse.
    let (fd, created) = match opened(ws.open(t.rel, flags, 0)?)? {
        Ok(fd) => (fd, false),
        Err(Errno(libc::ENOENT)) => {
            // Created 0600 and given its mode before any data goes in.
            let create = || -> Result<Sys<OwnedFd>, Error> { opened(ws.open(t.rel, flags | libc::O_CREAT, 0o600)?) };
            match create()? {
                Ok(fd) => (fd, true),
                Err(Errno(libc::ENOENT)) => {
                    missing_parent(ws, t, mkdirs, "mkdirs")?;
                    (create()?.map_err(|e| fail(t.shown, e))?, true)
                }
                Err(e) => return Err(fail(t.shown, e)),
            }
        }
        Err(e) => return Err(fail(t.shown, e)),
    };
    let file = File::from(fd);
    let st = fstat(file.as_fd()).map_err(|e| fail(t.shown, e))?;
    check_regular(t.shown, &st)?;
    let mode = mode.or(if created { Some(0o644) } else { None });
    if let Some(m) = mode {
        fchmod(file.as_fd(), m).map_err(|e| fail(t.shown, e))?;
    }
    let written = match at {
        WriteAt::Replace => file.set_len(0).and_then(|()| file.write_all_at(data, 0)),
        WriteAt::Append => (&file).write_all(data),
        WriteAt::Offset(n) => file.write_all_at(data, n),
    };
    written.map_err(|e| fail(t.shown, Errno::of(&e)))?;
    if let Some(m) = mode {
        // Writing clears set-id bits unless the writer may keep them: set them again.
        if m & 0o6000 != 0 {
            fchmod(file.as_fd(), m).map_err(|e| fail(t.shown, e))?;
        }
    }
    let size = fstat(file.as_fd()).map_err(|e| fail(t.shown, e))?.st_size.max(0) as u64;
    Ok(FsReply::Done { size })
}

/// After `t` could not be created for want of a directory: makes its parent when `make`,
/// or says what is missing. Returns when the parent is there.
fn missing_parent(ws: &Ws, t: &Target<'_>, make: bool, flag: &str) -> Result<(), Error> {
    let Last::Named { parent_rel, parent_shown, .. } = t.last() else {
        return Err(fail(t.shown, Errno(libc::ENOENT)));
    };
    match ws.dir(parent_rel)? {
        // The parent is there: the path is a symlink to something missing.
        Ok(_) => Err(fail(t.shown, Errno(libc::ENOENT))),
        Err(Errno(libc::ENOENT)) if make => mkdir_p(ws, parent_rel, t.shown).map(drop),
        Err(Errno(libc::ENOENT)) => Err(Error::invalid_params(format!(
            "the parent directory {parent_shown} of {} does not exist ({flag} creates it)",
            t.shown
        ))),
        Err(Errno(libc::ENOTDIR)) => Err(Error::invalid_params(format!(
            "the parent {parent_shown} of {} is not a directory (or a component of its path is not)",
            t.shown
        ))),
        Err(e) => Err(fail(t.shown, e)),
    }
}

/// Makes directory `name` in `dir` with exactly `mode`.
fn make_dir(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Sys<()> {
    mkdirat(dir, name, 0o700)?;
    // By descriptor, never following a symlink swapped in meanwhile.
    let made = openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
    fchmod(made.as_fd(), mode)
}

/// Makes `rel` and its missing parents (0755), confined; returns it (`O_PATH`). Errors
/// name the component they met (a way out of the workspace: the request's `shown`).
fn mkdir_p(ws: &Ws, rel: &str, shown: &str) -> Result<OwnedFd, Error> {
    let fail_at = |here: &str, e: Errno| fail(if e == Errno(libc::EXDEV) { shown } else { here }, e);
    let mut cur = ws.dir("")?.map_err(|e| fail_at(WORKSPACE_IN_CONTAINER, e))?;
    let mut prefix = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let here = format!("{WORKSPACE_IN_CONTAINER}/{prefix}");
        cur = match ws.dir(&prefix)? {
            Ok(fd) => fd,
            Err(Errno(libc::ENOENT)) => {
                match make_dir(cur.as_fd(), &c_string(part)?, 0o755) {
                    Ok(()) | Err(Errno(libc::EEXIST)) => {}
                    Err(e) => return Err(fail_at(&here, e)),
                }
                match ws.dir(&prefix)? {
                    Ok(fd) => fd,
                    Err(Errno(libc::ENOENT)) => {
                        return Err(Error::invalid_params(format!("{here} exists but does not lead to a directory")))
                    }
                    Err(e) => return Err(fail_at(&here, e)),
                }
            }
            Err(Errno(libc::ENOTDIR)) => return Err(Error::invalid_params(format!("{here} is not a directory"))),
            Err(e) => return Err(fail_at(&here, e)),
        };
    }
    Ok(cur)
}

fn list(ws: &Ws, t: &Target<'_>) -> Result<FsReply, Error> {
    let dir = match ws.open(t.rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)? {
        Ok(fd) => fd,
        Err(Errno(libc::ENOTDIR)) => return Err(Error::invalid_params(format!("{} is not a directory", t.shown))),
        Err(e) => return Err(fail(t.shown, e)),
    };
    let mut names = read_names(dir.as_fd()).map_err(|e| fail(t.shown, e))?;
    names.sort();
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let shown_name = lossy(name.to_bytes());
        let path = format!("{}/{shown_name}", t.shown);
        match lstat_entry(dir.as_fd(), &name) {
            Ok((st, target)) => entries.push(entry(shown_name, path, &st, target)),
            // Removed since the directory was read.
            Err(Errno(libc::ENOENT)) => {}
            Err(e) => return Err(fail(&path, e)),
        }
    }
    Ok(FsReply::Entries(entries))
}

fn stat(ws: &Ws, t: &Target<'_>) -> Result<FsReply, Error> {
    let (st, target) = match t.last() {
        Last::Whole => {
            let fd = ws.open(t.rel, libc::O_PATH, 0)?.map_err(|e| fail(t.shown, e))?;
            (fstat(fd.as_fd()).map_err(|e| fail(t.shown, e))?, None)
        }
        Last::Named { parent_rel, name, .. } => {
            let parent = ws.dir(parent_rel)?.map_err(|e| fail(t.shown, e))?;
            lstat_entry(parent.as_fd(), &c_string(name)?).map_err(|e| fail(t.shown, e))?
        }
    };
    Ok(FsReply::Entries(vec![entry(t.name().to_string(), t.shown.to_string(), &st, target)]))
}

fn remove(ws: &Ws, t: &Target<'_>, recursive: bool) -> Result<FsReply, Error> {
    let Last::Named { parent_rel, name, .. } = t.last() else {
        let fd = ws.open(t.rel, libc::O_PATH, 0)?.map_err(|e| fail(t.shown, e))?;
        if ws.is_root(fd.as_fd()).map_err(|e| fail(t.shown, e))? {
            return Err(Error::invalid_params(format!("{} is the workspace root, which can't be removed", t.shown)));
        }
        return Err(Error::invalid_params(format!(
            "cannot remove {}: name the directory itself, not a path ending in . or ..",
            t.shown
        )));
    };
    let parent = ws.dir(parent_rel)?.map_err(|e| fail(t.shown, e))?;
    let name = c_string(name)?;
    let st = lstatat(parent.as_fd(), &name).map_err(|e| fail(t.shown, e))?;
    if kind(&st) != EntryType::Dir {
        // A file, or a symlink itself (never what it points to).
        unlinkat(parent.as_fd(), &name, 0).map_err(|e| fail(t.shown, e))?;
        return Ok(FsReply::Done { size: 0 });
    }
    match unlinkat(parent.as_fd(), &name, libc::AT_REMOVEDIR) {
        Ok(()) => {}
        Err(Errno(libc::ENOTEMPTY | libc::EEXIST)) if recursive => remove_tree(parent.as_fd(), &name, t.shown)?,
        Err(Errno(libc::ENOTEMPTY | libc::EEXIST)) => {
            return Err(Error::invalid_params(format!(
                "{} is not empty (a recursive remove removes it with everything in it)",
                t.shown
            )))
        }
        Err(e) => return Err(fail(t.shown, e)),
    }
    Ok(FsReply::Done { size: 0 })
}

/// One directory being emptied by `remove_tree`.
struct Level {
    dir: OwnedFd,
    /// Its name in the directory below it on the stack (or the removal's parent).
    name: CString,
    shown: String,
    names: Vec<CString>,
    rescanned: bool,
}

impl Level {
    fn open(parent: BorrowedFd<'_>, name: CString, shown: String) -> Result<Level, Error> {
        // O_NOFOLLOW: a directory swapped for a symlink is not entered.
        let dir = openat(parent, &name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .map_err(|e| fail(&shown, e))?;
        let names = read_names(dir.as_fd()).map_err(|e| fail(&shown, e))?;
        Ok(Level { dir, name, shown, names, rescanned: false })
    }
}

/// Removes directory `name` in `parent` and everything in it, depth first, by
/// descriptors: symlinks are unlinked, never followed.
fn remove_tree(parent: BorrowedFd<'_>, name: &CStr, shown: &str) -> Result<(), Error> {
    let mut stack = vec![Level::open(parent, name.to_owned(), shown.to_string())?];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.names.pop() {
            let child_shown = format!("{}/{}", top.shown, lossy(child.to_bytes()));
            // unlink refuses a directory (EISDIR) and removes anything else, symlinks included.
            match unlinkat(top.dir.as_fd(), &child, 0) {
                Ok(()) | Err(Errno(libc::ENOENT)) => {}
                Err(Errno(libc::EISDIR)) => {
                    let level = Level::open(top.dir.as_fd(), child, child_shown)?;
                    stack.push(level);
                }
                Err(e) => return Err(fail(&child_shown, e)),
            }
            continue;
        }
        let Some(mut done) = stack.pop() else { break };
        let below = stack.last().map_or(parent, |l| l.dir.as_fd());
        match unlinkat(below, &done.name, libc::AT_REMOVEDIR) {
            Ok(()) | Err(Errno(libc::ENOENT)) => {}
            // Something was added meanwhile: one more pass.
            Err(Errno(libc::ENOTEMPTY | libc::EEXIST)) if !done.rescanned => {
                done.names = read_names(done.dir.as_fd()).map_err(|e| fail(&done.shown, e))?;
                done.rescanned = true;
                stack.push(done);
            }
            Err(e) => return Err(fail(&done.shown, e)),
        }
    }
    Ok(())
}

fn mkdir(ws: &Ws, t: &Target<'_>, parents: bool, mode: Option<u32>) -> Result<FsReply, Error> {
    check_mode(t.shown, mode)?;
    let Last::Named { parent_rel, name, .. } = t.last() else {
        // The workspace, or a path ending in . or ..: a directory if it resolves at all.
        ws.dir(t.rel)?.map_err(|e| fail(t.shown, e))?;
        return match parents {
            true => Ok(FsReply::Done { size: 0 }),
            false => Err(fail(t.shown, Errno(libc::EEXIST))),
        };
    };
    let parent = match parents {
        true => mkdir_p(ws, parent_rel, t.shown)?,
        false => match ws.dir(parent_rel)? {
            Ok(fd) => fd,
            Err(Errno(libc::ENOENT | libc::ENOTDIR)) => {
                missing_parent(ws, t, false, "parents")?;
                return Err(fail(t.shown, Errno(libc::ENOENT)));
            }
            Err(e) => return Err(fail(t.shown, e)),
        },
    };
    match make_dir(parent.as_fd(), &c_string(name)?, mode.unwrap_or(0o755)) {
        Ok(()) => Ok(FsReply::Done { size: 0 }),
        // An existing directory, or a symlink to one inside the workspace.
        Err(Errno(libc::EEXIST)) if parents && ws.dir(t.rel)?.is_ok() => Ok(FsReply::Done { size: 0 }),
        Err(e) => Err(fail(t.shown, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;

    /// A temp dir holding the workspace `ws` and, beside it, `outside` (with files a
    /// call must never reach). Removed on drop, also when a test fails.
    struct Fixture {
        dir: tempfile::TempDir,
        ws: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let ws = dir.path().join("ws");
            fs::create_dir(&ws).unwrap();
            fs::create_dir_all(dir.path().join("outside/sub")).unwrap();
            fs::write(dir.path().join("outside/keep.txt"), "keep").unwrap();
            fs::write(dir.path().join("outside/sub/keep2.txt"), "keep2").unwrap();
            Fixture { dir, ws }
        }

        fn outside(&self) -> PathBuf {
            self.dir.path().join("outside")
        }

        fn outside_intact(&self) {
            assert_eq!(fs::read_to_string(self.outside().join("keep.txt")).unwrap(), "keep");
            assert_eq!(fs::read_to_string(self.outside().join("sub/keep2.txt")).unwrap(), "keep2");
            let mut names: Vec<_> =
                fs::read_dir(self.outside()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            assert_eq!(names, ["keep.txt", "sub"]);
            assert!(!self.dir.path().join("x").exists());
        }

        fn host(&self, rel: &str) -> PathBuf {
            self.ws.join(rel)
        }

        fn run(&self, c: FsCall) -> Result<FsReply, Error> {
            self.run_as(None, c)
        }

        fn run_as(&self, user: Option<(u32, u32)>, c: FsCall) -> Result<FsReply, Error> {
            call(&self.ws, user, c)
        }

        fn read(&self, path: &str, offset: u64, limit: u64) -> Result<FsReply, Error> {
            self.run(FsCall::Read { path: p(path), offset, limit })
        }

        fn read_all(&self, path: &str) -> Vec<u8> {
            match self.read(path, 0, u64::MAX).unwrap() {
                FsReply::Data { data, eof: true, .. } => data,
                other => panic!("{other:?}"),
            }
        }

        fn write(&self, path: &str, data: &[u8], at: WriteAt) -> Result<FsReply, Error> {
            self.run(FsCall::Write { path: p(path), data: data.to_vec(), at, mode: None, mkdirs: false })
        }

        fn list(&self, path: &str) -> Result<FsReply, Error> {
            self.run(FsCall::List { path: p(path) })
        }

        fn names(&self, path: &str) -> Vec<String> {
            entries(self.list(path).unwrap()).into_iter().map(|e| e.name).collect()
        }

        fn stat(&self, path: &str) -> Result<FsEntry, Error> {
            self.run(FsCall::Stat { path: p(path) }).map(|r| entries(r).remove(0))
        }

        fn remove(&self, path: &str, recursive: bool) -> Result<FsReply, Error> {
            self.run(FsCall::Remove { path: p(path), recursive })
        }

        fn mkdir(&self, path: &str, parents: bool, mode: Option<u32>) -> Result<FsReply, Error> {
            self.run(FsCall::Mkdir { path: p(path), parents, mode })
        }
    }

    fn p(s: &str) -> FsPath {
        FsPath::parse(s).unwrap()
    }

    fn entries(r: FsReply) -> Vec<FsEntry> {
        match r {
            FsReply::Entries(e) => e,
            other => panic!("{other:?}"),
        }
    }

    fn done(r: Result<FsReply, Error>) -> u64 {
        match r {
            Ok(FsReply::Done { size }) => size,
            other => panic!("{other:?}"),
        }
    }

    #[track_caller]
    fn fails(r: Result<FsReply, Error>, kind: ErrorKind, words: &[&str]) {
        let e = match r {
            Err(e) => e,
            Ok(r) => panic!("expected {kind:?}, got {r:?}"),
        };
        assert_eq!(e.kind, kind, "{e}");
        for w in words {
            assert!(e.message.contains(w), "{w:?} not in {:?}", e.message);
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn a_large_binary_file_makes_the_round_trip_in_chunks() {
        let f = Fixture::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..5 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let path = "/workspace/deep/er/blob.bin";
        // Chunks written last to first, at their offsets; the first call makes the parents.
        let chunk = 256 << 10;
        let starts: Vec<usize> = (0..data.len()).step_by(chunk).collect();
        for (i, &start) in starts.iter().rev().enumerate() {
            let end = (start + chunk).min(data.len());
            let size = done(f.run(FsCall::Write {
                path: p(path),
                data: data[start..end].to_vec(),
                at: WriteAt::Offset(start as u64),
                mode: None,
                mkdirs: i == 0,
            }));
            assert_eq!(size, data.len() as u64);
        }
        assert_eq!(fs::read(f.host("deep/er/blob.bin")).unwrap(), data);
        // Read back in chunks of another size.
        let (mut back, mut offset) = (Vec::new(), 0u64);
        loop {
            match f.read("deep/er/blob.bin", offset, 300_000).unwrap() {
                FsReply::Data { data: got, size, eof } => {
                    assert_eq!(size, data.len() as u64);
                    assert!(got.len() <= 300_000);
                    offset += got.len() as u64;
                    back.extend_from_slice(&got);
                    assert_eq!(eof, offset == size);
                    if eof {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(back == data, "the data read back differs");
        // Past the end: nothing, at the end.
        assert_eq!(
            f.read(path, data.len() as u64 + 10, 100).unwrap(),
            FsReply::Data { data: vec![], size: data.len() as u64, eof: true }
        );
        // Offset writes leave the rest; replace and append.
        assert_eq!(done(f.write(path, b"\0\xff", WriteAt::Offset(1))), data.len() as u64);
        assert_eq!(&fs::read(f.host("deep/er/blob.bin")).unwrap()[..4], &[data[0], 0, 0xff, data[3]]);
        assert_eq!(done(f.write(path, b"abc", WriteAt::Replace)), 3);
        assert_eq!(done(f.write(path, b"def", WriteAt::Append)), 6);
        assert_eq!(f.read_all(path), b"abcdef");
        assert_eq!(done(f.write(path, b"", WriteAt::Replace)), 0);
        assert_eq!(f.read(path, 0, 10).unwrap(), FsReply::Data { data: vec![], size: 0, eof: true });
        // A write past the end leaves a hole.
        assert_eq!(done(f.write("sparse", b"z", WriteAt::Offset(4))), 5);
        assert_eq!(f.read_all("sparse"), b"\0\0\0\0z");
    }

    #[test]
    fn each_error_has_its_kind_and_names_the_path() {
        let f = Fixture::new();
        fs::create_dir_all(f.host("dir/sub")).unwrap();
        fs::write(f.host("file.txt"), "x").unwrap();
        mkfifo(&f.host("fifo"));
        symlink("loop2", f.host("loop1")).unwrap();
        symlink("loop1", f.host("loop2")).unwrap();

        fails(
            f.read("/etc/passwd", 0, 10),
            ErrorKind::Forbidden,
            &["path /etc/passwd is outside the workspace: project files on the host are confined to /workspace"],
        );
        fails(f.read("/workspacefoo/x", 0, 10), ErrorKind::Forbidden, &["/workspacefoo/x is outside"]);
        fails(f.mkdir("/", true, None), ErrorKind::Forbidden, &["path / is outside"]);

        fails(f.read("nope.txt", 0, 10), ErrorKind::NotFound, &["/workspace/nope.txt does not exist"]);
        fails(f.read("dir", 0, 10), ErrorKind::InvalidParams, &["/workspace/dir is a directory"]);
        fails(f.read("/workspace", 0, 10), ErrorKind::InvalidParams, &["/workspace is a directory"]);
        let start = Instant::now();
        fails(f.read("fifo", 0, 10), ErrorKind::InvalidParams, &["/workspace/fifo is not a regular file"]);
        fails(f.write("fifo", b"x", WriteAt::Append), ErrorKind::InvalidParams, &["/workspace/fifo is not a regular"]);
        assert!(start.elapsed() < Duration::from_secs(5), "a FIFO blocked");
        fails(f.read("file.txt/x", 0, 10), ErrorKind::InvalidParams, &["/workspace/file.txt/x", "not a directory"]);
        fails(f.read("loop1", 0, 10), ErrorKind::InvalidParams, &["/workspace/loop1", "symbolic links"]);

        fails(f.write("dir", b"x", WriteAt::Replace), ErrorKind::InvalidParams, &["/workspace/dir is a directory"]);
        fails(f.write("dir/", b"x", WriteAt::Replace), ErrorKind::InvalidParams, &["/workspace/dir is a directory"]);
        fails(
            f.write("no/such/f.txt", b"x", WriteAt::Replace),
            ErrorKind::InvalidParams,
            &["parent directory /workspace/no/such of /workspace/no/such/f.txt does not exist"],
        );
        assert!(!f.host("no").exists());
        fails(f.write("file.txt/x", b"x", WriteAt::Replace), ErrorKind::InvalidParams, &["/workspace/file.txt/x"]);
        fails(
            f.run(FsCall::Write {
                path: p("m.txt"),
                data: vec![],
                at: WriteAt::Replace,
                mode: Some(0o10000),
                mkdirs: false,
            }),
            ErrorKind::InvalidParams,
            &["mode 0o10000", "/workspace/m.txt"],
        );
        assert!(!f.host("m.txt").exists());
        fails(f.write("big", b"x", WriteAt::Offset(u64::MAX)), ErrorKind::InvalidParams, &["/workspace/big"]);

        fails(f.list("file.txt"), ErrorKind::InvalidParams, &["/workspace/file.txt is not a directory"]);
        fails(f.list("nope"), ErrorKind::NotFound, &["/workspace/nope does not exist"]);
        fails(f.stat("nope").map(|e| FsReply::Entries(vec![e])), ErrorKind::NotFound, &["/workspace/nope does"]);
        fails(f.stat("nope/x").map(|e| FsReply::Entries(vec![e])), ErrorKind::NotFound, &["/workspace/nope/x does"]);

        fails(f.remove("nope", false), ErrorKind::NotFound, &["/workspace/nope does not exist"]);
        fails(f.remove("dir", false), ErrorKind::InvalidParams, &["/workspace/dir is not empty"]);
        assert!(f.host("dir/sub").is_dir());
        for root in ["/workspace", "/workspace/", "/workspace/.", "/workspace/dir/.."] {
            fails(f.remove(root, true), ErrorKind::InvalidParams, &[root.trim_end_matches('/'), "workspace root"]);
        }
        fails(f.remove("dir/sub/..", true), ErrorKind::InvalidParams, &["/workspace/dir/sub/..", "ending in . or .."]);
        assert!(f.ws.is_dir() && f.host("dir/sub").is_dir());

        fails(f.mkdir("dir", false, None), ErrorKind::AlreadyExists, &["/workspace/dir already exists"]);
        fails(f.mkdir("/workspace", false, None), ErrorKind::AlreadyExists, &["/workspace already exists"]);
        fails(f.mkdir("file.txt", false, None), ErrorKind::AlreadyExists, &["/workspace/file.txt already exists"]);
        fails(f.mkdir("file.txt", true, None), ErrorKind::AlreadyExists, &["/workspace/file.txt already exists"]);
        fails(
            f.mkdir("no/such", false, None),
            ErrorKind::InvalidParams,
            &["parent directory /workspace/no of /workspace/no/such does not exist"],
        );
        fails(
            f.mkdir("file.txt/x", false, None),
            ErrorKind::InvalidParams,
            &["/workspace/file.txt", "not a directory"],
        );
        fails(f.mkdir("file.txt/x", true, None), ErrorKind::InvalidParams, &["/workspace/file.txt is not a directory"]);
        fails(f.mkdir("d", false, Some(0o20000)), ErrorKind::InvalidParams, &["mode 0o20000"]);
        done(f.mkdir("dir", true, None));
        done(f.mkdir("/workspace", true, None));

        // The workspace itself missing: the host's trouble, not the request's.
        fs::remove_dir_all(&f.ws).unwrap();
        fails(f.stat("/workspace").map(|e| FsReply::Entries(vec![e])), ErrorKind::RuntimeError, &["workspace"]);
    }

    #[test]
    fn a_symlink_out_of_the_workspace_is_not_followed() {
        let f = Fixture::new();
        symlink("/etc", f.host("etc")).unwrap();
        symlink("../outside", f.host("out")).unwrap();
        symlink(f.outside().join("keep.txt"), f.host("keep")).unwrap();
        fs::create_dir(f.host("d")).unwrap();
        symlink("../../outside/sub", f.host("d/up")).unwrap();

        fails(f.read("etc/passwd", 0, 10), ErrorKind::Forbidden, &["/workspace/etc/passwd", "outside the workspace"]);
        fails(f.read("/workspace/etc/hostname", 0, 10), ErrorKind::Forbidden, &["/workspace/etc/hostname"]);
        fails(f.write("etc/berth-local-fs-test", b"x", WriteAt::Replace), ErrorKind::Forbidden, &["/workspace/etc/"]);
        assert!(!Path::new("/etc/berth-local-fs-test").exists());
        fails(f.list("etc"), ErrorKind::Forbidden, &["/workspace/etc"]);
        fails(f.list("etc/"), ErrorKind::Forbidden, &["/workspace/etc"]);
        let st = f.stat("etc").unwrap();
        assert_eq!((st.kind, st.target.as_deref(), st.name.as_str()), (EntryType::Symlink, Some("/etc"), "etc"));
        assert_eq!(st.path, "/workspace/etc");
        fails(
            f.stat("etc/passwd").map(|e| FsReply::Entries(vec![e])),
            ErrorKind::Forbidden,
            &["/workspace/etc/passwd"],
        );

        for path in ["out/keep.txt", "keep", "d/up/keep2.txt"] {
            fails(f.read(path, 0, 10), ErrorKind::Forbidden, &[path]);
            fails(f.write(path, b"gone", WriteAt::Replace), ErrorKind::Forbidden, &[path]);
            fails(f.write(path, b"more", WriteAt::Append), ErrorKind::Forbidden, &[path]);
        }
        fails(f.write("out/new.txt", b"x", WriteAt::Replace), ErrorKind::Forbidden, &["/workspace/out/new.txt"]);
        fails(
            f.run(FsCall::Write {
                path: p("out/a/b/new.txt"),
                data: vec![],
                at: WriteAt::Replace,
                mode: None,
                mkdirs: true,
            }),
            ErrorKind::Forbidden,
            &["/workspace/out"],
        );
        fails(f.mkdir("out/newdir", false, None), ErrorKind::Forbidden, &["/workspace/out/newdir"]);
        fails(f.mkdir("out/newdir/x", true, None), ErrorKind::Forbidden, &["/workspace/out"]);
        fails(f.list("d/up"), ErrorKind::Forbidden, &["/workspace/d/up"]);
        fails(f.remove("out/keep.txt", false), ErrorKind::Forbidden, &["/workspace/out/keep.txt"]);
        fails(f.remove("d/up/keep2.txt", true), ErrorKind::Forbidden, &["/workspace/d/up/keep2.txt"]);
        f.outside_intact();

        // An absolute symlink is refused even when it leads into the workspace.
        symlink(f.host("d"), f.host("abs")).unwrap();
        fails(f.list("abs"), ErrorKind::Forbidden, &["/workspace/abs"]);

        // Removing the links removes only the links.
        for link in ["etc", "out", "keep", "d/up"] {
            done(f.remove(link, false));
            assert!(fs::symlink_metadata(f.host(link)).is_err(), "{link} is still there");
        }
        done(f.remove("abs/", true));
        assert!(f.host("d").is_dir());
        assert!(Path::new("/etc/passwd").exists());
        f.outside_intact();
    }

    #[test]
    fn dot_dot_cannot_leave_the_workspace() {
        let f = Fixture::new();
        fs::create_dir(f.host("a")).unwrap();
        for path in ["/workspace/../x", "a/../../x", "/workspace/a/../../outside/keep.txt", "/workspace/.."] {
            fails(f.read(path, 0, 10), ErrorKind::Forbidden, &[&p(path).to_string(), "outside the workspace"]);
            fails(f.write(path, b"x", WriteAt::Replace), ErrorKind::Forbidden, &[&p(path).to_string()]);
            fails(f.list(path), ErrorKind::Forbidden, &[&p(path).to_string()]);
            fails(f.stat(path).map(|e| FsReply::Entries(vec![e])), ErrorKind::Forbidden, &[&p(path).to_string()]);
            fails(f.remove(path, true), ErrorKind::Forbidden, &[&p(path).to_string()]);
            fails(f.mkdir(path, true, None), ErrorKind::Forbidden, &[&p(path).to_string()]);
        }
        fails(
            f.run(FsCall::Write { path: p("../y/z"), data: vec![], at: WriteAt::Replace, mode: None, mkdirs: true }),
            ErrorKind::Forbidden,
            &["/workspace/../y/z"],
        );
        assert!(!f.dir.path().join("y").exists());
        fails(f.mkdir("/workspace/../../../y", true, None), ErrorKind::Forbidden, &["/workspace/../../../y"]);
        assert!(!f.dir.path().join("y").exists());
        f.outside_intact();
        // `..` that stays inside is fine.
        done(f.write("a/../b.txt", b"b", WriteAt::Replace));
        assert_eq!(fs::read(f.host("b.txt")).unwrap(), b"b");
        assert_eq!(f.read_all("/workspace/a/./../b.txt"), b"b");
        assert_eq!(f.stat("a/..").unwrap().kind, EntryType::Dir);
    }

    #[test]
    fn symlinks_inside_the_workspace_work() {
        let f = Fixture::new();
        fs::create_dir_all(f.host("real/dir")).unwrap();
        fs::write(f.host("real/dir/file.txt"), "hello").unwrap();
        fs::create_dir(f.host("other")).unwrap();
        symlink("real", f.host("link")).unwrap();
        symlink("../real/dir", f.host("other/up")).unwrap();
        symlink("real/dir/file.txt", f.host("flink")).unwrap();
        symlink("real/created.txt", f.host("dangling")).unwrap();

        assert_eq!(f.read_all("link/dir/file.txt"), b"hello");
        assert_eq!(f.read_all("flink"), b"hello");
        done(f.write("other/up/new.txt", b"new", WriteAt::Replace));
        assert_eq!(fs::read(f.host("real/dir/new.txt")).unwrap(), b"new");
        done(f.write("flink", b"bye", WriteAt::Replace));
        assert_eq!(fs::read(f.host("real/dir/file.txt")).unwrap(), b"bye");
        assert!(fs::symlink_metadata(f.host("flink")).unwrap().file_type().is_symlink());
        // Writing through a dangling link creates its target, as open(2) does.
        done(f.write("dangling", b"made", WriteAt::Replace));
        assert_eq!(fs::read(f.host("real/created.txt")).unwrap(), b"made");

        let listed = entries(f.list("other/up").unwrap());
        assert_eq!(listed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["file.txt", "new.txt"]);
        assert_eq!(listed[1].path, "/workspace/other/up/new.txt");
        assert_eq!(f.names("link"), ["created.txt", "dir"]);
        let st = f.stat("link").unwrap();
        assert_eq!((st.kind, st.target.as_deref()), (EntryType::Symlink, Some("real")));
        assert_eq!(f.stat("link/dir").unwrap().kind, EntryType::Dir);

        done(f.mkdir("link/dir2", false, None));
        assert!(f.host("real/dir2").is_dir());
        done(f.mkdir("link", true, None));
        fails(f.mkdir("link", false, None), ErrorKind::AlreadyExists, &["/workspace/link"]);
        done(f.mkdir("other/up/x/y", true, None));
        assert!(f.host("real/dir/x/y").is_dir());
        done(f.remove("link/dir2", false));
        assert!(!f.host("real/dir2").exists());
    }

    #[test]
    fn a_recursive_remove_does_not_follow_symlinks_out() {
        let f = Fixture::new();
        fs::create_dir_all(f.host("tree/a/b")).unwrap();
        fs::write(f.host("tree/a/b/c.txt"), "c").unwrap();
        fs::write(f.host("tree/top.txt"), "t").unwrap();
        symlink(f.outside(), f.host("tree/a/abs")).unwrap();
        symlink("../../outside", f.host("tree/rel")).unwrap();
        symlink(f.outside().join("keep.txt"), f.host("tree/a/b/file")).unwrap();
        mkfifo(&f.host("tree/a/fifo"));
        let mut deep = f.host("tree/deep");
        for _ in 0..100 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("end.txt"), "e").unwrap();
        fs::write(f.host("keep.txt"), "mine").unwrap();

        fails(f.remove("tree", false), ErrorKind::InvalidParams, &["/workspace/tree is not empty"]);
        assert_eq!(done(f.remove("/workspace/tree/", true)), 0);
        assert!(fs::symlink_metadata(f.host("tree")).is_err());
        assert_eq!(fs::read(f.host("keep.txt")).unwrap(), b"mine");
        f.outside_intact();
        // A symlink to a directory, removed recursively, is only unlinked.
        symlink(f.outside(), f.host("alink")).unwrap();
        done(f.remove("alink", true));
        f.outside_intact();
    }

    #[test]
    fn modes_are_set_exactly() {
        let f = Fixture::new();
        let write = |path: &str, mode: Option<u32>, mkdirs: bool| {
            f.run(FsCall::Write { path: p(path), data: b"x".to_vec(), at: WriteAt::Replace, mode, mkdirs })
        };
        done(write("new.txt", None, false));
        assert_eq!(mode_of(&f.host("new.txt")), 0o644);
        done(write("secret.txt", Some(0o600), false));
        assert_eq!(mode_of(&f.host("secret.txt")), 0o600);
        done(write("new.txt", Some(0o640), false));
        assert_eq!(mode_of(&f.host("new.txt")), 0o640);
        done(write("new.txt", None, false));
        assert_eq!(mode_of(&f.host("new.txt")), 0o640, "a mode is kept unless one is given");
        done(write("tool", Some(0o4755), false));
        assert_eq!(mode_of(&f.host("tool")), 0o4755);
        done(write("odd", Some(0o000), false));
        assert_eq!(mode_of(&f.host("odd")), 0);
        done(write("made/by/write.txt", Some(0o600), true));
        assert_eq!(mode_of(&f.host("made")), 0o755);
        assert_eq!(mode_of(&f.host("made/by")), 0o755);
        assert_eq!(mode_of(&f.host("made/by/write.txt")), 0o600);

        done(f.mkdir("d1", false, None));
        assert_eq!(mode_of(&f.host("d1")), 0o755);
        done(f.mkdir("d2", false, Some(0o700)));
        assert_eq!(mode_of(&f.host("d2")), 0o700);
        done(f.mkdir("d3/e/f", true, Some(0o1777)));
        assert_eq!(mode_of(&f.host("d3")), 0o755);
        assert_eq!(mode_of(&f.host("d3/e")), 0o755);
        assert_eq!(mode_of(&f.host("d3/e/f")), 0o1777);
        done(f.mkdir("d2", true, Some(0o755)));
        assert_eq!(mode_of(&f.host("d2")), 0o700, "mkdir -p leaves an existing directory as it is");

        let st = f.stat("tool").unwrap();
        assert_eq!((st.kind, st.mode, st.size), (EntryType::File, 0o4755, 1));
    }

    #[test]
    fn list_and_stat_describe_entries() {
        let f = Fixture::new();
        fs::create_dir(f.host("b-dir")).unwrap();
        fs::write(f.host("a.txt"), "12345").unwrap();
        fs::write(f.host("C"), "").unwrap();
        symlink("a.txt", f.host("link")).unwrap();
        mkfifo(&f.host("pipe"));
        fs::write(f.ws.join(OsStr::from_bytes(b"caf\xe9")), "").unwrap();

        let listed = entries(f.list("/workspace/").unwrap());
        let names: Vec<_> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["C", "a.txt", "b-dir", "caf\u{fffd}", "link", "pipe"]);
        let by = |n: &str| listed.iter().find(|e| e.name == n).unwrap().clone();
        let a = by("a.txt");
        assert_eq!(
            (a.kind, a.size, a.path.as_str(), a.target.as_deref()),
            (EntryType::File, 5, "/workspace/a.txt", None)
        );
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!((now_ms - a.mtime_ms).abs() < 60_000, "mtime {} vs now {now_ms}", a.mtime_ms);
        assert_eq!(by("b-dir").kind, EntryType::Dir);
        assert_eq!(by("pipe").kind, EntryType::Other);
        assert_eq!(by("caf\u{fffd}").path, "/workspace/caf\u{fffd}");
        let link = by("link");
        assert_eq!((link.kind, link.target.as_deref()), (EntryType::Symlink, Some("a.txt")));
        assert_eq!(f.names("b-dir"), Vec::<String>::new());

        assert_eq!(f.stat("link").unwrap(), link);
        assert_eq!(f.stat("/workspace/a.txt").unwrap(), a);
        let root = f.stat("/workspace").unwrap();
        assert_eq!((root.name.as_str(), root.path.as_str(), root.kind), ("workspace", "/workspace", EntryType::Dir));
        assert_eq!(f.stat("/workspace/").unwrap().path, "/workspace");
    }

    #[test]
    fn remove_takes_files_links_and_empty_directories() {
        let f = Fixture::new();
        fs::write(f.host("f.txt"), "x").unwrap();
        fs::create_dir(f.host("empty")).unwrap();
        fs::create_dir(f.host("target")).unwrap();
        fs::write(f.host("target/in.txt"), "in").unwrap();
        symlink("target", f.host("dlink")).unwrap();
        symlink("missing", f.host("dangling")).unwrap();
        done(f.remove("f.txt", false));
        done(f.remove("empty", false));
        done(f.remove("dlink", false));
        done(f.remove("dangling", false));
        assert_eq!(fs::read(f.host("target/in.txt")).unwrap(), b"in");
        assert_eq!(f.names("/workspace"), ["target"]);
    }

    /// The thread's filesystem ids and groups, as `ActAs` must leave them.
    fn creds() -> (u32, u32, Vec<libc::gid_t>) {
        (setfsuid(u32::MAX), setfsgid(u32::MAX), groups().unwrap())
    }

    #[test]
    fn acting_as_a_user() {
        // SAFETY: geteuid/getegid cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if euid != 0 {
            eprintln!("note: not root, so acting_as_a_user only checks that another user is refused");
            let f = Fixture::new();
            let stat = |user| f.run_as(user, FsCall::Stat { path: p("/workspace") });
            assert!(stat(Some((euid, egid))).is_ok());
            fails(stat(Some((euid + 1, egid))), ErrorKind::RuntimeError, &["not as root", "cannot act as uid"]);
            return;
        }
        let f = Fixture::new();
        let nobody = Some((65534, 65534));
        fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::chown(&f.ws, Some(65534), Some(65534)).unwrap();
        fs::write(f.host("secret"), "root only").unwrap();
        fs::set_permissions(f.host("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(f.host("group0"), "root's group").unwrap();
        fs::set_permissions(f.host("group0"), fs::Permissions::from_mode(0o060)).unwrap();
        fs::write(f.host("public"), "all").unwrap();
        fs::set_permissions(f.host("public"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(f.host("rootdir")).unwrap();

        // This test thread's own groups include root's: they must not count for the user.
        let before = creds();
        set_groups(&[0, 4]).unwrap();
        let ours = creds();
        assert_eq!((ours.0, ours.1, ours.2.as_slice()), (0, 0, &[0, 4][..]));

        let run = |c: FsCall| {
            let r = f.run_as(nobody, c);
            assert_eq!(creds(), ours, "credentials not restored");
            r
        };
        let w = |path: &str, mkdirs: bool, mode: Option<u32>| FsCall::Write {
            path: p(path),
            data: b"data".to_vec(),
            at: WriteAt::Replace,
            mode,
            mkdirs,
        };
        done(run(w("made/by/nobody.txt", true, None)));
        done(run(FsCall::Mkdir { path: p("dir"), parents: false, mode: None }));
        for made in ["made", "made/by", "made/by/nobody.txt", "dir"] {
            let m = fs::metadata(f.host(made)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{made}");
        }
        // Set-id bits survive the user's own write.
        done(run(w("tool", false, Some(0o2755))));
        assert_eq!(mode_of(&f.host("tool")), 0o2755);

        let read = |path: &str| FsCall::Read { path: p(path), offset: 0, limit: 100 };
        fails(run(read("secret")), ErrorKind::Forbidden, &["/workspace/secret", "permission denied"]);
        fails(run(read("group0")), ErrorKind::Forbidden, &["/workspace/group0"]);
        assert!(matches!(run(read("public")), Ok(FsReply::Data { .. })));
        fails(run(w("public", false, None)), ErrorKind::Forbidden, &["/workspace/public"]);
        fails(run(w("rootdir/x", false, None)), ErrorKind::Forbidden, &["/workspace/rootdir/x"]);
        fails(run(w("rootdir/a/b", true, None)), ErrorKind::Forbidden, &["/workspace/rootdir/a"]);
        fails(run(w("secret", false, Some(0o644))), ErrorKind::Forbidden, &["/workspace/secret"]);
        fails(
            run(FsCall::Mkdir { path: p("rootdir/d"), parents: false, mode: None }),
            ErrorKind::Forbidden,
            &["/workspace/rootdir/d"],
        );
        assert_eq!(fs::read(f.host("public")).unwrap(), b"all");
        assert!(fs::read_dir(f.host("rootdir")).unwrap().next().is_none());
        // The same calls as berthd's own user (root here) go through.
        assert!(matches!(f.run(read("secret")), Ok(FsReply::Data { .. })));

        set_groups(&before.2).unwrap();
        assert_eq!(creds(), before);
    }
}
