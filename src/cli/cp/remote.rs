//! The container side of a copy: `fs.*` calls for one project over a `Mux`, typed.
//! Writes build their request line by hand: the data (base64) goes straight into the
//! line, never through a JSON value.

use std::borrow::Cow;
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::spec::{self, format_mode, parse_mode};
use super::Kind;
use crate::cli::mux::{parse_result, CallError, Mux};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One entry as `fs.stat` / `fs.list` give it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEntry {
    pub name: String,
    pub path: String,
    pub kind: Kind,
    pub size: u64,
    pub mode: u32,
    pub mtime: Option<SystemTime>,
    pub target: Option<String>,
}

#[derive(serde::Deserialize)]
struct WireEntry {
    #[serde(default)]
    name: String,
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    mtime: Option<String>,
    #[serde(default)]
    target: Option<String>,
}

impl From<WireEntry> for RemoteEntry {
    fn from(w: WireEntry) -> RemoteEntry {
        let kind = match w.kind.as_str() {
            "file" => Kind::File,
            "dir" => Kind::Dir,
            "symlink" => Kind::Symlink,
            _ => Kind::Other,
        };
        RemoteEntry {
            name: w.name,
            path: w.path,
            kind,
            size: w.size,
            mode: parse_mode(&w.mode).unwrap_or(0o644),
            mtime: w.mtime.as_deref().and_then(parse_time),
            target: w.target,
        }
    }
}

pub fn parse_time(s: &str) -> Option<SystemTime> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(t.unix_timestamp_nanos()).ok()?))
}

#[derive(serde::Deserialize)]
struct ReadResult<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(default, borrow)]
    encoding: Option<Cow<'a, str>>,
    size: u64,
    eof: bool,
}

/// What one `fs.read` brought.
pub struct Chunk {
    pub data: Vec<u8>,
    /// The whole file's size when it was read.
    pub size: u64,
    pub eof: bool,
}

/// Where a write goes.
#[derive(Debug, Clone, Copy)]
pub enum At {
    /// The file becomes the data (created or truncated).
    Replace,
    /// At this offset, the rest left as it is.
    Offset(u64),
}

pub struct Remote {
    pub mux: Mux,
    pub name: String,
    /// The daemon's `server.max_line`.
    pub max_line: usize,
    /// Bytes asked for per `fs.read`.
    pub read_chunk: u64,
}

/// JSON around a write's data beyond its params: the envelope, the largest id and
/// offset, `,"data":""`, the newline, and some slack.
const WRITE_ENVELOPE: usize = 128;

impl Remote {
    /// `fs.stat`; `None` when the path does not exist (the project is known to: see
    /// `cp::run`).
    pub async fn stat(&self, path: &str) -> Result<Option<RemoteEntry>, CallError> {
        match self.mux.call::<WireEntry>("fs.stat", &json!({"name": self.name, "path": path})).await {
            Ok(e) => Ok(Some(e.into())),
            Err(e) if e.kind() == Some("not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `fs.stat`, following symlinks (at most 40) as `open` would: for a destination.
    pub async fn stat_follow(&self, path: &str) -> Result<Option<RemoteEntry>, CallError> {
        let mut at = path.to_string();
        for _ in 0..40 {
            match self.stat(&at).await? {
                Some(e) if e.kind == Kind::Symlink => {
                    let target = e.target.clone().unwrap_or_default();
                    at = if target.starts_with('/') { target } else { spec::join(&spec::parent(&at), &target) };
                }
                other => return Ok(other),
            }
        }
        Ok(None)
    }

    pub async fn list(&self, path: &str) -> Result<Vec<RemoteEntry>, CallError> {
        let v: Vec<WireEntry> = self.mux.call("fs.list", &json!({"name": self.name, "path": path})).await?;
        Ok(v.into_iter().map(Into::into).collect())
    }

    pub async fn read(&self, path: &str, offset: u64, limit: u64) -> Result<Chunk, CallError> {
        let p = json!({"name": self.name, "path": path, "offset": offset, "limit": limit});
        let line = self.mux.call_raw("fs.read", &p).await?;
        let r: ReadResult = parse_result(&line)?;
        let data = match r.encoding.as_deref() {
            Some("base64") => B64
                .decode(r.data.as_bytes())
                .map_err(|e| CallError::Conn(format!("bad base64 in fs.read of {path}: {e}")))?,
            _ => r.data.into_owned().into_bytes(),
        };
        Ok(Chunk { data, size: r.size, eof: r.eof })
    }

    fn write_params(&self, path: &str, at: At, mode: Option<u32>, mkdirs: bool) -> Value {
        let mut p = json!({"name": self.name, "path": path, "encoding": "base64"});
        if let At::Offset(o) = at {
            p["offset"] = json!(o);
        }
        if let Some(m) = mode {
            p["mode"] = json!(format_mode(m));
        }
        if mkdirs {
            p["mkdirs"] = json!(true);
        }
        p
    }

    /// The most data one write to `path` can carry within the daemon's line limit.
    pub fn write_chunk(&self, path: &str) -> Result<usize, CallError> {
        let params = self.write_params(path, At::Offset(u64::MAX), Some(0o7777), true).to_string();
        spec::write_chunk(self.max_line, params.len() + WRITE_ENVELOPE).ok_or_else(|| {
            CallError::Conn(format!("the daemon's server.max_line ({} bytes) leaves no room for data", self.max_line))
        })
    }

    /// `fs.write` of `data` (which must fit `write_chunk`); the file's size after it.
    pub async fn write(
        &self,
        path: &str,
        data: &[u8],
        at: At,
        mode: Option<u32>,
        mkdirs: bool,
    ) -> Result<u64, CallError> {
        let params = self.write_params(path, at, mode, mkdirs).to_string();
        let head = params.strip_suffix('}').unwrap_or(&params);
        let line = self
            .mux
            .call_line(|id| {
                let mut s = String::with_capacity(head.len() + data.len() / 3 * 4 + 96);
                s.push_str(r#"{"jsonrpc":"2.0","id":"#);
                s.push_str(&id.to_string());
                s.push_str(r#","method":"fs.write","params":"#);
                s.push_str(head);
                s.push_str(r#","data":""#);
                B64.encode_string(data, &mut s);
                s.push_str("\"}}\n");
                s
            })
            .await?;
        #[derive(serde::Deserialize)]
        struct Written {
            size: u64,
        }
        Ok(parse_result::<Written>(&line)?.size)
    }

    pub async fn mkdir(&self, path: &str, mode: Option<u32>, parents: bool) -> Result<(), CallError> {
        let mut p = json!({"name": self.name, "path": path});
        if let Some(m) = mode {
            p["mode"] = json!(format_mode(m));
        }
        if parents {
            p["parents"] = json!(true);
        }
        self.mux.call::<Value>("fs.mkdir", &p).await.map(drop)
    }

    /// Every entry below the directory `root` (not `root` itself), each with its path
    /// relative to `root`, parents before children, sorted. Lists several directories at
    /// once.
    pub async fn walk(&self, root: &str) -> Result<Vec<(String, RemoteEntry)>, CallError> {
        let mut out = Vec::new();
        let mut pending = futures_util::stream::FuturesUnordered::new();
        let list = |rel: String| {
            let path = spec::join(root, &rel);
            async move { (rel, self.list(&path).await) }
        };
        pending.push(list(String::new()));
        use futures_util::StreamExt;
        let mut queued: Vec<String> = Vec::new();
        while let Some((rel, listed)) = pending.next().await {
            for e in listed? {
                let child = if rel.is_empty() { e.name.clone() } else { format!("{rel}/{}", e.name) };
                if e.kind == Kind::Dir {
                    queued.push(child.clone());
                }
                out.push((child, e));
            }
            while pending.len() < 8 {
                let Some(next) = queued.pop() else { break };
                pending.push(list(next));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_from_the_protocol() {
        let w: WireEntry = serde_json::from_value(json!({"name": "a", "path": "/workspace/a", "type": "symlink",
            "size": 3, "mode": "0777", "mtime": "2026-01-02T03:04:05.5Z", "target": "b"}))
        .unwrap();
        let e = RemoteEntry::from(w);
        assert_eq!((e.kind, e.mode, e.target.as_deref()), (Kind::Symlink, 0o777, Some("b")));
        let secs = e.mtime.unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(secs.as_millis(), 1_767_323_045_500);
    }
}
