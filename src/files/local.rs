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
//! - `Remove` of a path ending in `.` or `..` is refused (name the directory itself);
//!   a trailing `/` is ignored (`/workspace/link/` removes the symlink `link`).
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
        Err(Errno(libc::ENOENT)) if make => mkdir_p(ws, parent_rel).map(drop),
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

/// Makes `rel` and its missing parents (0755), confined; returns it (`O_PATH`).
fn mkdir_p(ws: &Ws, rel: &str) -> Result<OwnedFd, Error> {
    let mut cur = ws.dir("")?.map_err(|e| fail(WORKSPACE_IN_CONTAINER, e))?;
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
                    Err(e) => return Err(fail(&here, e)),
                }
                match ws.dir(&prefix)? {
                    Ok(fd) => fd,
                    Err(Errno(libc::ENOENT)) => {
                        return Err(Error::invalid_params(format!("{here} exists but does not lead to a directory")))
                    }
                    Err(e) => return Err(fail(&here, e)),
                }
            }
            Err(Errno(libc::ENOTDIR)) => return Err(Error::invalid_params(format!("{here} is not a directory"))),
            Err(e) => return Err(fail(&here, e)),
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
        true => mkdir_p(ws, parent_rel)?,
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
