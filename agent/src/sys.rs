//! Thin, safe wrappers over the libc calls the agent and the shim need: pipes, sockets
//! (and descriptors passed over them), poll, signals, `posix_spawn`, `waitpid`, the
//! environment, and for the file calls `fstatat`, `readlinkat` and directory listing.
//! Every `unsafe` block of the crate lives here (but the shim's adoption of
//! its descriptor 3); nothing here knows about commands or frames.
//! Every descriptor created here is close-on-exec, so that one command's pipes never leak
//! into another command's shim (the agent spawns shims from many threads at once).

use std::ffi::{CStr, CString};
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

pub use libc::pid_t;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_ssize(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec `SOCK_SEQPACKET` pair: message boundaries are kept, and either end
/// sees end-of-file when the other process is gone.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A non-blocking, close-on-exec eventfd, used to wake a thread blocked in `poll`.
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // A full counter (never in practice) still leaves the fd readable: nothing lost.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

pub fn eventfd_drain(fd: &OwnedFd) {
    let mut v: u64 = 0;
    unsafe { libc::read(fd.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
}

/// `/dev/null`, close-on-exec.
pub fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | if write { libc::O_RDWR } else { libc::O_RDONLY };
    let fd = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), flags) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Makes sure descriptors 0, 1 and 2 are open (on `/dev/null` if not), so that no pipe
/// of ours is ever numbered 0–2 and confused with a standard stream.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // open returns the lowest free number: this one.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Marks every descriptor above 2 that this process inherited close-on-exec, so that
/// none of them reaches a command (Linux 5.11+; on older kernels this does nothing).
pub fn cloexec_inherited_fds() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    unsafe { libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match cvt_ssize(unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        match cvt_ssize(unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Sends one message on a seqpacket socket (no SIGPIPE if the peer is gone).
pub fn send(fd: RawFd, msg: &[u8]) -> io::Result<()> {
    loop {
        let r = unsafe { libc::send(fd, msg.as_ptr() as *const libc::c_void, msg.len(), libc::MSG_NOSIGNAL) };
        match cvt_ssize(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// Receives one message; `Ok(0)` is end-of-file.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        match cvt_ssize(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Sends one message on a seqpacket socket with descriptors attached (`SCM_RIGHTS`).
pub fn send_fds(fd: RawFd, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let space = unsafe { libc::CMSG_SPACE(mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() };
    let mut mh: libc::msghdr = unsafe { mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    mh.msg_controllen = space as _;
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of_val(fds) as u32) as _;
        ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
    }
    loop {
        match cvt_ssize(unsafe { libc::sendmsg(fd, &mh, libc::MSG_NOSIGNAL) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// Receives one message and the descriptors attached to it (made close-on-exec);
/// `Ok((0, _))` is end-of-file.
pub fn recv_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut mh: libc::msghdr = unsafe { mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    mh.msg_controllen = mem::size_of_val(&cbuf) as _;
    let n = loop {
        match cvt_ssize(unsafe { libc::recvmsg(fd, &mut mh, libc::MSG_CMSG_CLOEXEC) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    Ok((n, fds))
}

/// Replaces this process's environment with `env` (`KEY=value` strings), for itself
/// (`PATH` lookup in `spawn`) and for the children it spawns. Only for a single-threaded
/// process (the shim): nothing may read the environment meanwhile. The strings are
/// leaked, as the environment lives as long as the process.
pub fn set_environ(env: Vec<CString>) {
    let mut ptrs: Vec<*mut libc::c_char> = env.into_iter().map(|s| s.into_raw()).collect();
    ptrs.push(ptr::null_mut());
    extern "C" {
        static mut environ: *const *mut libc::c_char;
    }
    unsafe { ptr::addr_of_mut!(environ).write(ptrs.leak().as_ptr()) };
}

pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// `poll`, with `None` waiting forever; EINTR counts as "nothing ready".
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        Some(d) => d.as_millis().min(i32::MAX as u128) as i32 + i32::from(d.subsec_nanos() % 1_000_000 != 0),
    };
    match cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        r => r.map(|n| n as usize),
    }
}

pub fn getpid() -> pid_t {
    unsafe { libc::getpid() }
}

pub fn kill(pid: pid_t, sig: libc::c_int) -> io::Result<()> {
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn set_child_subreaper() -> io::Result<()> {
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// Names the calling thread (the process, for a single-threaded one) as `ps` shows it.
pub fn set_name(name: &CStr) {
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

pub fn setsid() {
    unsafe { libc::setsid() };
}

pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    unsafe { libc::umask(mask) }
}

pub fn chdir(dir: &CStr) -> io::Result<()> {
    cvt(unsafe { libc::chdir(dir.as_ptr()) }).map(drop)
}

/// Reaps one exited child without blocking: `Some((pid, raw status))`, or `None` when no
/// child has exited (or there are no children).
pub fn reap_one() -> Option<(pid_t, libc::c_int)> {
    let mut status = 0;
    loop {
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            return Some((pid, status));
        }
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// A raw wait status as `(code, signal)`, the way `Exited` carries it.
pub fn decode_status(status: libc::c_int) -> (i32, i32) {
    if libc::WIFSIGNALED(status) {
        (0, libc::WTERMSIG(status))
    } else {
        (libc::WEXITSTATUS(status), 0)
    }
}

pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn empty() -> SigSet {
        let mut s: libc::sigset_t = unsafe { mem::zeroed() };
        unsafe { libc::sigemptyset(&mut s) };
        SigSet(s)
    }
    pub fn full() -> SigSet {
        let mut s: libc::sigset_t = unsafe { mem::zeroed() };
        unsafe { libc::sigfillset(&mut s) };
        SigSet(s)
    }
    pub fn of(sigs: &[libc::c_int]) -> SigSet {
        let mut s = SigSet::empty();
        for &sig in sigs {
            unsafe { libc::sigaddset(&mut s.0, sig) };
        }
        s
    }
    /// Blocks these signals in the calling thread (and the threads it spawns later).
    pub fn block(&self) {
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, ptr::null_mut()) };
    }
    /// Waits for one of these (blocked) signals; `None` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<libc::c_int> {
        loop {
            let r = match timeout {
                None => unsafe { libc::sigwaitinfo(&self.0, ptr::null_mut()) },
                Some(d) => {
                    let ts = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ };
                    unsafe { libc::sigtimedwait(&self.0, ptr::null_mut(), &ts) }
                }
            };
            if r > 0 {
                return Some(r);
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return None;
            }
            if timeout.is_some() {
                // An interrupted timed wait: report "nothing", the caller re-checks its deadline.
                return None;
            }
        }
    }
    /// A non-blocking, close-on-exec signalfd for these (blocked) signals.
    pub fn signalfd(&self) -> io::Result<OwnedFd> {
        let fd = cvt(unsafe { libc::signalfd(-1, &self.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs a do-nothing handler: PID 1 has no default actions, and a signal whose
/// disposition is the default is dropped before it can be waited for.
pub fn install_noop_handler(sig: libc::c_int) {
    let mut sa: libc::sigaction = unsafe { mem::zeroed() };
    sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
    sa.sa_flags = libc::SA_RESTART;
    unsafe { libc::sigaction(sig, &sa, ptr::null_mut()) };
}

/// Drains a non-blocking signalfd.
pub fn signalfd_drain(fd: &OwnedFd) {
    let mut buf = [0u8; mem::size_of::<libc::signalfd_siginfo>() * 8];
    while read(fd.as_raw_fd(), &mut buf).map(|n| n > 0).unwrap_or(false) {}
}

/// A NUL-free byte string as a `CString`, or an error naming `what`.
pub fn cstring(bytes: &[u8], what: &str) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| format!("{what} contains a NUL byte"))
}

/// Starts `path` with `argv` and `envp` through `posix_spawn` (safe from a threaded
/// process: no allocation happens between fork and exec). `fds[i]`, if given, becomes
/// descriptor `i` of the child; `search` looks `path` up on this process's `PATH`. The
/// child starts with no signal blocked and SIGPIPE at its default action (Rust ignores
/// it in its own processes, and an ignored signal survives exec).
pub fn spawn(
    path: &CStr,
    argv: &[CString],
    envp: Option<&[CString]>,
    fds: &[RawFd],
    search: bool,
) -> io::Result<pid_t> {
    // dup2 onto 0..fds.len() must never overwrite a source: move low sources up first.
    let mut moved = Vec::new();
    let mut src = Vec::with_capacity(fds.len());
    for &fd in fds {
        if fd < fds.len() as RawFd && fd >= 0 {
            let high = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) })?;
            moved.push(unsafe { OwnedFd::from_raw_fd(high) });
            src.push(high);
        } else {
            src.push(fd);
        }
    }
    let mut argv_p: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv_p.push(ptr::null_mut());
    let envp_p: Option<Vec<*mut libc::c_char>> = envp.map(|e| {
        let mut v: Vec<*mut libc::c_char> = e.iter().map(|a| a.as_ptr() as *mut _).collect();
        v.push(ptr::null_mut());
        v
    });
    extern "C" {
        static mut environ: *const *mut libc::c_char;
    }
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        for (i, &s) in src.iter().enumerate() {
            libc::posix_spawn_file_actions_adddup2(&mut fa, s, i as libc::c_int);
        }
        let mut attr: libc::posix_spawnattr_t = mem::zeroed();
        libc::posix_spawnattr_init(&mut attr);
        libc::posix_spawnattr_setsigmask(&mut attr, &SigSet::empty().0);
        libc::posix_spawnattr_setsigdefault(&mut attr, &SigSet::of(&[libc::SIGPIPE]).0);
        libc::posix_spawnattr_setflags(&mut attr, (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as _);
        let env_ptr = match &envp_p {
            Some(v) => v.as_ptr(),
            None => ptr::addr_of!(environ).read(),
        };
        let mut pid: pid_t = 0;
        let r = if search {
            libc::posix_spawnp(&mut pid, path.as_ptr(), &fa, &attr, argv_p.as_ptr(), env_ptr)
        } else {
            libc::posix_spawn(&mut pid, path.as_ptr(), &fa, &attr, argv_p.as_ptr(), env_ptr)
        };
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        drop(moved);
        if r != 0 {
            Err(io::Error::from_raw_os_error(r))
        } else {
            Ok(pid)
        }
    }
}

/// What `fstatat` tells of an entry, as much as the file calls use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// The whole `st_mode`: type and permission bits.
    pub mode: u32,
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    pub dev: u64,
    pub ino: u64,
}

impl FileStat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// `fstatat`: `path` relative to the directory `dir` (or the working directory when
/// `None`); a final symlink is followed only with `follow`.
pub fn fstatat(dir: Option<RawFd>, path: &CStr, follow: bool) -> io::Result<FileStat> {
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct, overwritten by
    // the call.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `st` is a
    // writable `stat`; an invalid `dir` is an EBADF, not undefined behaviour.
    cvt(unsafe { libc::fstatat(dir.unwrap_or(libc::AT_FDCWD), path.as_ptr(), &mut st, flags) })?;
    Ok(FileStat::of(&st))
}

/// `fstat` of an open descriptor.
pub fn fstat(fd: RawFd) -> io::Result<FileStat> {
    // SAFETY: as in `fstatat`.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `st` is a writable `stat`; a bad `fd` is an EBADF.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(FileStat::of(&st))
}

impl FileStat {
    fn of(st: &libc::stat) -> FileStat {
        FileStat {
            mode: st.st_mode,
            size: st.st_size as u64,
            // `st_mtime_nsec` is never negative: this rounds towards the past, as it should.
            mtime_ms: st.st_mtime.saturating_mul(1000).saturating_add(st.st_mtime_nsec / 1_000_000),
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// `readlinkat`: where the symlink `path` (relative to `dir`, or the working directory)
/// points.
pub fn readlinkat(dir: Option<RawFd>, path: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `path` is NUL-terminated and outlives the call; the kernel writes at
        // most `buf.len()` bytes into `buf`.
        let r = unsafe {
            libc::readlinkat(
                dir.unwrap_or(libc::AT_FDCWD),
                path.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        let n = cvt_ssize(r)?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        // Possibly cut: try again with more room (a target is at most PATH_MAX long).
        if buf.len() > 64 * 1024 {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// The names in the open directory `dir`, in the order the file system gives them,
/// without `.` and `..`. `dir` itself is left open (a duplicate is read and closed).
pub fn read_dir_names(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own makes a new descriptor we own.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is an open descriptor owned by nobody else; on success the stream
    // owns it (closedir closes it), on failure we still do.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: `dup` is ours and not owned by a stream.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // The duplicate shares the file offset with `dir`: start from the beginning.
    // SAFETY: `stream` is a valid directory stream.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; setting it to 0 tells the end of the stream
        // (null, errno still 0) from an error (null, errno set).
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a valid directory stream used by this thread only.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
        }
        // SAFETY: a non-null `readdir` result points at a `dirent` whose `d_name` is
        // NUL-terminated and valid until the next `readdir` on the stream; it is copied
        // out before that.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: `stream` is valid and closed once; this also closes `dup`.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}
