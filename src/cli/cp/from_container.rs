//! Out of the container: to a host path (`to_host`) or as a tar stream on stdout
//! (`to_tar`).
//!
//! A file is read in chunks at their offsets, several at once: on the host each lands at
//! its offset as it comes; into a tar stream they are taken in order. Symlinks stay
//! symlinks. On the host, modes and mtimes are kept (directories get theirs once
//! everything inside them is written).

use std::fs::OpenOptions;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::remote::RemoteEntry;
use super::spec::{self, DstState, Landing, Trailing};
use super::to_container::join_one;
use super::{set_mtime_nofollow, Ctx, Failure, Kind, IN_FLIGHT};

/// The source: its path (a symlink SRC followed when asked, or when SRC ends in `/`),
/// what it is, and how SRC ended.
async fn source(ctx: &Ctx, src: &str, follow: bool) -> Result<(String, RemoteEntry, Trailing), Failure> {
    let abs = spec::container_abs(src);
    let t = spec::trailing(&abs);
    let mut path = spec::strip_trailing(&abs).to_string();
    let shown = ctx.shown(src);
    let stat = |p: String| async move { ctx.remote.stat(&p).await.map_err(|e| Failure::call(&ctx.shown(&p), &p, e)) };
    let mut e = stat(path.clone()).await?.ok_or_else(|| Failure::new(format!("{shown}: no such file or directory")))?;
    if e.kind == Kind::Symlink && (follow || t != Trailing::None) {
        for _ in 0..40 {
            if e.kind != Kind::Symlink {
                break;
            }
            let target = e.target.clone().unwrap_or_default();
            path = if target.starts_with('/') { target } else { spec::join(&spec::parent(&path), &target) };
            e = stat(path.clone())
                .await?
                .ok_or_else(|| Failure::new(format!("{shown}: a symlink to {path}, which does not exist")))?;
        }
    }
    if e.kind != Kind::Dir && t != Trailing::None {
        return Err(Failure::new(format!("{shown}: not a directory")));
    }
    if e.kind == Kind::Other {
        return Err(Failure::new(format!("{shown}: not a regular file, directory or symlink")));
    }
    Ok((path, e, t))
}

/// What a host path is now (following symlinks).
fn host_state(p: &Path) -> DstState {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => DstState::Dir,
        Ok(_) => DstState::File,
        Err(_) => {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            DstState::Missing { parent_dir: parent.is_dir() }
        }
    }
}

/// `berth cp NAME:PATH HOSTPATH`.
pub async fn to_host(ctx: &Arc<Ctx>, src: &str, dst: &Path, dst_arg: &str, follow: bool) -> Result<(), Failure> {
    let (path, root, src_trailing) = source(ctx, src, follow).await?;
    let src_dir = root.kind == Kind::Dir;
    let base = spec::base_name(&spec::container_abs(src)).to_string();
    let state = host_state(dst);
    let target = match spec::landing(src_dir, src_trailing, &base, dst_arg, spec::trailing(dst_arg), state)
        .map_err(Failure::new)?
    {
        Landing::At => dst.to_path_buf(),
        Landing::Inside(name) => {
            let target = dst.join(name);
            spec::check_inside(src_dir, &target.display().to_string(), host_state(&target)).map_err(Failure::new)?;
            target
        }
    };
    match root.kind {
        Kind::File => {
            ctx.progress.set_total(root.size);
            get_file(ctx.clone(), path, root.size, root.mode, root.mtime, target).await
        }
        Kind::Symlink => make_link(ctx, &target, &root),
        _ => {
            let items = ctx.remote.walk(&path).await.map_err(|e| Failure::call(&ctx.shown(&path), &path, e))?;
            ctx.progress.set_total(items.iter().filter(|(_, e)| e.kind == Kind::File).map(|(_, e)| e.size).sum());
            let mut dirs = vec![(target.clone(), root.mode, root.mtime)];
            make_dir(ctx, &target)?;
            let mut jobs = JoinSet::new();
            for (rel, e) in items {
                let host = target.join(&rel);
                match e.kind {
                    Kind::Dir => {
                        make_dir(ctx, &host)?;
                        dirs.push((host, e.mode, e.mtime));
                    }
                    Kind::Symlink => make_link(ctx, &host, &e)?,
                    Kind::File => {
                        while jobs.len() >= 2 * IN_FLIGHT {
                            join_one(&mut jobs).await?;
                        }
                        jobs.spawn(get_file(ctx.clone(), e.path.clone(), e.size, e.mode, e.mtime, host));
                    }
                    Kind::Other => ctx.skip(ctx.shown(&e.path), "not a regular file, directory or symlink"),
                }
            }
            while !jobs.is_empty() {
                join_one(&mut jobs).await?;
            }
            // Modes and times last, deepest first: a read-only directory is filled first,
            // and writing inside a directory changes its mtime.
            for (dir, mode, mtime) in dirs.iter().rev() {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| Failure::io(dir, e))?;
                if let Some(t) = mtime {
                    set_mtime_nofollow(dir, *t).map_err(|e| Failure::io(dir, e))?;
                }
            }
            Ok(())
        }
    }
}

/// Makes the host directory `p` (owner-only until its mode is set at the end); one
/// already there is merged into.
fn make_dir(ctx: &Ctx, p: &Path) -> Result<(), Failure> {
    match std::fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !p.is_dir() {
                return Err(Failure::new(format!("cannot overwrite non-directory {} with a directory", p.display())));
            }
        }
        Err(e) => return Err(Failure::io(p, e)),
    }
    ctx.tally.dirs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Removes a non-directory at `p` so something else can be made there.
fn clear(p: &Path) -> Result<(), Failure> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            Err(Failure::new(format!("cannot overwrite directory {} with a non-directory", p.display())))
        }
        Ok(_) => std::fs::remove_file(p).map_err(|e| Failure::io(p, e)),
        Err(_) => Ok(()),
    }
}

fn make_link(ctx: &Ctx, host: &Path, e: &RemoteEntry) -> Result<(), Failure> {
    clear(host)?;
    std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), host).map_err(|err| Failure::io(host, err))?;
    if let Some(t) = e.mtime {
        set_mtime_nofollow(host, t).map_err(|err| Failure::io(host, err))?;
    }
    ctx.tally.symlinks.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The container file `path` (`size` bytes when listed) to the host path `host`.
async fn get_file(
    ctx: Arc<Ctx>,
    path: String,
    size: u64,
    mode: u32,
    mtime: Option<SystemTime>,
    host: PathBuf,
) -> Result<(), Failure> {
    // A symlink there is replaced, not written through.
    if std::fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
        clear(&host)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&host)
        .map_err(|e| Failure::io(&host, e))?;
    let file = Arc::new(file);
    let chunk = ctx.remote.read_chunk;
    let n = size.div_ceil(chunk).max(1);
    let grew = Arc::new(AtomicBool::new(false));
    let end = Arc::new(AtomicU64::new(0));
    let mut jobs = JoinSet::new();
    for i in 0..n {
        while jobs.len() >= IN_FLIGHT {
            join_one(&mut jobs).await?;
        }
        let (ctx, file, path, host, grew, end) =
            (ctx.clone(), file.clone(), path.clone(), host.clone(), grew.clone(), end.clone());
        jobs.spawn(async move {
            let off = i * chunk;
            let _slot = ctx.slots.acquire().await.expect("never closed");
            let c = ctx.remote.read(&path, off, chunk).await.map_err(|e| Failure::call(&ctx.shown(&path), &path, e))?;
            file.write_all_at(&c.data, off).map_err(|e| Failure::io(&host, e))?;
            end.fetch_max(off + c.data.len() as u64, Ordering::Relaxed);
            if i == n - 1 && !c.eof && !c.data.is_empty() {
                grew.store(true, Ordering::Relaxed);
            }
            ctx.progress.add(c.data.len() as u64);
            ctx.tally.bytes.fetch_add(c.data.len() as u64, Ordering::Relaxed);
            Ok(())
        });
    }
    while !jobs.is_empty() {
        join_one(&mut jobs).await?;
    }
    // Grown since it was listed: the rest, one chunk at a time.
    let mut off = n * chunk;
    let mut more = grew.load(Ordering::Relaxed);
    while more {
        let c = ctx.remote.read(&path, off, chunk).await.map_err(|e| Failure::call(&ctx.shown(&path), &path, e))?;
        file.write_all_at(&c.data, off).map_err(|e| Failure::io(&host, e))?;
        off += c.data.len() as u64;
        ctx.progress.add(c.data.len() as u64);
        ctx.tally.bytes.fetch_add(c.data.len() as u64, Ordering::Relaxed);
        more = !c.eof && !c.data.is_empty();
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| Failure::io(&host, e))?;
    if let Some(t) = mtime {
        file.set_modified(t).map_err(|e| Failure::io(&host, e))?;
    }
    ctx.tally.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// What the tar writer thread is handed: an entry, then (for a file) exactly its size
/// in `Data`.
enum TarOut {
    Begin { name: String, kind: Kind, size: u64, mode: u32, mtime: Option<SystemTime>, target: Option<String> },
    Data(Vec<u8>),
}

/// A file's data as the tar builder reads it: `left` bytes from the channel.
struct ChanReader<'a> {
    rx: &'a mut mpsc::Receiver<TarOut>,
    buf: Vec<u8>,
    pos: usize,
    left: u64,
}

impl Read for ChanReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(TarOut::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                _ => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "a file's data ended early")),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos).min(self.left as usize);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

fn write_tar(mut rx: mpsc::Receiver<TarOut>, out: impl Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    while let Some(ev) = rx.blocking_recv() {
        let TarOut::Begin { name, kind, size, mode, mtime, target } = ev else {
            return Err(std::io::Error::other("data without an entry"));
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        let secs = mtime.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        h.set_mtime(secs);
        match kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{name}/"), std::io::empty())?;
            }
            Kind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &name, target.unwrap_or_default())?;
            }
            _ => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                b.append_data(&mut h, &name, ChanReader { rx: &mut rx, buf: Vec::new(), pos: 0, left: size })?;
            }
        }
    }
    b.into_inner()?.flush()
}

/// One step of the tar stream, in order.
enum Job {
    Head(String, RemoteEntry),
    Read { path: String, off: u64, len: u64, last: bool },
}

/// `berth cp NAME:PATH -`.
pub async fn to_tar(ctx: &Arc<Ctx>, src: &str, follow: bool) -> Result<(), Failure> {
    let (path, root, t) = source(ctx, src, follow).await?;
    let base = spec::base_name(&spec::container_abs(src)).to_string();
    let contents = root.kind == Kind::Dir && (t == Trailing::Dot || base.is_empty());
    let mut items = Vec::new();
    if !contents {
        items.push((base.clone(), root.clone()));
    }
    if root.kind == Kind::Dir {
        let below = ctx.remote.walk(&path).await.map_err(|e| Failure::call(&ctx.shown(&path), &path, e))?;
        for (rel, e) in below {
            match e.kind {
                Kind::Other => ctx.skip(ctx.shown(&e.path), "not a regular file, directory or symlink"),
                _ => items.push((if contents { rel } else { format!("{base}/{rel}") }, e)),
            }
        }
    }
    if root.kind == Kind::File {
        // The entry's path is the one read, a followed symlink's target included.
        items[0].1.path = path.clone();
    }
    ctx.progress.set_total(items.iter().filter(|(_, e)| e.kind == Kind::File).map(|(_, e)| e.size).sum());
    let chunk = ctx.remote.read_chunk;
    let jobs = items.into_iter().flat_map(move |(name, e)| {
        let reads: Vec<Job> = if e.kind == Kind::File {
            let n = e.size.div_ceil(chunk);
            (0..n)
                .map(|i| Job::Read {
                    path: e.path.clone(),
                    off: i * chunk,
                    len: chunk.min(e.size - i * chunk),
                    last: i == n - 1,
                })
                .collect()
        } else {
            Vec::new()
        };
        std::iter::once(Job::Head(name, e)).chain(reads)
    });
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(write_tar(rx, std::io::stdout().lock()));
    });
    let steps = futures_util::stream::iter(jobs)
        .map(|job| {
            let ctx = ctx.clone();
            tokio::spawn(async move { step(&ctx, job).await })
        })
        .buffered(IN_FLIGHT);
    futures_util::pin_mut!(steps);
    let mut warned = String::new();
    while let Some(r) = steps.next().await {
        let (ev, changed) = r.map_err(|e| Failure::new(format!("internal error: a copy task failed: {e}")))??;
        if let Some(p) = changed.filter(|p| *p != warned) {
            ctx.skip(ctx.shown(&p), "it changed while it was read: the tar entry has its size when listed");
            warned = p;
        }
        if tx.send(ev).await.is_err() {
            break;
        }
    }
    drop(tx);
    match done_rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::new(format!("writing the tar stream to stdout: {}", super::io_text(&e)))),
        Err(_) => Err(Failure::new("internal error: the tar writer stopped")),
    }
}

/// One job's event, and the path of a file found to have changed size.
async fn step(ctx: &Ctx, job: Job) -> Result<(TarOut, Option<String>), Failure> {
    match job {
        Job::Head(name, e) => {
            match e.kind {
                Kind::File => ctx.tally.files.fetch_add(1, Ordering::Relaxed),
                Kind::Dir => ctx.tally.dirs.fetch_add(1, Ordering::Relaxed),
                _ => ctx.tally.symlinks.fetch_add(1, Ordering::Relaxed),
            };
            let ev = TarOut::Begin { name, kind: e.kind, size: e.size, mode: e.mode, mtime: e.mtime, target: e.target };
            Ok((ev, None))
        }
        Job::Read { path, off, len, last } => {
            let c = ctx.remote.read(&path, off, len).await.map_err(|e| Failure::call(&ctx.shown(&path), &path, e))?;
            let mut data = c.data;
            let changed = data.len() as u64 != len || (last && c.size != off + len);
            data.resize(len as usize, 0);
            ctx.progress.add(len);
            ctx.tally.bytes.fetch_add(len, Ordering::Relaxed);
            Ok((TarOut::Data(data), changed.then_some(path)))
        }
    }
}
