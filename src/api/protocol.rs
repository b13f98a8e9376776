//! The wire: bytes to a typed `Request` in one place, and responses back to bytes.
//!
//! A line is decoded into a JSON-RPC envelope, its params into a struct that rejects
//! unknown fields, and those into validated types (`ProjectName`, `EnvMap`, ...). Every
//! param is checked here, before anything is looked up or done. Output bytes travel as
//! UTF-8 text when they are UTF-8 and as base64 (with an `encoding` field) when not.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{Config, Size};
use crate::error::{Error, ErrorKind};
use crate::files::{FsCall, FsPath, WriteAt};
use crate::model::{
    parse_duration, CreateSpec, EnvMap, ImageRef, Limits, ModelError, PortMap, Profile, ProjectName, Workdir,
};
use crate::runtime::{ExecOutcome, RuntimeKind, StreamKind};
use crate::snapshot::SnapshotId;

/// Largest `tail` a logs request may ask for.
pub const MAX_TAIL: u64 = 1_000_000;

#[derive(Debug, Clone)]
pub enum Request {
    Info,
    Create {
        spec: CreateSpec,
        or_get: bool,
    },
    Get(ProjectName),
    List,
    Start(ProjectName),
    Stop(ProjectName),
    Delete {
        name: ProjectName,
        purge: bool,
        keep_snapshots: bool,
    },
    /// `snapshot.*` and `project.fork`.
    Snapshot(SnapshotOp),
    Status(ProjectName),
    Logs {
        name: ProjectName,
        tail: Option<u64>,
    },
    Path(ProjectName),
    Exec(ExecRequest),
    Reconcile,
    ArchiveStale,
    /// `fs.*`: a file call in the project.
    Fs {
        name: ProjectName,
        call: FsCall,
    },
    /// `process.*`: work on the project's background processes.
    Process {
        name: ProjectName,
        op: ProcessOp,
    },
    /// `debug.panic`: served only with debug hooks on.
    DebugPanic(ProjectName),
    /// `debug.kill_supervisor` / `debug.wedge_supervisor`: served only with debug hooks on.
    DebugSupervisor(DebugSupervisor),
    /// `debug.retire`: a retirement of the project's actor that takes `delay`.
    DebugRetire {
        name: ProjectName,
        delay: Duration,
    },
    /// `debug.busy`: keeps the project's actor busy for `delay` (as a long pull would).
    DebugBusy {
        name: ProjectName,
        delay: Duration,
    },
}

/// One snapshot request, its params checked.
#[derive(Debug, Clone)]
pub enum SnapshotOp {
    Create { name: ProjectName, label: String },
    List(Option<ProjectName>),
    Restore { name: ProjectName, id: SnapshotId },
    Delete(SnapshotId),
    Fork { from: ProjectName, name: ProjectName, snapshot: Option<SnapshotId> },
}

fn parse_snapshot(m: &str, p: Value) -> Result<Request, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Create {
        name: String,
        label: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct List {
        name: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Restore {
        name: String,
        id: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Delete {
        id: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fork {
        from: String,
        name: String,
        snapshot: Option<String>,
    }
    let id = |s: &str| SnapshotId::parse(s).map_err(Error::from);
    let op = match m {
        "snapshot.create" => {
            let c: Create = params(m, p)?;
            let label = c.label.unwrap_or_default();
            crate::snapshot::check_label(&label)?;
            SnapshotOp::Create { name: name(&c.name)?, label }
        }
        "snapshot.list" => SnapshotOp::List(params::<List>(m, p)?.name.as_deref().map(name).transpose()?),
        "snapshot.restore" => {
            let r: Restore = params(m, p)?;
            SnapshotOp::Restore { name: name(&r.name)?, id: id(&r.id)? }
        }
        "snapshot.delete" => SnapshotOp::Delete(id(&params::<Delete>(m, p)?.id)?),
        "project.fork" => {
            let f: Fork = params(m, p)?;
            SnapshotOp::Fork {
                from: name(&f.from)?,
                name: name(&f.name)?,
                snapshot: f.snapshot.as_deref().map(id).transpose()?,
            }
        }
        other => return Err(Error::new(ErrorKind::MethodNotFound, format!("unknown method {other:?}"))),
    };
    Ok(Request::Snapshot(op))
}

/// One `process.*` request, its params checked.
#[derive(Debug, Clone)]
pub enum ProcessOp {
    Spawn { argv: Vec<String>, workdir: Option<Workdir>, env: EnvMap, stdin: bool },
    List,
    Output { id: u32, offsets: (u64, u64), follow: bool, limit: u32 },
    Wait { id: u32, timeout: Option<Duration> },
    Kill { id: u32, signal: i32, grace: Duration },
    Input { id: u32, data: Vec<u8>, close: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugSupervisor {
    Panic,
    Wedge,
}

/// A line for the client and the output budget it holds until written.
pub struct Outgoing {
    pub line: String,
    pub hold: crate::runtime::Reservation,
}

impl From<String> for Outgoing {
    fn from(line: String) -> Self {
        Outgoing { line, hold: Default::default() }
    }
}

impl Request {
    /// Whether the request changes anything (these are logged with the peer's identity).
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Request::Info
                | Request::Get(_)
                | Request::List
                | Request::Status(_)
                | Request::Logs { .. }
                | Request::Path(_)
                | Request::Snapshot(SnapshotOp::List(_))
                | Request::Fs { call: FsCall::Read { .. } | FsCall::List { .. } | FsCall::Stat { .. }, .. }
                | Request::Process { op: ProcessOp::List | ProcessOp::Output { .. } | ProcessOp::Wait { .. }, .. }
        )
    }

    pub fn project(&self) -> Option<&ProjectName> {
        match self {
            Request::Create { spec, .. } => Some(&spec.name),
            Request::Get(n)
            | Request::Start(n)
            | Request::Stop(n)
            | Request::Status(n)
            | Request::Path(n)
            | Request::DebugPanic(n)
            | Request::DebugRetire { name: n, .. }
            | Request::DebugBusy { name: n, .. } => Some(n),
            Request::Delete { name, .. }
            | Request::Logs { name, .. }
            | Request::Fs { name, .. }
            | Request::Process { name, .. } => Some(name),
            Request::Exec(e) => Some(&e.name),
            Request::Snapshot(op) => match op {
                SnapshotOp::Create { name, .. } | SnapshotOp::Restore { name, .. } | SnapshotOp::Fork { name, .. } => {
                    Some(name)
                }
                SnapshotOp::List(name) => name.as_ref(),
                SnapshotOp::Delete(_) => None,
            },
            Request::Info
            | Request::List
            | Request::Reconcile
            | Request::ArchiveStale
            | Request::DebugSupervisor(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub name: ProjectName,
    pub argv: Vec<String>,
    pub workdir: Option<Workdir>,
    pub env: EnvMap,
    pub timeout: Option<Duration>,
    pub stdin: Option<Bytes>,
    pub stream: bool,
    /// `path: "exec"`: skip the agent and use the engine's exec API (for comparison).
    pub engine_exec: bool,
    pub local: bool,
    pub tool: Option<String>,
}

/// A decoded line: the id to answer with (null when it could not be read) and the request
/// or the reason it was refused.
pub struct Decoded {
    pub id: Value,
    pub method: String,
    pub request: Result<Request, Error>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    image: Option<String>,
    description: Option<String>,
    env: Option<BTreeMap<String, String>>,
    ports: Option<BTreeMap<String, String>>,
    /// Extensions: this project's container settings over the daemon's defaults.
    profile: Option<String>,
    network: Option<String>,
    memory: Option<String>,
    pids_limit: Option<i64>,
    cpus: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    name: String,
    purge: Option<bool>,
    keep_snapshots: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsParams {
    name: String,
    tail: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecParams {
    name: String,
    command: Vec<String>,
    workdir: Option<String>,
    env: Option<BTreeMap<String, String>>,
    timeout: Option<String>,
    stdin: Option<String>,
    /// Binary stdin, base64-encoded; an extension beside the text `stdin`.
    stdin_base64: Option<String>,
    stream: Option<bool>,
    /// Extension: `"agent"` (the default: the agent where there is one) or `"exec"`.
    path: Option<String>,
    local: Option<bool>,
    tool: Option<String>,
}

fn params<T: DeserializeOwned>(method: &str, p: Value) -> Result<T, Error> {
    serde_json::from_value(p).map_err(|e| Error::invalid_params(format!("invalid params for {method}: {e}")))
}

fn name(s: &str) -> Result<ProjectName, Error> {
    ProjectName::parse(s).map_err(Error::from)
}

/// Decodes one line. Never fails: a bad line becomes a `Decoded` carrying the error.
pub fn decode(line: &[u8], config: &Config, debug_hooks: bool) -> Decoded {
    let bad = |id: Value, kind: ErrorKind, msg: String| Decoded {
        id,
        method: String::new(),
        request: Err(Error::new(kind, msg)),
    };
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return bad(Value::Null, ErrorKind::ParseError, format!("not valid JSON: {e}")),
    };
    let Value::Object(mut obj) = value else {
        return bad(Value::Null, ErrorKind::InvalidRequest, "a request must be a JSON object".into());
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    if !matches!(id, Value::String(_) | Value::Number(_)) {
        return bad(
            Value::Null,
            ErrorKind::InvalidRequest,
            format!("request id must be a string or a number, got {id}"),
        );
    }
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return bad(id, ErrorKind::InvalidRequest, "jsonrpc must be \"2.0\"".into());
    }
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "jsonrpc" | "method" | "params")) {
        let msg = format!("unknown request field {k:?}");
        return bad(id, ErrorKind::InvalidRequest, msg);
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        other => {
            let msg = format!("method must be a string, got {}", other.unwrap_or(Value::Null));
            return bad(id, ErrorKind::InvalidRequest, msg);
        }
    };
    let p = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            let msg = format!("params of {method} must be an object, got {other}");
            return Decoded { id, method, request: Err(Error::invalid_params(msg)) };
        }
    };
    let request = parse_request(&method, p, config, debug_hooks);
    Decoded { id, method, request }
}

fn parse_request(method: &str, p: Value, config: &Config, debug_hooks: bool) -> Result<Request, Error> {
    let m = method;
    Ok(match m {
        "daemon.info" => params::<NoParams>(m, p).map(|_| Request::Info)?,
        "project.list" => params::<NoParams>(m, p).map(|_| Request::List)?,
        "janitor.reconcile" => params::<NoParams>(m, p).map(|_| Request::Reconcile)?,
        "janitor.archive_stale" => params::<NoParams>(m, p).map(|_| Request::ArchiveStale)?,
        "project.create" | "project.get_or_create" => {
            let c: CreateParams = params(m, p)?;
            let limits = Limits {
                profile: c.profile.as_deref().map(Profile::parse).transpose()?,
                offline: match c.network.as_deref() {
                    None => None,
                    Some("none") => Some(true),
                    Some("default") => Some(false),
                    Some(other) => {
                        return Err(Error::invalid_params(format!(
                            "invalid network {other:?}: must be \"none\" or \"default\""
                        )))
                    }
                },
                memory: c
                    .memory
                    .as_deref()
                    .map(|m| {
                        Size::parse(m).map(|s| s.0).map_err(|e| {
                            Error::invalid_params(format!(
                                "invalid memory {m:?}: {e} (a size such as \"512m\" or \"2GiB\")"
                            ))
                        })
                    })
                    .transpose()?,
                pids_limit: c.pids_limit,
                cpus: c.cpus,
            };
            let limits = config.container_policy().resolve(&limits)?;
            let spec = CreateSpec {
                name: name(&c.name)?,
                image: c.image.as_deref().map(ImageRef::parse).transpose()?,
                description: c.description.unwrap_or_default(),
                env: EnvMap::parse(c.env.unwrap_or_default())?,
                ports: PortMap::parse(c.ports.unwrap_or_default())?,
                limits,
            };
            if spec.description.len() > 4096 {
                return Err(Error::invalid_params("description is longer than 4096 bytes"));
            }
            Request::Create { spec, or_get: m == "project.get_or_create" }
        }
        "project.get" => Request::Get(name(&params::<NameParams>(m, p)?.name)?),
        "project.start" => Request::Start(name(&params::<NameParams>(m, p)?.name)?),
        "project.stop" => Request::Stop(name(&params::<NameParams>(m, p)?.name)?),
        "project.status" => Request::Status(name(&params::<NameParams>(m, p)?.name)?),
        "project.path" => Request::Path(name(&params::<NameParams>(m, p)?.name)?),
        "project.delete" => {
            let d: DeleteParams = params(m, p)?;
            Request::Delete {
                name: name(&d.name)?,
                purge: d.purge.unwrap_or(false),
                keep_snapshots: d.keep_snapshots.unwrap_or(false),
            }
        }
        "project.logs" => {
            let l: LogsParams = params(m, p)?;
            if l.tail.is_some_and(|t| t > MAX_TAIL) {
                return Err(Error::invalid_params(format!("tail {} is larger than {MAX_TAIL}", l.tail.unwrap_or(0))));
            }
            Request::Logs { name: name(&l.name)?, tail: l.tail }
        }
        "project.exec" => Request::Exec(parse_exec(params(m, p)?, config)?),
        m if m.starts_with("fs.") => parse_fs(m, p, config)?,
        m if m.starts_with("snapshot.") || m == "project.fork" => parse_snapshot(m, p)?,
        m if m.starts_with("process.") => parse_process(m, p, config)?,
        "debug.panic" if debug_hooks => Request::DebugPanic(name(&params::<NameParams>(m, p)?.name)?),
        "debug.kill_supervisor" if debug_hooks => {
            params::<NoParams>(m, p).map(|_| Request::DebugSupervisor(DebugSupervisor::Panic))?
        }
        "debug.retire" | "debug.busy" if debug_hooks => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                name: String,
                delay_ms: u64,
            }
            let r: P = params(m, p)?;
            let (name, delay) = (name(&r.name)?, Duration::from_millis(r.delay_ms.min(60_000)));
            match m {
                "debug.retire" => Request::DebugRetire { name, delay },
                _ => Request::DebugBusy { name, delay },
            }
        }
        "debug.wedge_supervisor" if debug_hooks => {
            params::<NoParams>(m, p).map(|_| Request::DebugSupervisor(DebugSupervisor::Wedge))?
        }
        other => return Err(Error::new(ErrorKind::MethodNotFound, format!("unknown method {other:?}"))),
    })
}

fn fs_path(s: &str) -> Result<FsPath, Error> {
    FsPath::parse(s).map_err(Error::from)
}

/// `"0644"`, `"644"` or `"0o644"`: octal permission bits, at most `0o7777`.
fn parse_mode(s: &str) -> Result<u32, Error> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(Error::invalid_params(format!("invalid mode {s:?}: octal permission bits such as \"0644\""))),
    }
}

/// Text, or base64 with `encoding: "base64"`.
fn decode_data(what: &str, data: String, encoding: Option<&str>) -> Result<Vec<u8>, Error> {
    match encoding {
        None | Some("utf-8") | Some("utf8") => Ok(data.into_bytes()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| Error::invalid_params(format!("{what} is not valid base64: {e}"))),
        Some(other) => Err(Error::invalid_params(format!("invalid encoding {other:?}: \"utf-8\" or \"base64\""))),
    }
}

fn parse_fs(m: &str, p: Value, config: &Config) -> Result<Request, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Read {
        name: String,
        path: String,
        offset: Option<u64>,
        limit: Option<u64>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Write {
        name: String,
        path: String,
        data: String,
        encoding: Option<String>,
        append: Option<bool>,
        offset: Option<u64>,
        mode: Option<String>,
        mkdirs: Option<bool>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PathOnly {
        name: String,
        path: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Remove {
        name: String,
        path: String,
        recursive: Option<bool>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Mkdir {
        name: String,
        path: String,
        parents: Option<bool>,
        mode: Option<String>,
    }
    let max = config.exec.max_output.0;
    let (n, call) = match m {
        "fs.read" => {
            let r: Read = params(m, p)?;
            let limit = r.limit.unwrap_or(max);
            if limit > max {
                return Err(Error::invalid_params(format!(
                    "limit {limit} is larger than exec.max_output ({max} bytes): read large files in pieces with offset"
                )));
            }
            (r.name, FsCall::Read { path: fs_path(&r.path)?, offset: r.offset.unwrap_or(0), limit })
        }
        "fs.write" => {
            let w: Write = params(m, p)?;
            let at = match (w.append.unwrap_or(false), w.offset) {
                (true, Some(_)) => return Err(Error::invalid_params("give append or offset, not both")),
                (true, None) => WriteAt::Append,
                (false, Some(o)) => WriteAt::Offset(o),
                (false, None) => WriteAt::Replace,
            };
            let path = fs_path(&w.path)?;
            let mode = w.mode.as_deref().map(parse_mode).transpose()?;
            let data = decode_data("data", w.data, w.encoding.as_deref())?;
            (w.name, FsCall::Write { path, data, at, mode, mkdirs: w.mkdirs.unwrap_or(false) })
        }
        "fs.list" => {
            let l: PathOnly = params(m, p)?;
            (l.name, FsCall::List { path: fs_path(&l.path)? })
        }
        "fs.stat" => {
            let l: PathOnly = params(m, p)?;
            (l.name, FsCall::Stat { path: fs_path(&l.path)? })
        }
        "fs.remove" => {
            let r: Remove = params(m, p)?;
            (r.name, FsCall::Remove { path: fs_path(&r.path)?, recursive: r.recursive.unwrap_or(false) })
        }
        "fs.mkdir" => {
            let d: Mkdir = params(m, p)?;
            let mode = d.mode.as_deref().map(parse_mode).transpose()?;
            (d.name, FsCall::Mkdir { path: fs_path(&d.path)?, parents: d.parents.unwrap_or(false), mode })
        }
        other => return Err(Error::new(ErrorKind::MethodNotFound, format!("unknown method {other:?}"))),
    };
    Ok(Request::Fs { name: name(&n)?, call })
}

/// Signal names (`TERM`, `SIGTERM`, any case) or numbers 1–64.
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    let up = s.to_ascii_uppercase();
    let bare = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        n => match n.parse::<i32>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                return Err(Error::invalid_params(format!(
                    "invalid signal {s:?}: a name such as TERM, KILL, INT, HUP, or a number 1-64"
                )))
            }
        },
    };
    Ok(n)
}

/// The name of a signal number, for results (`"TERM"`), or its number.
pub fn signal_name(n: i32) -> String {
    let name = match n {
        libc::SIGHUP => "HUP",
        libc::SIGINT => "INT",
        libc::SIGQUIT => "QUIT",
        libc::SIGKILL => "KILL",
        libc::SIGUSR1 => "USR1",
        libc::SIGUSR2 => "USR2",
        libc::SIGTERM => "TERM",
        libc::SIGPIPE => "PIPE",
        libc::SIGALRM => "ALRM",
        libc::SIGSEGV => "SEGV",
        libc::SIGABRT => "ABRT",
        libc::SIGBUS => "BUS",
        libc::SIGFPE => "FPE",
        libc::SIGILL => "ILL",
        _ => return n.to_string(),
    };
    name.to_string()
}

/// Default grace between a terminating signal and the kill of what is left.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

fn parse_process(m: &str, p: Value, config: &Config) -> Result<Request, Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spawn {
        name: String,
        command: Vec<String>,
        workdir: Option<String>,
        env: Option<BTreeMap<String, String>>,
        stdin: Option<bool>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Output {
        name: String,
        id: u32,
        stdout_offset: Option<u64>,
        stderr_offset: Option<u64>,
        follow: Option<bool>,
        limit: Option<u32>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wait {
        name: String,
        id: u32,
        timeout: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Kill {
        name: String,
        id: u32,
        signal: Option<Value>,
        grace: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Input {
        name: String,
        id: u32,
        data: Option<String>,
        encoding: Option<String>,
        close: Option<bool>,
    }
    let max_wait = config.exec.max_timeout.0;
    let (n, op) = match m {
        "process.spawn" => {
            let s: Spawn = params(m, p)?;
            check_command(&s.command)?;
            let op = ProcessOp::Spawn {
                argv: s.command,
                workdir: s.workdir.as_deref().map(Workdir::parse).transpose().map_err(Error::from)?,
                env: EnvMap::parse(s.env.unwrap_or_default()).map_err(Error::from)?,
                stdin: s.stdin.unwrap_or(false),
            };
            (s.name, op)
        }
        "process.list" => (params::<NameParams>(m, p)?.name, ProcessOp::List),
        "process.output" => {
            let o: Output = params(m, p)?;
            let limit = o.limit.unwrap_or(berth_wire::MAX_DATA as u32);
            if limit == 0 || limit as usize > berth_wire::MAX_DATA {
                return Err(Error::invalid_params(format!(
                    "invalid limit {limit}: 1 to {} bytes per stream",
                    berth_wire::MAX_DATA
                )));
            }
            let offsets = (o.stdout_offset.unwrap_or(0), o.stderr_offset.unwrap_or(0));
            (o.name, ProcessOp::Output { id: o.id, offsets, follow: o.follow.unwrap_or(false), limit })
        }
        "process.wait" => {
            let w: Wait = params(m, p)?;
            let timeout =
                w.timeout.as_deref().map(|t| parse_duration("timeout", t, Duration::ZERO, max_wait)).transpose()?;
            (w.name, ProcessOp::Wait { id: w.id, timeout })
        }
        "process.kill" => {
            let k: Kill = params(m, p)?;
            let signal = match k.signal {
                None => libc::SIGTERM,
                Some(Value::String(s)) => parse_signal(&s)?,
                Some(Value::Number(n)) => parse_signal(&n.to_string())?,
                Some(other) => {
                    return Err(Error::invalid_params(format!("invalid signal {other}: a name or a number")))
                }
            };
            let grace = k
                .grace
                .as_deref()
                .map(|g| parse_duration("grace", g, Duration::ZERO, Duration::from_secs(300)))
                .transpose()?
                .unwrap_or(KILL_GRACE);
            (k.name, ProcessOp::Kill { id: k.id, signal, grace })
        }
        "process.input" => {
            let i: Input = params(m, p)?;
            let data = decode_data("data", i.data.unwrap_or_default(), i.encoding.as_deref())?;
            let close = i.close.unwrap_or(false);
            if data.is_empty() && !close {
                return Err(Error::invalid_params("process.input needs data, close, or both"));
            }
            (i.name, ProcessOp::Input { id: i.id, data, close })
        }
        other => return Err(Error::new(ErrorKind::MethodNotFound, format!("unknown method {other:?}"))),
    };
    Ok(Request::Process { name: name(&n)?, op })
}

/// A command as exec and spawn take it: a program and its arguments, no NUL.
fn check_command(command: &[String]) -> Result<(), Error> {
    if command.is_empty() {
        return Err(Error::invalid_params("command is empty: give the program and its arguments"));
    }
    if command[0].is_empty() {
        return Err(Error::invalid_params("command[0] is empty: name the program to run"));
    }
    if let Some(arg) = command.iter().find(|a| a.contains('\0')) {
        return Err(Error::invalid_params(format!("command argument {arg:?} contains NUL")));
    }
    Ok(())
}

fn parse_exec(e: ExecParams, config: &Config) -> Result<ExecRequest, Error> {
    let name = name(&e.name)?;
    check_command(&e.command)?;
    let timeout = e
        .timeout
        .as_deref()
        .map(|t| parse_duration("timeout", t, Duration::from_millis(1), config.exec.max_timeout.0))
        .transpose()?;
    let stdin = match (e.stdin, e.stdin_base64) {
        (Some(_), Some(_)) => return Err(Error::invalid_params("give stdin or stdin_base64, not both")),
        (Some(s), None) => Some(Bytes::from(s)),
        (None, Some(b)) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|err| Error::invalid_params(format!("stdin_base64 is not valid base64: {err}")))?,
        )),
        (None, None) => None,
    };
    if let Some(tool) = &e.tool {
        if tool.is_empty() || tool.len() > 128 || tool.contains('\0') {
            return Err(Error::invalid_params(format!("invalid tool {tool:?}: 1-128 bytes, no NUL")));
        }
    }
    Ok(ExecRequest {
        name,
        argv: e.command,
        workdir: e.workdir.as_deref().map(Workdir::parse).transpose().map_err(Error::from)?,
        env: EnvMap::parse(e.env.unwrap_or_default()).map_err(|err: ModelError| Error::from(err))?,
        timeout,
        stdin,
        stream: e.stream.unwrap_or(false),
        engine_exec: match e.path.as_deref() {
            None | Some("agent") => false,
            Some("exec") => true,
            Some(other) => {
                return Err(Error::invalid_params(format!("invalid path {other:?}: must be \"agent\" or \"exec\"")))
            }
        },
        local: e.local.unwrap_or(false),
        tool: e.tool,
    })
}

/// A success response line (without the newline).
pub fn response(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

/// An error response line (without the newline).
pub fn error_response(id: &Value, e: &Error) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": e.kind.code(), "message": e.message, "data": {"kind": e.kind.as_str()}},
    })
    .to_string()
}

/// Bytes as JSON text: the text itself when it is UTF-8 and its JSON escapes at most
/// double it (newlines, quotes), else base64 and its encoding. Control bytes such as NUL
/// take six bytes each as escapes; base64 never takes more than four per three.
pub fn encode_bytes(b: &[u8]) -> (String, Option<&'static str>) {
    match std::str::from_utf8(b) {
        Ok(s) if json_len(b) <= 2 * b.len() => (s.to_string(), None),
        _ => (base64::engine::general_purpose::STANDARD.encode(b), Some("base64")),
    }
}

/// The length of `b` (valid UTF-8) as a JSON string's contents.
fn json_len(b: &[u8]) -> usize {
    b.iter()
        .map(|&c| match c {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Splits a stream of chunks at UTF-8 boundaries so a character cut between two chunks
/// still travels as text. Holds back at most three bytes.
#[derive(Default)]
pub struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    /// The bytes ready to send now, with any incomplete trailing character held back.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        if let Err(e) = std::str::from_utf8(&buf) {
            if e.error_len().is_none() && buf.len() - e.valid_up_to() <= 3 {
                self.held = buf.split_off(e.valid_up_to());
            }
        }
        buf
    }

    /// Whatever is still held at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// An `exec.output` notification line for one chunk.
pub fn output_notification(id: &Value, stream: StreamKind, data: &[u8]) -> String {
    let (text, encoding) = encode_bytes(data);
    let mut params = json!({"id": id, "stream": stream, "data": text});
    if let Some(enc) = encoding {
        params["encoding"] = json!(enc);
    }
    json!({"jsonrpc": "2.0", "method": "exec.output", "params": params}).to_string()
}

/// One `fs.list` / `fs.stat` entry.
pub fn entry_json(e: &crate::files::FsEntry) -> Value {
    let kind = match e.kind {
        crate::files::EntryType::File => "file",
        crate::files::EntryType::Dir => "dir",
        crate::files::EntryType::Symlink => "symlink",
        crate::files::EntryType::Other => "other",
    };
    let mtime = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.mtime_ms) * 1_000_000)
        .map(crate::model::rfc3339)
        .unwrap_or_default();
    let mut v = json!({
        "name": e.name,
        "path": e.path,
        "type": kind,
        "size": e.size,
        "mode": format!("{:04o}", e.mode),
        "mtime": mtime,
    });
    if let Some(t) = &e.target {
        v["target"] = json!(t);
    }
    v
}

/// `fs.read`'s result.
pub fn read_json(path: &FsPath, data: &[u8], size: u64, eof: bool) -> Value {
    let (text, encoding) = encode_bytes(data);
    let mut v = json!({"path": path.as_str(), "size": size, "data": text, "eof": eof});
    if let Some(e) = encoding {
        v["encoding"] = json!(e);
    }
    v
}

fn millis(ms: u64) -> Value {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) if ms > 0 => json!(crate::model::rfc3339(t)),
        _ => Value::Null,
    }
}

/// A process's exit code as exec reports one: 128 + n for a signal.
pub fn process_exit_code(p: &berth_wire::ProcInfo) -> Value {
    match (p.running, p.signal) {
        (true, _) => Value::Null,
        (false, s) if s > 0 => json!(128 + s),
        (false, _) => json!(p.code),
    }
}

/// The Process object of the protocol.
pub fn process_json(project: &ProjectName, p: &berth_wire::ProcInfo) -> Value {
    json!({
        "id": p.proc,
        "project": project.as_str(),
        "command": p.argv.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>(),
        "running": p.running,
        "exit_code": process_exit_code(p),
        "signal": (!p.running && p.signal > 0).then(|| signal_name(p.signal)),
        "started": millis(p.started_ms),
        "ended": if p.running { Value::Null } else { millis(p.ended_ms) },
        "pid": p.pid,
    })
}

/// Cuts an incomplete UTF-8 character off the end of `data` (it comes whole next time),
/// unless that would leave nothing.
pub fn whole_chars(data: &mut Vec<u8>) {
    if let Err(e) = std::str::from_utf8(data) {
        let tail = data.len() - e.valid_up_to();
        if e.error_len().is_none() && tail <= 3 && e.valid_up_to() > 0 {
            data.truncate(e.valid_up_to());
        }
    }
}

/// A `process.output` notification line for one chunk of a followed process.
pub fn process_notification(id: &Value, stream: StreamKind, data: &[u8]) -> String {
    let (text, encoding) = encode_bytes(data);
    let mut params = json!({"id": id, "stream": stream, "data": text});
    if let Some(enc) = encoding {
        params["encoding"] = json!(enc);
    }
    json!({"jsonrpc": "2.0", "method": "process.output", "params": params}).to_string()
}

/// `process.output`'s result: the data, the offsets to ask for next, and the process's state.
pub fn process_output_json(
    out: &crate::runtime::agent::ProcOutput,
    stdout: &[u8],
    stderr: &[u8],
    dropped: u64,
) -> Value {
    let (o, oe) = encode_bytes(stdout);
    let (e, ee) = encode_bytes(stderr);
    let mut v = json!({
        "stdout": o,
        "stderr": e,
        "stdout_offset": out.stdout_offset + stdout.len() as u64,
        "stderr_offset": out.stderr_offset + stderr.len() as u64,
        "dropped": dropped,
        "running": out.info.running,
        "exit_code": process_exit_code(&out.info),
    });
    if let Some(x) = oe {
        v["stdout_encoding"] = json!(x);
    }
    if let Some(x) = ee {
        v["stderr_encoding"] = json!(x);
    }
    v
}

/// The ExecResult object of the protocol.
pub fn exec_result(o: &ExecOutcome, duration: Duration, runtime: RuntimeKind) -> Value {
    let (stdout, out_enc) = encode_bytes(&o.stdout);
    let (stderr, err_enc) = encode_bytes(&o.stderr);
    let mut v = json!({
        "exit_code": o.exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "timed_out": o.timed_out,
        "truncated": o.truncated,
        "duration_ms": duration.as_millis() as u64,
        "runtime": runtime.as_str(),
    });
    if !o.path.is_empty() {
        v["path"] = json!(o.path);
    }
    if let Some(why) = &o.exec_error {
        v["exec_error"] = json!(why);
    }
    if let Some(e) = out_enc {
        v["stdout_encoding"] = json!(e);
    }
    if let Some(e) = err_enc {
        v["stderr_encoding"] = json!(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(line: &str) -> ErrorKind {
        match decode(line.as_bytes(), &Config::default(), false).request {
            Ok(r) => panic!("{line} decoded to {r:?}"),
            Err(e) => e.kind,
        }
    }

    #[test]
    fn bad_requests_table() {
        use ErrorKind::*;
        let rows: &[(&str, ErrorKind)] = &[
            ("not json", ParseError),
            ("[1,2]", InvalidRequest),
            (r#"{"jsonrpc":"2.0","method":"daemon.info"}"#, InvalidRequest),
            (r#"{"jsonrpc":"1.0","id":1,"method":"daemon.info"}"#, InvalidRequest),
            (r#"{"jsonrpc":"2.0","id":{},"method":"daemon.info"}"#, InvalidRequest),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, InvalidRequest),
            (r#"{"jsonrpc":"2.0","id":1,"method":"daemon.info","extra":1}"#, InvalidRequest),
            (r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#, MethodNotFound),
            (r#"{"jsonrpc":"2.0","id":1,"method":"debug.panic","params":{"name":"a"}}"#, MethodNotFound),
            (r#"{"jsonrpc":"2.0","id":1,"method":"daemon.info","params":[]}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"daemon.info","params":{"x":1}}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.get","params":{}}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.get","params":{"name":5}}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.get","params":{"name":"../x"}}"#, InvalidName),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.get","params":{"name":"a","x":1}}"#, InvalidParams),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"project.create","params":{"name":"a","image":"a b"}}"#,
                InvalidParams,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"project.create","params":{"name":"a","env":{"A=B":"1"}}}"#,
                InvalidParams,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"project.create","params":{"name":"a","ports":{"80":"99999"}}}"#,
                InvalidParams,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.logs","params":{"name":"a","tail":-1}}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.logs","params":{"name":"a","tail":"5"}}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name":"a","command":[]}}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name":"a","command":[""]}}"#, InvalidParams),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name":"a","command":"ls"}}"#, InvalidParams),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name":"a","command":["ls"],"timeout":"soon"}}"#,
                InvalidParams,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name":"a","command":["ls"],"workdir":"rel"}}"#,
                InvalidParams,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name":"a","command":["ls"],"workdir":"/proc/1"}}"#,
                InvalidParams,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name":"A","command":["ls"]}}"#, InvalidName),
        ];
        for (line, want) in rows {
            assert_eq!(kind_of(line), *want, "{line}");
        }
    }

    #[test]
    fn good_exec_decodes() {
        let line = r#"{"jsonrpc":"2.0","id":"x","method":"project.exec","params":{"name":"a","command":["echo","hi"],"timeout":"2s","env":{"A":"1"},"stream":true,"stdin":"in"}}"#;
        let d = decode(line.as_bytes(), &Config::default(), false);
        assert_eq!(d.id, json!("x"));
        let Ok(Request::Exec(e)) = d.request else { panic!("not an exec") };
        assert_eq!(e.argv, ["echo", "hi"]);
        assert_eq!(e.timeout, Some(Duration::from_secs(2)));
        assert!(e.stream);
        assert_eq!(e.stdin.as_deref(), Some(&b"in"[..]));
    }

    #[test]
    fn utf8_carry_keeps_split_characters_as_text() {
        let snow = "☃".as_bytes();
        let mut c = Utf8Carry::default();
        let first = c.feed(&[b'a', snow[0]]);
        assert_eq!(first, b"a");
        let second = c.feed(&snow[1..]);
        assert_eq!(second, snow);
        assert!(c.finish().is_empty());
        let (text, enc) = encode_bytes(&[0xff, 0x00]);
        assert_eq!((text.as_str(), enc), ("/wA=", Some("base64")));
    }

    #[test]
    fn nul_heavy_output_travels_as_base64_not_six_times_larger() {
        let nuls = vec![0u8; 3000];
        let (text, enc) = encode_bytes(&nuls);
        assert_eq!(enc, Some("base64"));
        assert_eq!(text.len(), 4000);
        let line = output_notification(&json!(1), StreamKind::Stdout, &nuls);
        assert!(line.len() < 4200, "{} bytes for 3000 NULs", line.len());
        // Ordinary text, with newlines and quotes, stays text.
        let (text, enc) = encode_bytes(b"line \"one\"\nline two\n");
        assert_eq!((text.as_str(), enc), ("line \"one\"\nline two\n", None));
    }
}
