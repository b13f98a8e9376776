//! File calls (`FsRead`, `FsWrite`, `FsList`, `FsStat`, `FsRemove`, `FsMkdir`): done by
//! the agent itself, as its own user (the container's), on absolute paths that the kernel
//! resolves inside the container, each turned into its one answer (`Entries` possibly in
//! several frames). A call that cannot be done is `Refused`, with a kind from the errno and
//! a message that names the path in words. Blocking: `conn` runs these on its call
//! workers (`pool`), never on its reader thread. Owns no state.

use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use berth_wire::{write_flags, Entry, EntryType, Frame, RefusedKind, MAX_DATA, NO_MODE};

use crate::shim::plain;
use crate::sys::{self, FileStat};

/// Why a call could not be done: the refusal's kind and message.
pub type Refusal = (RefusedKind, String);

/// The most entry bytes (as encoded) one `Entries` frame carries; far below `MAX_FRAME`.
const ENTRIES_BUDGET: usize = 256 * 1024;
/// A file made by `FsWrite` without a mode; a directory made by `FsMkdir` without one,
/// and every parent either makes (both before the umask).
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// The reply frames for a file call (`Refused` for any other frame).
pub fn answer(call: Frame) -> Vec<Frame> {
    let id = call.id().unwrap_or(0);
    let done = |size| vec![Frame::Done { id, size }];
    let result = match call {
        Frame::FsRead { path, offset, limit, .. } => {
            read(&path, offset, limit).map(|(size, eof, data)| vec![Frame::Data { id, size, eof, data }])
        }
        Frame::FsWrite { path, offset, flags, mode, data, .. } => write(&path, offset, flags, mode, &data).map(done),
        Frame::FsList { path, .. } => list(&path).map(|entries| entries_frames(id, entries)),
        Frame::FsStat { path, .. } => stat(&path).map(|e| vec![Frame::Entries { id, entries: vec![e], more: false }]),
        Frame::FsRemove { path, recursive, .. } => remove(&path, recursive).map(|()| done(0)),
        Frame::FsMkdir { path, parents, mode, .. } => mkdir(&path, parents, mode).map(|()| done(0)),
        other => Err((RefusedKind::Invalid, format!("{} is not a file call", other.kind_name()))),
    };
    result.unwrap_or_else(|(kind, message)| vec![Frame::Refused { id, kind, message }])
}

/// A call's path, checked: absolute, without NUL.
struct Target<'a> {
    bytes: &'a [u8],
    c: CString,
}

impl<'a> Target<'a> {
    fn new(bytes: &'a [u8]) -> Result<Target<'a>, Refusal> {
        let invalid = |m: String| Err((RefusedKind::Invalid, m));
        if bytes.is_empty() {
            return invalid("empty path".into());
        }
        let Ok(c) = CString::new(bytes) else { return invalid(format!("path {} contains a NUL byte", show(bytes))) };
        if bytes[0] != b'/' {
            return invalid(format!("{} is not an absolute path", show(bytes)));
        }
        Ok(Target { bytes, c })
    }

    fn path(&self) -> &Path {
        Path::new(OsStr::from_bytes(self.bytes))
    }

    fn show(&self) -> String {
        show(self.bytes)
    }

    /// What the OS said about this path, as a refusal naming it: a missing or non-directory
    /// component is named when one can be found.
    fn refusal(&self, e: &io::Error) -> Refusal {
        let p = self.show();
        match e.raw_os_error().unwrap_or(0) {
            libc::ENOENT => (RefusedKind::NotFound, self.blame().unwrap_or_else(|| format!("{p} does not exist"))),
            libc::ENOTDIR => (RefusedKind::WrongKind, self.blame().unwrap_or_else(|| format!("{p}: not a directory"))),
            libc::EACCES | libc::EPERM => (RefusedKind::Denied, format!("{p}: permission denied")),
            libc::EROFS => (RefusedKind::Denied, format!("{p}: read-only file system")),
            libc::EISDIR => (RefusedKind::WrongKind, format!("{p} is a directory")),
            libc::ENOTEMPTY => (RefusedKind::WrongKind, format!("{p} is not empty")),
            libc::EEXIST => (RefusedKind::Exists, format!("{p} already exists")),
            libc::ENAMETOOLONG => (RefusedKind::Invalid, format!("{p}: file name too long")),
            libc::EINVAL => (RefusedKind::Invalid, format!("{p}: invalid argument")),
            libc::ELOOP => (RefusedKind::WrongKind, format!("{p}: too many levels of symbolic links")),
            _ => (RefusedKind::Other, format!("{p}: {}", plain(e))),
        }
    }

    /// A refusal for a path whose parent directory is missing or is no directory.
    fn no_parent(&self) -> Refusal {
        let p = self.show();
        let why =
            self.blame().unwrap_or_else(|| format!("{p}: parent directory {} does not exist", show(self.parent())));
        (RefusedKind::WrongKind, why)
    }

    /// The first ancestor of the path that is missing or not a directory, in words.
    fn blame(&self) -> Option<String> {
        let trimmed = trim_slashes(self.bytes);
        for (i, _) in trimmed.iter().enumerate().skip(1).filter(|&(_, &b)| b == b'/') {
            let ancestor = &trimmed[..i];
            if ancestor.ends_with(b"/") {
                continue;
            }
            let c = CString::new(ancestor).ok()?;
            match sys::fstatat(None, &c, true) {
                Ok(st) if st.is_dir() => {}
                Ok(_) => return Some(format!("{}: {} is not a directory", self.show(), show(ancestor))),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    return Some(format!("{}: parent directory {} does not exist", self.show(), show(ancestor)))
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// The parent directory's path (`/` for a top-level entry).
    fn parent(&self) -> &[u8] {
        let trimmed = trim_slashes(self.bytes);
        match trimmed.iter().rposition(|&b| b == b'/') {
            Some(0) | None => b"/",
            Some(i) => &trimmed[..i],
        }
    }

    /// The last component (`/` for the root).
    fn name(&self) -> &[u8] {
        let trimmed = trim_slashes(self.bytes);
        match trimmed.iter().rposition(|&b| b == b'/') {
            _ if trimmed == b"/" => trimmed,
            Some(i) => &trimmed[i + 1..],
            None => trimmed,
        }
    }

    /// Refuses anything but a regular file (after symlinks): a directory, a FIFO, ...
    fn regular(&self, st: &FileStat) -> Result<(), Refusal> {
        if st.is_file() {
            return Ok(());
        }
        let p = self.show();
        let what = match st.mode & libc::S_IFMT {
            libc::S_IFDIR => return Err((RefusedKind::WrongKind, format!("{p} is a directory"))),
            libc::S_IFIFO => "a FIFO",
            libc::S_IFSOCK => "a socket",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            _ => "of an unknown kind",
        };
        Err((RefusedKind::WrongKind, format!("{p} is not a regular file: it is {what}")))
    }
}

/// A path's bytes in words (not UTF-8 ones replaced).
fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The path without trailing slashes (`/` stays `/`).
fn trim_slashes(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != b'/').map_or(0, |i| i + 1);
    if end == 0 {
        &b[..b.len().min(1)]
    } else {
        &b[..end]
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn check_mode(t: &Target, mode: u32) -> Result<Option<u32>, Refusal> {
    match mode {
        NO_MODE => Ok(None),
        m if m <= 0o7777 => Ok(Some(m)),
        m => Err((RefusedKind::Invalid, format!("{}: mode {m:#o} is not a mode (at most 0o7777)", t.show()))),
    }
}

/// `FsRead`: up to `limit` bytes from `offset`, the file's size, and whether they reach
/// its end. Opened following symlinks, non-blocking (a FIFO that slipped past the check
/// does not hang the call), and only once known to be a regular file (so that no device
/// is ever opened).
fn read(path: &[u8], offset: u64, limit: u32) -> Result<(u64, bool, Vec<u8>), Refusal> {
    let t = Target::new(path)?;
    let st = sys::fstatat(None, &t.c, true).map_err(|e| t.refusal(&e))?;
    t.regular(&st)?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(t.path())
        .map_err(|e| t.refusal(&e))?;
    let st = fstat(&t, &f)?;
    t.regular(&st)?;
    let size = st.size;
    let want = (limit as usize).min(MAX_DATA);
    let mut data = Vec::new();
    if offset < size && want > 0 {
        data.resize(want.min((size - offset).min(usize::MAX as u64) as usize), 0);
        let mut got = 0;
        while got < data.len() {
            let Some(at) = offset.checked_add(got as u64) else { break };
            match f.read_at(&mut data[got..], at) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(t.refusal(&e)),
            }
        }
        data.truncate(got);
    }
    let eof = offset.saturating_add(data.len() as u64) >= size;
    Ok((size, eof, data))
}

fn fstat(t: &Target, f: &File) -> Result<FileStat, Refusal> {
    sys::fstat(f.as_raw_fd()).map_err(|e| t.refusal(&e))
}

/// `FsWrite`; the file's size after it.
fn write(path: &[u8], offset: u64, flags: u8, mode: u32, data: &[u8]) -> Result<u64, Refusal> {
    let t = Target::new(path)?;
    let mode = check_mode(&t, mode)?;
    if offset.checked_add(data.len() as u64).is_none_or(|end| end > i64::MAX as u64) {
        return Err((RefusedKind::Invalid, format!("{}: offset {offset} is past the largest file size", t.show())));
    }
    match sys::fstatat(None, &t.c, true) {
        Ok(st) => t.regular(&st)?,
        Err(e) if errno(&e) == libc::ENOENT => {}
        Err(e) => return Err(t.refusal(&e)),
    }
    let append = flags & write_flags::APPEND != 0;
    let open = || {
        OpenOptions::new()
            .write(true)
            .append(append)
            .create(true)
            .mode(mode.unwrap_or(FILE_MODE))
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(t.path())
    };
    let f = match open() {
        Ok(f) => f,
        Err(e) if errno(&e) == libc::ENOENT && flags & write_flags::MKDIRS != 0 => {
            make_parents(&t)?;
            open().map_err(|e| t.refusal(&e))?
        }
        Err(e) if errno(&e) == libc::ENOENT => return Err(t.no_parent()),
        Err(e) => return Err(t.refusal(&e)),
    };
    let st = fstat(&t, &f)?;
    t.regular(&st)?;
    let io = |e: io::Error| t.refusal(&e);
    if flags & write_flags::TRUNCATE != 0 {
        f.set_len(offset).map_err(io)?;
    }
    if append {
        (&f).write_all(data).map_err(io)?;
    } else {
        f.write_all_at(data, offset).map_err(io)?;
    }
    if let Some(m) = mode {
        // Set exactly (the umask applied at creation, and a write may have cleared the
        // setuid/setgid bits); a file already so is left alone (it may not be ours).
        if fstat(&t, &f)?.mode & 0o7777 != m {
            f.set_permissions(Permissions::from_mode(m)).map_err(io)?;
        }
    }
    Ok(fstat(&t, &f)?.size)
}

/// Makes the missing parents of `t` (mode 0755, before the umask).
fn make_parents(t: &Target) -> Result<(), Refusal> {
    let parent = Path::new(OsStr::from_bytes(t.parent()));
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(parent).map_err(|e| match errno(&e) {
        libc::ENOENT | libc::ENOTDIR | libc::EEXIST => t.no_parent(),
        _ => t.refusal(&e),
    })
}

/// `FsList`: the directory's entries (after a final symlink), sorted by name.
fn list(path: &[u8]) -> Result<Vec<Entry>, Refusal> {
    let t = Target::new(path)?;
    let dir: OwnedFd = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(t.path()) {
        Ok(f) => f.into(),
        Err(e) if errno(&e) == libc::ENOTDIR => {
            let why = match sys::fstatat(None, &t.c, true) {
                Ok(st) if !st.is_dir() => format!("{} is not a directory", t.show()),
                _ => t.refusal(&e).1,
            };
            return Err((RefusedKind::WrongKind, why));
        }
        Err(e) => return Err(t.refusal(&e)),
    };
    let mut names = sys::read_dir_names(&dir).map_err(|e| t.refusal(&e))?;
    names.sort_unstable();
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        // A name from the directory has no NUL (nor a slash).
        let Ok(c) = CString::new(name.as_slice()) else { continue };
        let st = match sys::fstatat(Some(dir.as_raw_fd()), &c, false) {
            Ok(st) => st,
            // Gone between the listing and the look.
            Err(e) if errno(&e) == libc::ENOENT => continue,
            Err(e) => {
                let mut full = trim_slashes(t.bytes).to_vec();
                if full != b"/" {
                    full.push(b'/');
                }
                full.extend_from_slice(&name);
                let c = CString::new(full.as_slice()).unwrap_or(c);
                return Err(Target { bytes: &full, c }.refusal(&e));
            }
        };
        let target = match st.is_symlink() {
            true => match sys::readlinkat(Some(dir.as_raw_fd()), &c) {
                Ok(target) => target,
                Err(e) if errno(&e) == libc::ENOENT => continue,
                Err(_) => Vec::new(),
            },
            false => Vec::new(),
        };
        entries.push(entry(name, &st, target));
    }
    Ok(entries)
}

/// `FsStat`: the entry itself (a symlink is not followed).
fn stat(path: &[u8]) -> Result<Entry, Refusal> {
    let t = Target::new(path)?;
    let st = sys::fstatat(None, &t.c, false).map_err(|e| t.refusal(&e))?;
    let target = match st.is_symlink() {
        true => sys::readlinkat(None, &t.c).map_err(|e| t.refusal(&e))?,
        false => Vec::new(),
    };
    Ok(entry(t.name().to_vec(), &st, target))
}

fn entry(name: Vec<u8>, st: &FileStat, target: Vec<u8>) -> Entry {
    let kind = match st.mode & libc::S_IFMT {
        libc::S_IFREG => EntryType::File,
        libc::S_IFDIR => EntryType::Dir,
        libc::S_IFLNK => EntryType::Symlink,
        _ => EntryType::Other,
    };
    Entry { name, kind, size: st.size, mode: st.mode & 0o7777, mtime_ms: st.mtime_ms, target }
}

/// Entries as frames of at most `ENTRIES_BUDGET` bytes each, all but the last with `more`.
fn entries_frames(id: u32, entries: Vec<Entry>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let size = 4 + e.name.len() + 1 + 8 + 4 + 8 + 4 + e.target.len();
        if !batch.is_empty() && bytes + size > ENTRIES_BUDGET {
            frames.push(Frame::Entries { id, entries: std::mem::take(&mut batch), more: true });
            bytes = 0;
        }
        bytes += size;
        batch.push(e);
    }
    frames.push(Frame::Entries { id, entries: batch, more: false });
    frames
}

/// `FsRemove`: a file, a symlink (never what it points to), an empty directory, or with
/// `recursive` a whole tree (without following a symlink out of it).
fn remove(path: &[u8], recursive: bool) -> Result<(), Refusal> {
    let t = Target::new(path)?;
    // The entry itself: "dir/" names the entry "dir", so a symlink is removed, never
    // entered.
    let trimmed = trim_slashes(t.bytes);
    let t = Target { bytes: trimmed, c: CString::new(trimmed).unwrap_or(t.c) };
    let invalid = |why: &str| Err((RefusedKind::Invalid, format!("{}: {why}", t.show())));
    if trimmed == b"/" {
        return invalid("the root directory is not removed");
    }
    if matches!(t.name(), b"." | b"..") {
        return invalid("a path ending in . or .. is not removed");
    }
    let st = sys::fstatat(None, &t.c, false).map_err(|e| t.refusal(&e))?;
    if sys::fstatat(None, c"/", true).is_ok_and(|root| (root.dev, root.ino) == (st.dev, st.ino)) {
        return invalid("it is the root directory, which is not removed");
    }
    if st.is_dir() {
        // A mount point (the workspace, berth's /.berth/run, /proc, ...) or a tree holding
        // one is refused before anything is removed: removing what is under a mount
        // empties it and then fails on the mount itself.
        let real = fs::canonicalize(t.path()).map_err(|e| t.refusal(&e))?;
        let real = real.as_os_str().as_bytes();
        for m in mount_points() {
            let under = m.len() > real.len() && m.starts_with(real) && (real == b"/" || m[real.len()] == b'/');
            if m == real {
                return invalid("it is a mount point (such as /workspace or berth's own), which is not removed");
            }
            if under && recursive {
                let m = String::from_utf8_lossy(&m).into_owned();
                return invalid(&format!("it holds the mount point {m}, which is not removed"));
            }
        }
    }
    let done = match (st.is_dir(), recursive) {
        (true, true) => fs::remove_dir_all(t.path()),
        (true, false) => fs::remove_dir(t.path()),
        (false, _) => fs::remove_file(t.path()),
    };
    done.map_err(|e| match errno(&e) {
        libc::ENOTEMPTY | libc::EEXIST => (RefusedKind::WrongKind, format!("{} is not empty", t.show())),
        _ => t.refusal(&e),
    })
}

/// The mount points this process sees (`/proc/self/mountinfo`, octal escapes decoded).
fn mount_points() -> Vec<Vec<u8>> {
    let Ok(text) = fs::read("/proc/self/mountinfo") else { return Vec::new() };
    text.split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|raw| {
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                let oct =
                    raw.get(i + 1..i + 4).filter(|d| raw[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
                match oct {
                    Some(d) => {
                        out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                        i += 4;
                    }
                    None => {
                        out.push(raw[i]);
                        i += 1;
                    }
                }
            }
            out
        })
        .collect()
}

/// `FsMkdir`.
fn mkdir(path: &[u8], parents: bool, mode: u32) -> Result<(), Refusal> {
    let t = Target::new(path)?;
    let mode = check_mode(&t, mode)?;
    let exists = || (RefusedKind::Exists, format!("{} exists and is not a directory", t.show()));
    if parents {
        match sys::fstatat(None, &t.c, true) {
            // Left as it is, mode and all (as `mkdir -p` does).
            Ok(st) if st.is_dir() => return Ok(()),
            Ok(_) => return Err(exists()),
            Err(e) if errno(&e) == libc::ENOENT => make_parents(&t)?,
            Err(e) => return Err(t.refusal(&e)),
        }
    }
    match DirBuilder::new().mode(mode.unwrap_or(DIR_MODE)).create(t.path()) {
        Ok(()) => {}
        Err(e) if errno(&e) == libc::EEXIST => {
            return match sys::fstatat(None, &t.c, true) {
                // Made meanwhile by someone else.
                Ok(st) if parents && st.is_dir() => Ok(()),
                Ok(st) if !st.is_dir() => Err(exists()),
                _ => Err((RefusedKind::Exists, format!("{} already exists", t.show()))),
            };
        }
        Err(e) if errno(&e) == libc::ENOENT => return Err(t.no_parent()),
        Err(e) => return Err(t.refusal(&e)),
    }
    if let Some(m) = mode {
        // Exactly, not as the umask left it.
        fs::set_permissions(t.path(), Permissions::from_mode(m)).map_err(|e| t.refusal(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parts() {
        let t = |p: &'static [u8]| Target::new(p).unwrap();
        assert_eq!(t(b"/a/b").parent(), b"/a");
        assert_eq!(t(b"/a/b//").parent(), b"/a");
        assert_eq!(t(b"/a").parent(), b"/");
        assert_eq!(t(b"/").parent(), b"/");
        assert_eq!(t(b"/a/b//").name(), b"b");
        assert_eq!(t(b"/").name(), b"/");
        assert_eq!(t(b"//").name(), b"/");
        assert_eq!(trim_slashes(b"///"), b"/");
        assert_eq!(trim_slashes(b"/x/"), b"/x");
        for bad in [&b""[..], b"rel/ative", b"/a\0b"] {
            assert_eq!(Target::new(bad).err().map(|r| r.0), Some(RefusedKind::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn errnos_map_to_kinds() {
        let t = Target::new(b"/nonexistent-berth-test/x").unwrap();
        let kind = |errno| t.refusal(&io::Error::from_raw_os_error(errno)).0;
        assert_eq!(kind(libc::ENOENT), RefusedKind::NotFound);
        for e in [libc::EACCES, libc::EPERM, libc::EROFS] {
            assert_eq!(kind(e), RefusedKind::Denied);
        }
        for e in [libc::EISDIR, libc::ENOTDIR, libc::ENOTEMPTY, libc::ELOOP] {
            assert_eq!(kind(e), RefusedKind::WrongKind);
        }
        assert_eq!(kind(libc::EEXIST), RefusedKind::Exists);
        assert_eq!(kind(libc::ENAMETOOLONG), RefusedKind::Invalid);
        assert_eq!(kind(libc::EINVAL), RefusedKind::Invalid);
        let (k, m) = t.refusal(&io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!((k, m.as_str()), (RefusedKind::Other, "/nonexistent-berth-test/x: no space left on device"));
        let m = t.refusal(&io::Error::from_raw_os_error(libc::ENOENT)).1;
        assert_eq!(m, "/nonexistent-berth-test/x: parent directory /nonexistent-berth-test does not exist");
    }

    #[test]
    fn entries_are_split_into_frames_under_the_budget() {
        let e = |i: usize| Entry {
            name: format!("{i:0200}").into_bytes(),
            kind: EntryType::File,
            size: 0,
            mode: 0o644,
            mtime_ms: 0,
            target: vec![],
        };
        let frames = entries_frames(7, (0..5000).map(e).collect());
        assert!(frames.len() > 2);
        let mut n = 0;
        for (i, f) in frames.iter().enumerate() {
            let Frame::Entries { id: 7, entries, more } = f else { panic!("{f:?}") };
            assert_eq!(*more, i + 1 < frames.len());
            assert!(f.to_bytes().len() < berth_wire::MAX_FRAME / 2);
            n += entries.len();
        }
        assert_eq!(n, 5000);
        assert_eq!(entries_frames(1, vec![]), vec![Frame::Entries { id: 1, entries: vec![], more: false }]);
    }
}
