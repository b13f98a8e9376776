//! Files in a project (`fs.*`): the validated path, the calls and their results, shared
//! by the two places that carry them out — the container's berth-agent (through
//! `runtime::agent`) and, for projects that run on the host, `local`, which confines
//! every call to the workspace.

pub mod local;

use crate::model::ModelError;

/// Where relative paths start, in a container.
pub const WORKSPACE_IN_CONTAINER: &str = "/workspace";

/// A path as a request names it, made absolute: relative paths are taken from
/// `/workspace`. Never empty, without NUL, at most 4096 bytes. Not normalised: `..` and
/// symlinks are resolved where the call runs (inside the container, as its user would),
/// never on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsPath(String);

impl FsPath {
    pub fn parse(s: &str) -> Result<FsPath, ModelError> {
        let bad = |why: &str| Err(ModelError::Param(format!("invalid path {s:?}: {why}")));
        if s.is_empty() {
            return bad("empty");
        }
        if s.contains('\0') {
            return bad("contains NUL");
        }
        let full = match s.starts_with('/') {
            true => s.to_string(),
            false => format!("{WORKSPACE_IN_CONTAINER}/{s}"),
        };
        if full.len() > berth_wire::MAX_PATH {
            return bad("longer than 4096 bytes");
        }
        Ok(FsPath(full))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The error of a read that finds berthd's output budget (`server.max_buffered`) full.
pub fn budget_full(path: &FsPath) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::ErrorKind::Busy,
        format!(
            "reading {path}: berthd's output buffers (server.max_buffered) are full; try again, or read less at \
             a time with limit"
        ),
    )
}

/// Where a write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAt {
    /// The file becomes exactly the data (created or truncated).
    Replace,
    /// After the file's end.
    Append,
    /// At this offset, the rest of the file left as it is (an extension: lets a large
    /// file travel in chunks sent in parallel).
    Offset(u64),
}

/// One file call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsCall {
    Read { path: FsPath, offset: u64, limit: u64 },
    Write { path: FsPath, data: Vec<u8>, at: WriteAt, mode: Option<u32>, mkdirs: bool },
    List { path: FsPath },
    Stat { path: FsPath },
    Remove { path: FsPath, recursive: bool },
    Mkdir { path: FsPath, parents: bool, mode: Option<u32> },
}

impl FsCall {
    pub fn path(&self) -> &FsPath {
        match self {
            FsCall::Read { path, .. }
            | FsCall::Write { path, .. }
            | FsCall::List { path }
            | FsCall::Stat { path }
            | FsCall::Remove { path, .. }
            | FsCall::Mkdir { path, .. } => path,
        }
    }
}

/// What an entry is.
pub use berth_wire::EntryType;

/// One entry of `fs.list` / `fs.stat`, as `lstat` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEntry {
    pub name: String,
    /// Its full path (in the container's terms: `/workspace/...` for a host workspace).
    pub path: String,
    pub kind: EntryType,
    pub size: u64,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub mtime_ms: i64,
    /// Where a symlink points.
    pub target: Option<String>,
}

/// A file call's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsReply {
    /// `Read`: the bytes from the offset, the whole file's size, and whether they reach
    /// its end.
    Data { data: Vec<u8>, size: u64, eof: bool },
    /// `List` (sorted by name) and `Stat` (one entry).
    Entries(Vec<FsEntry>),
    /// `Write` (the file's size afterwards), `Remove` and `Mkdir` (0).
    Done { size: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_and_checked() {
        assert_eq!(FsPath::parse("a/b.txt").unwrap().as_str(), "/workspace/a/b.txt");
        assert_eq!(FsPath::parse("/etc/hosts").unwrap().as_str(), "/etc/hosts");
        assert_eq!(FsPath::parse("../x").unwrap().as_str(), "/workspace/../x");
        for bad in ["", "a\0b", &"a".repeat(4096)] {
            let e = FsPath::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid path"), "{e}");
        }
    }
}
