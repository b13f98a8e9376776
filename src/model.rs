//! Domain types: validated newtypes and the project lifecycle.
//!
//! Every value that crosses the socket is parsed into one of these types exactly once, in
//! `api/protocol.rs`; code downstream takes the validated types and never re-checks. This
//! module owns no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};
use time::OffsetDateTime;

use crate::snapshot::SnapshotId;

/// Why a value was refused. The message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid project name {0:?}: must match ^[a-z0-9][a-z0-9_.-]{{0,62}}$ and not be . or ..")]
    Name(String),
    #[error("{0}")]
    Param(String),
}

/// A project name: `^[a-z0-9][a-z0-9_.-]{0,62}$`, never `.` or `..`.
///
/// `parse` is the only constructor, so holding one proves the name is safe to use as a
/// path component and inside a container name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectName(String);

impl ProjectName {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let b = s.as_bytes();
        let first_ok = matches!(b.first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            b.iter().skip(1).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || b.len() > 63 || s == "." || s == ".." {
            return Err(ModelError::Name(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ProjectName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Environment variables: keys non-empty without `=` or NUL, values without NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvMap(BTreeMap<String, String>);

impl EnvMap {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, ModelError> {
        for (k, v) in &map {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ModelError::Param(format!("invalid env key {k:?}: must be non-empty without '=' or NUL")));
            }
            if v.contains('\0') {
                return Err(ModelError::Param(format!("invalid env value for {k:?}: contains NUL")));
            }
        }
        Ok(Self(map))
    }

    /// Parses `K=V` pairs as the CLI takes them.
    pub fn parse_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, ModelError> {
        let mut map = BTreeMap::new();
        for p in pairs {
            let (k, v) =
                p.split_once('=').ok_or_else(|| ModelError::Param(format!("invalid env {p:?}: expected K=V")))?;
            map.insert(k.to_string(), v.to_string());
        }
        Self::parse(map)
    }

    /// `self` with `over` layered on top: per-exec env wins over the project's env.
    pub fn merged(&self, over: &EnvMap) -> EnvMap {
        let mut m = self.0.clone();
        m.extend(over.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        EnvMap(m)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn to_docker(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// Port mappings: container port (`80`, `80/tcp`, `53/udp`) to host port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap(BTreeMap<String, u16>);

impl PortMap {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, ModelError> {
        let mut out = BTreeMap::new();
        for (container, host) in map {
            let (port, proto) = match container.split_once('/') {
                Some((p, proto)) => (p, proto),
                None => (container.as_str(), "tcp"),
            };
            if proto != "tcp" && proto != "udp" {
                return Err(ModelError::Param(format!("invalid port {container:?}: protocol must be tcp or udp")));
            }
            parse_port(port, &container)?;
            let host_port = parse_port(&host, &host)?;
            out.insert(format!("{port}/{proto}"), host_port);
        }
        Ok(Self(out))
    }

    /// Parses `HOST:CONTAINER` pairs as the CLI takes them.
    pub fn parse_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, ModelError> {
        let mut map = BTreeMap::new();
        for p in pairs {
            let (h, c) = p
                .split_once(':')
                .ok_or_else(|| ModelError::Param(format!("invalid port {p:?}: expected HOST:CONTAINER")))?;
            map.insert(c.to_string(), h.to_string());
        }
        Self::parse(map)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &u16)> {
        self.0.iter()
    }

    pub fn to_wire(&self) -> BTreeMap<String, String> {
        self.0.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
    }
}

fn parse_port(s: &str, whole: &str) -> Result<u16, ModelError> {
    match s.parse::<u16>() {
        Ok(p) if p >= 1 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(ModelError::Param(format!("invalid port {whole:?}: must be 1-65535"))),
    }
}

/// An image reference such as `node:20-slim` or `registry:5000/a/b@sha256:...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let ok_chars =
            s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@'));
        let first = s.as_bytes().first().copied().unwrap_or(b'-');
        if s.is_empty() || s.len() > 255 || !ok_chars || !first.is_ascii_alphanumeric() {
            return Err(ModelError::Param(format!("invalid image reference {s:?}")));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An exec working directory: absolute, no NUL, not under `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workdir(String);

impl Workdir {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let bad = |why: &str| Err(ModelError::Param(format!("invalid workdir {s:?}: {why}")));
        if !s.starts_with('/') {
            return bad("must be an absolute path");
        }
        if s.contains('\0') {
            return bad("contains NUL");
        }
        if s.len() > 4096 {
            return bad("longer than 4096 bytes");
        }
        // Resolve `.` and `..` lexically so `/x/../proc` is seen for what it is.
        let mut parts: Vec<&str> = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        if parts.first() == Some(&"proc") {
            return bad("must not be under /proc");
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a humantime duration within `[min, max]`, naming the value when it is refused.
pub fn parse_duration(what: &str, s: &str, min: Duration, max: Duration) -> Result<Duration, ModelError> {
    let d = humantime::parse_duration(s).map_err(|e| {
        ModelError::Param(format!("invalid {what} {s:?}: {e} (a duration such as \"30s\", \"10m\" or \"2h\")"))
    })?;
    if d < min || d > max {
        return Err(ModelError::Param(format!(
            "invalid {what} {s:?}: must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}

/// Where a project is in its lifecycle, as the registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// A create is in progress (or was interrupted by a crash).
    Creating,
    /// Registered with a workspace but no container (no engine answered).
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Status::Creating,
            "created" => Status::Created,
            "running" => Status::Running,
            "stopped" => Status::Stopped,
            _ => return None,
        })
    }

    /// A start (or an exec's implicit start) may proceed from here.
    pub fn can_start(self) -> bool {
        matches!(self, Status::Created | Status::Stopped | Status::Running)
    }

    /// A stop may proceed from here (stopping a stopped project is a no-op).
    pub fn can_stop(self) -> bool {
        matches!(self, Status::Running | Status::Stopped | Status::Created)
    }

    /// An exec may be served from here (starting or re-creating the container first if
    /// need be).
    pub fn can_exec(self) -> bool {
        matches!(self, Status::Created | Status::Stopped | Status::Running)
    }

    /// An exec may run without a lifecycle change first.
    pub fn can_exec_directly(self) -> bool {
        matches!(self, Status::Running)
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A registered project: the registry's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub name: ProjectName,
    pub description: String,
    pub image: ImageRef,
    pub created: OffsetDateTime,
    pub last_used: OffsetDateTime,
    pub status: Status,
    pub env: EnvMap,
    pub ports: PortMap,
    pub path: PathBuf,
    /// A multi-step change under way, journaled so that a crash part-way is finished on
    /// restart. Not part of the wire view.
    pub pending: Option<Pending>,
    pub limits: Limits,
}

#[cfg(test)]
impl Project {
    /// A plain project for unit tests: image `busybox`, no env, ports or limits.
    pub fn sample(name: &str, status: Status, at: OffsetDateTime) -> Project {
        Project {
            name: ProjectName::parse(name).expect("a valid test name"),
            description: String::new(),
            image: ImageRef::parse("busybox").expect("a valid image"),
            created: at,
            last_used: at,
            status,
            env: Default::default(),
            ports: Default::default(),
            path: PathBuf::new(),
            pending: None,
            limits: Default::default(),
        }
    }
}

/// A journaled multi-step change of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Delete, archiving the workspace (and the project's snapshots, unless kept).
    Archive { keep_snapshots: bool },
    /// Delete, removing the workspace (and the project's snapshots, unless kept).
    Purge { keep_snapshots: bool },
    /// Restore from a snapshot: the container is removed and the snapshot's workspace
    /// copied and swapped in; redone from the start (or the swap) after a crash.
    Restore(SnapshotId),
    /// The restored workspace is in place; what is left is the row and the container.
    Restored(SnapshotId),
    /// Made by a fork of this project (the source) that has not finished; a crash
    /// rolls it back (and thaws the source, which the fork may have left paused).
    Fork(ProjectName),
}

impl Pending {
    pub fn encode(&self) -> String {
        let keep = |k: bool| if k { ":keep-snapshots" } else { "" };
        match self {
            Pending::Archive { keep_snapshots } => format!("archive{}", keep(*keep_snapshots)),
            Pending::Purge { keep_snapshots } => format!("purge{}", keep(*keep_snapshots)),
            Pending::Restore(id) => format!("restore:{id}"),
            Pending::Restored(id) => format!("restored:{id}"),
            Pending::Fork(from) => format!("fork:{from}"),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "archive" => Pending::Archive { keep_snapshots: false },
            "purge" => Pending::Purge { keep_snapshots: false },
            "archive:keep-snapshots" => Pending::Archive { keep_snapshots: true },
            "purge:keep-snapshots" => Pending::Purge { keep_snapshots: true },
            _ => match s.split_once(':') {
                Some(("restore", id)) => Pending::Restore(SnapshotId::parse(id).ok()?),
                Some(("restored", id)) => Pending::Restored(SnapshotId::parse(id).ok()?),
                Some(("fork", from)) => Pending::Fork(ProjectName::parse(from).ok()?),
                _ => return None,
            },
        })
    }

    /// A journaled delete.
    pub fn is_delete(&self) -> bool {
        matches!(self, Pending::Archive { .. } | Pending::Purge { .. })
    }
}

impl Serialize for Project {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            name: &'a str,
            description: &'a str,
            image: &'a str,
            created: String,
            last_used: String,
            status: Status,
            env: &'a BTreeMap<String, String>,
            ports: BTreeMap<String, String>,
            path: String,
            limits: &'a Limits,
        }
        Wire {
            name: self.name.as_str(),
            description: &self.description,
            image: self.image.as_str(),
            created: rfc3339(self.created),
            last_used: rfc3339(self.last_used),
            status: self.status,
            env: self.env.as_map(),
            ports: self.ports.to_wire(),
            path: self.path.display().to_string(),
            limits: &self.limits,
        }
        .serialize(s)
    }
}

/// Formats a time as RFC 3339 in UTC.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// What a create asks for, validated.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub name: ProjectName,
    pub image: Option<ImageRef>,
    pub description: String,
    pub env: EnvMap,
    pub ports: PortMap,
    pub limits: Limits,
}

/// How much a container may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// All capabilities dropped but the few package installs need (see
    /// `runtime::docker::DEFAULT_CAPS`).
    Default,
    /// Every capability dropped, root filesystem read-only (only `/workspace` and a
    /// `/tmp` tmpfs are writable).
    Strict,
}

impl Profile {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "default" => Ok(Profile::Default),
            "strict" => Ok(Profile::Strict),
            _ => Err(ModelError::Param(format!("invalid profile {s:?}: must be \"default\" or \"strict\""))),
        }
    }
}

/// A project's own container settings; `None` means the daemon's `[container]` default.
/// Stored with the project and applied whenever its container is (re)made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// `Some(true)`: no network at all (`network = "none"`), for offline work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

impl Limits {
    /// Checks ranges: memory at least 6 MiB (the engine's floor) or 0 for none, pids
    /// 0 (none) or at least 8, cpus between 0 and 1024.
    pub fn check(&self) -> Result<(), ModelError> {
        if let Some(m) = self.memory {
            if m != 0 && m < 6 << 20 {
                return Err(ModelError::Param(format!("invalid memory {m}: at least 6MiB, or 0 for no limit")));
            }
        }
        if let Some(p) = self.pids_limit {
            if p != 0 && !(8..=1 << 22).contains(&p) {
                return Err(ModelError::Param(format!("invalid pids_limit {p}: 8 to 4194304, or 0 for no limit")));
            }
        }
        if let Some(c) = self.cpus {
            if !(0.0..=1024.0).contains(&c) || c.is_nan() {
                return Err(ModelError::Param(format!("invalid cpus {c}: 0 (no limit) to 1024")));
            }
        }
        Ok(())
    }
}

/// What the operator allows: the `[container]` defaults a project starts from, and the
/// ceilings and profile floor it can never get past. A request can tighten, never loosen.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPolicy {
    pub profile: Profile,
    pub memory: u64,
    pub pids_limit: i64,
    pub cpus: f64,
    /// 0 means no ceiling, for each of these.
    pub max_memory: u64,
    pub max_pids_limit: i64,
    pub max_cpus: f64,
}

impl Profile {
    /// How much a profile restricts: a request may only ask for at least the floor's.
    fn strictness(self) -> u8 {
        match self {
            Profile::Default => 0,
            Profile::Strict => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Strict => "strict",
        }
    }
}

impl ContainerPolicy {
    /// The effective limits of a project asking for `asked`: every field filled (defaults
    /// for what was not asked), each within the ceilings; refusals name the limit.
    pub fn resolve(&self, asked: &Limits) -> Result<Limits, ModelError> {
        asked.check()?;
        let refuse = |what: String| Err(ModelError::Param(what));
        let profile = asked.profile.unwrap_or(self.profile);
        if profile.strictness() < self.profile.strictness() {
            return refuse(format!(
                "profile {:?} is looser than the daemon's floor [container] profile = {:?}",
                profile.as_str(),
                self.profile.as_str()
            ));
        }
        let memory = asked.memory.unwrap_or(self.memory);
        if self.max_memory > 0 && (memory == 0 || memory > self.max_memory) {
            let asked = if memory == 0 { "0 (no limit)".to_string() } else { format_size(memory) };
            return refuse(format!(
                "memory {asked} is above the daemon's ceiling [container] max_memory = {}",
                format_size(self.max_memory)
            ));
        }
        let pids = asked.pids_limit.unwrap_or(self.pids_limit);
        if self.max_pids_limit > 0 && (pids == 0 || pids > self.max_pids_limit) {
            let asked = if pids == 0 { "0 (no limit)".to_string() } else { pids.to_string() };
            return refuse(format!(
                "pids_limit {asked} is above the daemon's ceiling [container] max_pids_limit = {}",
                self.max_pids_limit
            ));
        }
        let cpus = asked.cpus.unwrap_or(self.cpus);
        if self.max_cpus > 0.0 && (cpus == 0.0 || cpus > self.max_cpus) {
            let asked = if cpus == 0.0 { "0 (no limit)".to_string() } else { cpus.to_string() };
            return refuse(format!(
                "cpus {asked} is above the daemon's ceiling [container] max_cpus = {}",
                self.max_cpus
            ));
        }
        let resolved = Limits {
            profile: Some(profile),
            offline: Some(asked.offline.unwrap_or(false)),
            memory: Some(memory),
            pids_limit: Some(pids),
            cpus: Some(cpus),
        };
        resolved.check()?;
        Ok(resolved)
    }
}

/// A byte count in the largest binary unit that divides it ("4GiB", "1536MiB", "100B").
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// One exec as the activity log records it (`berth logs`). `project` is the key, not part
/// of the wire view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub project: ProjectName,
    pub at: OffsetDateTime,
    /// The caller's uid (from the socket's peer credentials).
    pub uid: u32,
    pub command: Vec<String>,
    /// `None` when the command never produced one (killed by a timeout, failed to start).
    pub exit_code: Option<i64>,
    pub duration_ms: u64,
    /// `"docker"` or `"local"`.
    pub runtime: String,
    pub timed_out: bool,
}

impl Serialize for Activity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            at: String,
            command: &'a [String],
            exit_code: Option<i64>,
            duration_ms: u64,
            uid: u32,
            runtime: &'a str,
            timed_out: bool,
        }
        Wire {
            at: rfc3339(self.at),
            command: &self.command,
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
            uid: self.uid,
            runtime: &self.runtime,
            timed_out: self.timed_out,
        }
        .serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_round_trip_and_bad_ones_do_not_parse() {
        let id = SnapshotId::parse("snap-0123456789ab").unwrap();
        let all = [
            Pending::Archive { keep_snapshots: false },
            Pending::Purge { keep_snapshots: false },
            Pending::Archive { keep_snapshots: true },
            Pending::Purge { keep_snapshots: true },
            Pending::Restore(id.clone()),
            Pending::Restored(id),
            Pending::Fork(ProjectName::parse("web").unwrap()),
        ];
        for p in all {
            assert_eq!(Pending::parse(&p.encode()), Some(p.clone()), "{}", p.encode());
        }
        // What berth before snapshots wrote still reads.
        assert_eq!(Pending::parse("archive"), Some(Pending::Archive { keep_snapshots: false }));
        for bad in ["", "fork", "restore:", "restore:snap-x", "fork:../x", "archive:keep", "melted"] {
            assert_eq!(Pending::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn project_names_table() {
        let good = ["a", "0", "my-project", "a.b_c-d", &"a".repeat(63)];
        for n in good {
            assert!(ProjectName::parse(n).is_ok(), "{n} should be accepted");
        }
        let too_long = "a".repeat(64);
        let bad =
            ["", ".", "..", "../x", "x/y", "-a", "_a", ".a", "A", "aB", "a b", "a\0", "é", &too_long, "a/../../etc"];
        for n in bad {
            let err = ProjectName::parse(n).unwrap_err();
            assert!(err.to_string().contains(&format!("{n:?}")), "error names the value: {err}");
        }
    }

    proptest::proptest! {
        /// Every string of the contract's pattern is accepted, as itself.
        #[test]
        fn names_of_the_pattern_are_accepted(s in "[a-z0-9][a-z0-9_.-]{0,62}") {
            let n = ProjectName::parse(&s).unwrap();
            proptest::prop_assert_eq!(n.as_str(), s.as_str());
        }

        /// Whatever is accepted is safe as one path component and a container name suffix.
        #[test]
        fn accepted_names_stay_one_path_component(s in "\\PC{0,80}") {
            if let Ok(n) = ProjectName::parse(&s) {
                let base = std::path::Path::new("/state/projects");
                let joined = base.join(n.as_str());
                proptest::prop_assert_eq!(joined.parent(), Some(base));
                proptest::prop_assert!(n.as_str() != "." && n.as_str() != "..");
                proptest::prop_assert!(n.as_str().len() <= 63);
                proptest::prop_assert!(n.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)));
            }
        }

        /// One character outside the alphabet anywhere makes a name invalid, and the
        /// error names it.
        #[test]
        fn a_foreign_character_is_refused(prefix in "[a-z0-9]{1,20}", bad in "[^a-z0-9_.-]", suffix in "[a-z0-9]{0,20}") {
            let s = format!("{prefix}{bad}{suffix}");
            let e = ProjectName::parse(&s).unwrap_err();
            let quoted = format!("{:?}", s);
            proptest::prop_assert!(e.to_string().contains(&quoted));
        }
    }

    #[test]
    fn env_table() {
        let bad = [("", "v"), ("A=B", "v"), ("A\0", "v"), ("A", "v\0")];
        for (k, v) in bad {
            let m = BTreeMap::from([(k.to_string(), v.to_string())]);
            assert!(EnvMap::parse(m).is_err(), "{k:?}={v:?} should be refused");
        }
        let base = EnvMap::parse_pairs(["A=1", "B=2"]).unwrap();
        let over = EnvMap::parse_pairs(["B=3", "C=x=y"]).unwrap();
        let m = base.merged(&over);
        assert_eq!(m.to_docker(), vec!["A=1", "B=3", "C=x=y"]);
    }

    #[test]
    fn ports_table() {
        for (c, h) in
            [("0", "80"), ("80", "0"), ("80", "65536"), ("80/sctp", "80"), ("x", "80"), ("80", "-1"), ("+80", "1")]
        {
            let m = BTreeMap::from([(c.to_string(), h.to_string())]);
            assert!(PortMap::parse(m).is_err(), "{c}->{h} should be refused");
        }
        let p = PortMap::parse_pairs(["8080:80", "5353:53/udp"]).unwrap();
        assert_eq!(p.to_wire().get("80/tcp").map(String::as_str), Some("8080"));
        assert_eq!(p.to_wire().get("53/udp").map(String::as_str), Some("5353"));
    }

    #[test]
    fn images_and_workdirs() {
        for ok in ["node:20-slim", "busybox", "reg:5000/a/b:c", "a@sha256:abc"] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a b", "a;rm", ":tag"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        for ok in ["/", "/workspace", "/workspace/a/b", "/tmp/procx"] {
            assert!(Workdir::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["rel", "", "/proc", "/proc/1", "//proc/self", "/./proc", "/a\0", "/x/../proc"] {
            assert!(Workdir::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_table() {
        use Status::*;
        // state x operation: (status, can_start, can_stop, can_exec, can_exec_directly)
        let table = [
            (Creating, false, false, false, false),
            (Created, true, true, true, false),
            (Running, true, true, true, true),
            (Stopped, true, true, true, false),
        ];
        for (s, start, stop, exec, direct) in table {
            assert_eq!(s.can_start(), start, "{s:?} start");
            assert_eq!(s.can_stop(), stop, "{s:?} stop");
            assert_eq!(s.can_exec(), exec, "{s:?} exec");
            assert_eq!(s.can_exec_directly(), direct, "{s:?} exec directly");
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }

    fn policy() -> ContainerPolicy {
        ContainerPolicy {
            profile: Profile::Default,
            memory: 1 << 30,
            pids_limit: 256,
            cpus: 1.0,
            max_memory: 4 << 30,
            max_pids_limit: 1024,
            max_cpus: 2.0,
        }
    }

    #[test]
    fn limits_can_tighten_but_never_loosen_table() {
        let p = policy();
        let ok = |l: Limits| p.resolve(&l).unwrap();
        let got = ok(Limits::default());
        assert_eq!(
            (got.profile, got.offline, got.memory, got.pids_limit, got.cpus),
            (Some(Profile::Default), Some(false), Some(1 << 30), Some(256), Some(1.0)),
            "the defaults fill what was not asked"
        );
        assert_eq!(ok(Limits { memory: Some(4 << 30), ..Default::default() }).memory, Some(4 << 30));
        assert_eq!(ok(Limits { profile: Some(Profile::Strict), ..Default::default() }).profile, Some(Profile::Strict));
        assert_eq!(ok(Limits { cpus: Some(1.5), ..Default::default() }).cpus, Some(1.5));
        // (asked, the words the refusal must contain)
        let bad = [
            (Limits { memory: Some(5 << 30), ..Default::default() }, "max_memory = 4GiB"),
            (Limits { memory: Some(0), ..Default::default() }, "0 (no limit)"),
            (Limits { pids_limit: Some(2048), ..Default::default() }, "max_pids_limit = 1024"),
            (Limits { pids_limit: Some(0), ..Default::default() }, "max_pids_limit"),
            (Limits { cpus: Some(3.0), ..Default::default() }, "max_cpus = 2"),
            (Limits { cpus: Some(0.0), ..Default::default() }, "max_cpus"),
        ];
        for (asked, words) in bad {
            let e = p.resolve(&asked).unwrap_err().to_string();
            assert!(e.contains(words), "{asked:?}: {e}");
        }
        let strict = ContainerPolicy { profile: Profile::Strict, ..policy() };
        let e = strict.resolve(&Limits { profile: Some(Profile::Default), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("[container] profile = \"strict\""), "{e}");
        // No ceiling: "no limit" is allowed.
        let open = ContainerPolicy { max_memory: 0, max_pids_limit: 0, max_cpus: 0.0, ..policy() };
        let got = open.resolve(&Limits { memory: Some(0), pids_limit: Some(0), ..Default::default() }).unwrap();
        assert_eq!((got.memory, got.pids_limit), (Some(0), Some(0)));
    }

    #[test]
    fn durations() {
        let min = Duration::from_millis(1);
        let max = Duration::from_secs(86400);
        assert_eq!(parse_duration("timeout", "30s", min, max).unwrap(), Duration::from_secs(30));
        for bad in ["", "x", "-1s", "0s", "2d"] {
            let e = parse_duration("timeout", bad, min, max).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
