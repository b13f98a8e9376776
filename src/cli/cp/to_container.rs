//! Into the container: a host file or directory tree (`from_host`), or a tar stream on
//! stdin extracted into a directory (`from_tar`).
//!
//! A file's first chunk replaces it (created, with its mode); the rest are written at
//! their offsets, several at once and in any order. Directories are made before
//! anything inside them is written. Symlinks are skipped, each with a warning: there is
//! no call that makes one yet.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::remote::At;
use super::spec::{self, DstState, Landing, Trailing};
use super::{Ctx, Failure, Kind, IN_FLIGHT};

const NO_SYMLINKS: &str = "a symlink: berth cp cannot make symlinks in a container yet";

fn host_kind(ft: std::fs::FileType) -> Kind {
    if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

/// What a container path is now (following symlinks, as a write would).
pub(super) async fn remote_state(ctx: &Ctx, path: &str) -> Result<DstState, Failure> {
    let shown = ctx.shown(path);
    match ctx.remote.stat_follow(path).await {
        Ok(Some(e)) if e.kind == Kind::Dir => Ok(DstState::Dir),
        Ok(Some(_)) => Ok(DstState::File),
        Ok(None) => {
            let parent = spec::parent(path);
            let parent_dir = matches!(ctx.remote.stat_follow(&parent).await, Ok(Some(e)) if e.kind == Kind::Dir);
            Ok(DstState::Missing { parent_dir })
        }
        Err(e) => Err(Failure::call(&shown, path, e)),
    }
}

/// Where a copy into the container lands (`docker cp`'s rules), and whether a directory
/// is already there.
async fn destination(
    ctx: &Ctx,
    src_dir: bool,
    src_trailing: Trailing,
    base: &str,
    dst: &str,
) -> Result<(String, bool), Failure> {
    let abs = spec::container_abs(dst);
    let dst_path = spec::strip_trailing(&abs).to_string();
    let state = remote_state(ctx, &dst_path).await?;
    let shown = ctx.shown(dst);
    match spec::landing(src_dir, src_trailing, base, &shown, spec::trailing(&abs), state).map_err(Failure::new)? {
        Landing::At => Ok((dst_path, state == DstState::Dir)),
        Landing::Inside(name) => {
            let target = spec::join(&dst_path, &name);
            let state = remote_state(ctx, &target).await?;
            spec::check_inside(src_dir, &ctx.shown(&target), state).map_err(Failure::new)?;
            Ok((target, state == DstState::Dir))
        }
    }
}

/// A host entry below the source directory.
struct HostItem {
    rel: String,
    path: PathBuf,
    kind: Kind,
    size: u64,
    mode: u32,
}

/// The tree below `root`, parents first, names sorted; symlinks and special files are
/// skipped with a warning.
fn walk_host(ctx: &Ctx, root: &Path) -> Result<Vec<HostItem>, Failure> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Failure::io(&dir, e))? {
            let e = e.map_err(|e| Failure::io(&dir, e))?;
            names.push(e.file_name());
        }
        names.sort();
        let mut subdirs = Vec::new();
        for n in names {
            let path = dir.join(&n);
            let Some(name) = n.to_str() else {
                ctx.skip(path.display().to_string(), "its name is not UTF-8");
                continue;
            };
            let child = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Failure::io(&path, e))?;
            let kind = host_kind(meta.file_type());
            match kind {
                Kind::Symlink => ctx.skip(path.display().to_string(), NO_SYMLINKS),
                Kind::Other => ctx.skip(path.display().to_string(), "not a regular file, directory or symlink"),
                Kind::Dir => subdirs.push((child.clone(), path.clone())),
                Kind::File => {}
            }
            if matches!(kind, Kind::Dir | Kind::File) {
                out.push(HostItem { rel: child, path, kind, size: meta.len(), mode: meta.mode() & 0o7777 });
            }
        }
        // Depth first, in name order: pushed in reverse.
        stack.extend(subdirs.into_iter().rev());
    }
    // Parents before children, whatever the walk's order between siblings' subtrees.
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The last component of a host source (empty for `/`).
fn host_base(src: &Path) -> String {
    let name = src.file_name().map(|n| n.to_string_lossy().into_owned());
    name.or_else(|| std::fs::canonicalize(src).ok()?.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// `berth cp HOSTPATH NAME:PATH`.
pub async fn from_host(ctx: &Arc<Ctx>, src: &Path, src_arg: &str, dst: &str, follow: bool) -> Result<(), Failure> {
    let meta = if follow { std::fs::metadata(src) } else { std::fs::symlink_metadata(src) };
    let meta = meta.map_err(|e| Failure::io(src, e))?;
    let kind = host_kind(meta.file_type());
    match kind {
        Kind::Symlink => {
            return Err(Failure::new(format!(
                "{}: is a symlink, and berth cp cannot make symlinks in a container yet (-L copies what it points to)",
                src.display()
            )))
        }
        Kind::Other => return Err(Failure::new(format!("{}: not a regular file or directory", src.display()))),
        _ => {}
    }
    let src_dir = kind == Kind::Dir;
    let src_trailing = spec::trailing(src_arg);
    if !src_dir && src_trailing != Trailing::None {
        return Err(Failure::new(format!("{src_arg}: not a directory")));
    }
    let base = host_base(src);
    let (target, exists) = destination(ctx, src_dir, src_trailing, &base, dst).await?;
    if !src_dir {
        ctx.progress.set_total(meta.len());
        put_file(ctx.clone(), src.to_path_buf(), target, meta.mode() & 0o7777).await?;
        return Ok(());
    }
    let items = walk_host(ctx, src)?;
    ctx.progress.set_total(items.iter().filter(|i| i.kind == Kind::File).map(|i| i.size).sum());
    if !exists {
        make_dir(ctx, &target, meta.mode() & 0o7777, false).await?;
    }
    let mut jobs = JoinSet::new();
    for it in items {
        let path = spec::join(&target, &it.rel);
        match it.kind {
            Kind::Dir => make_dir(ctx, &path, it.mode, false).await?,
            _ => {
                while jobs.len() >= 2 * IN_FLIGHT {
                    join_one(&mut jobs).await?;
                }
                jobs.spawn(put_file(ctx.clone(), it.path, path, it.mode));
            }
        }
    }
    while !jobs.is_empty() {
        join_one(&mut jobs).await?;
    }
    Ok(())
}

/// Waits for one task of `set`; its failure (or panic) is the copy's.
pub(super) async fn join_one(set: &mut JoinSet<Result<(), Failure>>) -> Result<(), Failure> {
    match set.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(Failure::new(format!("internal error: a copy task failed: {e}"))),
        None => Ok(()),
    }
}

/// Makes the directory `path`; one already there is merged into (a non-directory there
/// is an error).
async fn make_dir(ctx: &Ctx, path: &str, mode: u32, parents: bool) -> Result<(), Failure> {
    let shown = ctx.shown(path);
    match ctx.remote.mkdir(path, Some(mode), parents).await {
        Ok(()) => {}
        Err(e) if e.kind() == Some("already_exists") => match remote_state(ctx, path).await? {
            DstState::Dir => {}
            _ => return Err(Failure::new(format!("cannot overwrite non-directory {shown} with a directory"))),
        },
        Err(e) => return Err(Failure::call(&shown, path, e)),
    }
    ctx.tally.dirs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Up to `len` bytes of `file` from `offset` (fewer at its end).
fn read_at(file: &File, host: &Path, offset: u64, len: usize) -> Result<Vec<u8>, Failure> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::io(host, e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Writes `data` at `at` in the container (one request), counting it.
async fn put(ctx: &Ctx, path: &str, data: &[u8], at: At, mode: Option<u32>, mkdirs: bool) -> Result<(), Failure> {
    ctx.remote.write(path, data, at, mode, mkdirs).await.map_err(|e| Failure::call(&ctx.shown(path), path, e))?;
    ctx.progress.add(data.len() as u64);
    ctx.tally.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// The host file `host` to the container path `path`, with `mode`.
async fn put_file(ctx: Arc<Ctx>, host: PathBuf, path: String, mode: u32) -> Result<(), Failure> {
    let file = Arc::new(File::open(&host).map_err(|e| Failure::io(&host, e))?);
    let size = file.metadata().map_err(|e| Failure::io(&host, e))?.len();
    let chunk = ctx.remote.write_chunk(&path).map_err(|e| Failure::new(e.message()))? as u64;
    {
        let _slot = ctx.slots.acquire().await.expect("never closed");
        let first = read_at(&file, &host, 0, size.min(chunk) as usize)?;
        put(&ctx, &path, &first, At::Replace, Some(mode), false).await?;
    }
    let mut rest = JoinSet::new();
    let mut off = chunk;
    while off < size {
        let len = chunk.min(size - off) as usize;
        while rest.len() >= IN_FLIGHT {
            join_one(&mut rest).await?;
        }
        let (ctx, file, host, path) = (ctx.clone(), file.clone(), host.clone(), path.clone());
        rest.spawn(async move {
            let _slot = ctx.slots.acquire().await.expect("never closed");
            let data = read_at(&file, &host, off, len)?;
            put(&ctx, &path, &data, At::Offset(off), None, false).await
        });
        off += len as u64;
    }
    while !rest.is_empty() {
        join_one(&mut rest).await?;
    }
    ctx.tally.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// What the thread reading the tar stream hands on.
enum TarEvent {
    Dir {
        rel: String,
        mode: u32,
    },
    /// A file's start: its first chunk, and whether more follow (as `Chunk`s, then
    /// `EndFile`).
    File {
        rel: String,
        mode: u32,
        first: Vec<u8>,
        more: bool,
    },
    Chunk(Vec<u8>),
    EndFile,
    Skip {
        what: String,
        why: &'static str,
    },
}

/// Reads `input` as far as `n` bytes into a fresh buffer (fewer at its end).
fn fill(input: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    input.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The tar stream's entries as events, file data in `chunk`-byte pieces. Returns when the
/// stream ends or the receiver is gone.
fn read_tar(input: impl Read, chunk: usize, tx: mpsc::Sender<TarEvent>) -> Result<(), String> {
    let bad = |e: std::io::Error| format!("reading the tar stream on stdin: {e}");
    let send = |ev: TarEvent| tx.blocking_send(ev).is_ok();
    let mut ar = tar::Archive::new(input);
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(rel) = spec::safe_rel(&raw) else {
            if !send(TarEvent::Skip { what: raw, why: "its path leads out of the destination" }) {
                return Ok(());
            }
            continue;
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        use tar::EntryType as T;
        let ev = match entry.header().entry_type() {
            T::Directory => TarEvent::Dir { rel, mode },
            T::Regular | T::Continuous | T::GNUSparse if !rel.is_empty() => {
                let first = fill(&mut entry, chunk).map_err(bad)?;
                let second = fill(&mut entry, chunk).map_err(bad)?;
                if second.is_empty() {
                    TarEvent::File { rel, mode, first, more: false }
                } else {
                    if !send(TarEvent::File { rel, mode, first, more: true }) || !send(TarEvent::Chunk(second)) {
                        return Ok(());
                    }
                    loop {
                        let next = fill(&mut entry, chunk).map_err(bad)?;
                        if next.is_empty() {
                            break;
                        }
                        if !send(TarEvent::Chunk(next)) {
                            return Ok(());
                        }
                    }
                    TarEvent::EndFile
                }
            }
            T::Symlink => TarEvent::Skip { what: raw, why: NO_SYMLINKS },
            T::Link => TarEvent::Skip { what: raw, why: "a hard link: berth cp cannot make links in a container yet" },
            T::XGlobalHeader => continue,
            _ => TarEvent::Skip { what: raw, why: "not a regular file, directory or symlink" },
        };
        if !send(ev) {
            return Ok(());
        }
    }
    Ok(())
}

/// Writes `data` to `path` from `offset` in as many requests as its size needs, each a
/// task of `jobs`.
async fn spawn_writes(
    ctx: &Arc<Ctx>,
    jobs: &mut JoinSet<Result<(), Failure>>,
    path: &str,
    data: Vec<u8>,
    offset: u64,
) -> Result<(), Failure> {
    let chunk = ctx.remote.write_chunk(path).map_err(|e| Failure::new(e.message()))?;
    let data = Arc::new(data);
    let mut start = 0;
    while start < data.len() {
        let end = (start + chunk).min(data.len());
        while jobs.len() >= IN_FLIGHT {
            join_one(jobs).await?;
        }
        let (ctx, path, data) = (ctx.clone(), path.to_string(), data.clone());
        jobs.spawn(
            async move { put(&ctx, &path, &data[start..end], At::Offset(offset + start as u64), None, false).await },
        );
        start = end;
    }
    Ok(())
}

/// `berth cp - NAME:DIR`: extracts the tar stream on stdin into the directory DIR.
pub async fn from_tar(ctx: &Arc<Ctx>, dst: &str) -> Result<(), Failure> {
    let abs = spec::container_abs(dst);
    let dir = spec::strip_trailing(&abs).to_string();
    let shown = ctx.shown(dst);
    match remote_state(ctx, &dir).await? {
        DstState::Dir => {}
        DstState::File => {
            return Err(Failure::new(format!("{shown}: not a directory (a tar stream is extracted into a directory)")))
        }
        DstState::Missing { .. } => return Err(Failure::new(format!("{shown}: no such directory"))),
    }
    // Chunks sized for a long name below the directory; a longer one's are split again.
    let chunk = ctx.remote.write_chunk(&spec::join(&dir, &"n".repeat(512))).map_err(|e| Failure::new(e.message()))?;
    let (tx, mut rx) = mpsc::channel(4);
    // A thread of its own (not the runtime's blocking pool): when the copy fails, berth
    // exits without waiting for it to finish reading stdin.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(read_tar(std::io::stdin().lock(), chunk, tx));
    });
    let mut jobs = JoinSet::new();
    let result = async {
        while let Some(ev) = rx.recv().await {
            match ev {
                TarEvent::Dir { rel, .. } if rel.is_empty() => {}
                TarEvent::Dir { rel, mode } => make_dir(ctx, &spec::join(&dir, &rel), mode, true).await?,
                TarEvent::File { rel, mode, first, more } => {
                    let path = spec::join(&dir, &rel);
                    let room = ctx.remote.write_chunk(&path).map_err(|e| Failure::new(e.message()))?;
                    if !more && first.len() <= room {
                        // A whole file in one request: no need to wait for it.
                        while jobs.len() >= IN_FLIGHT {
                            join_one(&mut jobs).await?;
                        }
                        let (ctx, path) = (ctx.clone(), path.clone());
                        jobs.spawn(async move {
                            put(&ctx, &path, &first, At::Replace, Some(mode), true).await?;
                            ctx.tally.files.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        });
                        continue;
                    }
                    // The first request makes the file; the others may then go in any order.
                    let head = first.len().min(room);
                    put(ctx, &path, &first[..head], At::Replace, Some(mode), true).await?;
                    let mut offset = head as u64;
                    let rest = first[head..].to_vec();
                    let n = rest.len() as u64;
                    spawn_writes(ctx, &mut jobs, &path, rest, offset).await?;
                    offset += n;
                    if more {
                        loop {
                            match rx.recv().await {
                                Some(TarEvent::Chunk(data)) => {
                                    let n = data.len() as u64;
                                    spawn_writes(ctx, &mut jobs, &path, data, offset).await?;
                                    offset += n;
                                }
                                Some(TarEvent::EndFile) | None => break,
                                Some(_) => unreachable!("a file's chunks end with EndFile"),
                            }
                        }
                    }
                    ctx.tally.files.fetch_add(1, Ordering::Relaxed);
                }
                TarEvent::Chunk(_) | TarEvent::EndFile => unreachable!("chunks come after their file"),
                TarEvent::Skip { what, why } => ctx.skip(what, why),
            }
        }
        while !jobs.is_empty() {
            join_one(&mut jobs).await?;
        }
        Ok(())
    }
    .await;
    result?;
    drop(rx);
    let read = done_rx.await.map_err(|_| Failure::new("internal error: the tar reader stopped"))?;
    read.map_err(Failure::new)
}
