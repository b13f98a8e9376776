//! The daemon's configuration: the TOML file, its defaults, and where the socket and the
//! state dir live.
//!
//! Unknown keys are an error naming the key. Durations are humantime strings ("30s",
//! "30d") and sizes are strings with a binary unit ("16MiB"). This module only reads; it
//! never creates files or directories.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::model::Profile;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub docker: DockerConfig,
    pub exec: ExecConfig,
    pub janitor: JanitorConfig,
    pub routing: RoutingConfig,
    pub server: ServerConfig,
    pub container: ContainerConfig,
    pub local: LocalConfig,
    pub snapshots: SnapshotsConfig,
}

/// Snapshots (`snapshot.create`): how many each project keeps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// Taking a snapshot prunes the project's oldest beyond this many (and so does the
    /// janitor, after the setting is lowered). At least 1.
    pub keep: usize,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self { keep: 10 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// Engine address; `None` means `$DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    pub network: String,
    pub default_image: String,
    pub label_project: String,
    pub label_managed_by: String,
    /// Bound on every engine call except image pulls and execs.
    pub api_timeout: Dur,
    /// Bound on pulling a missing image.
    pub pull_timeout: Dur,
    /// Grace given to a container's processes on stop before they are killed.
    pub stop_timeout: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    pub default_timeout: Dur,
    /// Largest `timeout` a request may ask for.
    pub max_timeout: Dur,
    pub max_output: Size,
    pub auto_create: bool,
    /// Run berth-agent as PID 1 of new containers and send execs through it (about a
    /// millisecond each); off: every exec goes through the engine's exec API.
    pub agent: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JanitorConfig {
    pub reconcile_interval: Dur,
    pub archive_interval: Dur,
    pub stale_after: Dur,
    pub idle_stop_after: OptDur,
    /// A project actor not used this long is retired (its state lives in the registry and
    /// the engine; the next request spawns a new one). "off" keeps them all.
    pub retire_actors_after: OptDur,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub container_tools: Vec<String>,
}

/// Running commands on the host, in the project's workspace. Off by default: without it
/// nothing berth does runs on the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub enabled: bool,
    /// When berthd runs as root, local commands run as this user (never as root).
    pub user: String,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self { enabled: false, user: "nobody".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub socket_mode: String,
    pub socket_group: String,
    pub allowed_uids: Vec<u32>,
    pub max_line: Size,
    pub max_connections: usize,
    pub max_in_flight: usize,
    /// A connection with nothing in flight is closed this long after its last request
    /// line or its last request's end.
    pub idle_timeout: Dur,
    /// A write to a client that does not complete this long (the client stopped
    /// reading) drops the connection and cancels its execs.
    pub write_timeout: Dur,
    /// On SIGTERM, how long in-flight requests get to finish before they are failed.
    pub shutdown_grace: Dur,
    /// All execs' output held in memory at once (captured, or queued for a client),
    /// across every connection; beyond it output is dropped and `truncated` set.
    pub max_buffered: Size,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerConfig {
    /// `default` (capabilities dropped to what package installs need) or `strict` (all
    /// dropped, read-only root filesystem).
    pub profile: Profile,
    /// Memory limit per container; "0" for none.
    pub memory: Size,
    /// Process limit per container; 0 for none.
    pub pids_limit: i64,
    /// CPU limit in cores (e.g. 1.5); 0 for none.
    pub cpus: f64,
    /// Host address that published ports bind to.
    pub publish_address: std::net::IpAddr,
    /// Ceilings a project may ask up to; "0" / 0 means no ceiling.
    pub max_memory: Size,
    pub max_pids_limit: i64,
    pub max_cpus: f64,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: None,
            network: "vega-network".into(),
            default_image: "node:20-slim".into(),
            label_project: "vega.project".into(),
            label_managed_by: "vega.managed-by".into(),
            api_timeout: Dur(Duration::from_secs(30)),
            pull_timeout: Dur(Duration::from_secs(600)),
            stop_timeout: Dur(Duration::from_secs(5)),
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            default_timeout: Dur(Duration::from_secs(600)),
            max_timeout: Dur(Duration::from_secs(86400)),
            max_output: Size(16 << 20),
            auto_create: true,
            agent: true,
        }
    }
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self {
            reconcile_interval: Dur(Duration::from_secs(30)),
            archive_interval: Dur(Duration::from_secs(3600)),
            stale_after: Dur(Duration::from_secs(30 * 86400)),
            idle_stop_after: OptDur(None),
            retire_actors_after: OptDur(Some(Duration::from_secs(300))),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket_mode: "0660".into(),
            socket_group: String::new(),
            allowed_uids: Vec::new(),
            max_line: Size(1 << 20),
            max_connections: 1024,
            max_in_flight: 64,
            idle_timeout: Dur(Duration::from_secs(600)),
            write_timeout: Dur(Duration::from_secs(30)),
            shutdown_grace: Dur(Duration::from_secs(5)),
            max_buffered: Size(512 << 20),
        }
    }
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Default,
            memory: Size(4 << 30),
            pids_limit: 1024,
            cpus: 0.0,
            publish_address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            max_memory: Size(4 << 30),
            max_pids_limit: 1024,
            max_cpus: 0.0,
        }
    }
}

impl Config {
    /// Loads `--config FILE`, else `/etc/berth/berth.toml` if it exists, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => PathBuf::from(DEFAULT_CONFIG_PATH),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path, message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        cfg.check().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        crate::model::ImageRef::parse(&self.docker.default_image)
            .map_err(|e| ConfigError::Invalid(format!("docker.default_image: {e}")))?;
        let net = &self.docker.network;
        if net.is_empty() || net == "host" || net == "none" || net.starts_with("container:") {
            return Err(ConfigError::Invalid(format!(
                "docker.network {net:?} must name a bridge network (never host, none or container:)"
            )));
        }
        let c = &self.container;
        let ceilings = crate::model::Limits {
            memory: Some(c.max_memory.0),
            pids_limit: Some(c.max_pids_limit),
            cpus: Some(c.max_cpus),
            ..Default::default()
        };
        ceilings.check().map_err(|e| ConfigError::Invalid(format!("[container] max_*: {e}")))?;
        // The defaults themselves must be within the ceilings.
        self.container_policy()
            .resolve(&crate::model::Limits::default())
            .map_err(|e| ConfigError::Invalid(format!("[container] defaults: {e}")))?;
        if self.local.user.is_empty() {
            return Err(ConfigError::Invalid("local.user must name a user".into()));
        }
        if self.snapshots.keep == 0 {
            return Err(ConfigError::Invalid("snapshots.keep 0: must keep at least 1 snapshot per project".into()));
        }
        self.socket_mode()?;
        for (key, d) in [
            ("janitor.reconcile_interval", self.janitor.reconcile_interval.0),
            ("janitor.archive_interval", self.janitor.archive_interval.0),
            ("exec.default_timeout", self.exec.default_timeout.0),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!("{key} must be more than 0")));
            }
        }
        if self.server.max_connections == 0 || self.server.max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "server.max_connections and server.max_in_flight must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The `[container]` defaults, ceilings and profile floor.
    pub fn container_policy(&self) -> crate::model::ContainerPolicy {
        let c = &self.container;
        crate::model::ContainerPolicy {
            profile: c.profile,
            memory: c.memory.0,
            pids_limit: c.pids_limit,
            cpus: c.cpus,
            max_memory: c.max_memory.0,
            max_pids_limit: c.max_pids_limit,
            max_cpus: c.max_cpus,
        }
    }

    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(&self.server.socket_mode, 8).ok().filter(|m| *m <= 0o777).ok_or_else(|| {
            ConfigError::Invalid(format!("server.socket_mode {:?} is not an octal mode", self.server.socket_mode))
        })
    }

    /// The engine address: config, else `$DOCKER_HOST`, else the first engine socket
    /// (`engine_sockets`) this user can connect to, else the first there, else Docker's.
    pub fn docker_host(&self) -> String {
        self.docker
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .or_else(|| {
                let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
                // The first that this user can connect to (a plain user on a host with
                // Docker sees Docker's socket but may not use it), else the first there.
                let found: Vec<PathBuf> =
                    engine_sockets(runtime.as_deref()).into_iter().filter(|p| is_socket(p)).collect();
                found
                    .iter()
                    .find(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
                    .or(found.first())
                    .map(|p| format!("unix://{}", p.display()))
            })
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }
}

/// Where engines listen, in the order berth looks: Docker's socket, then rootless
/// Podman's (the user's `$XDG_RUNTIME_DIR/podman/podman.sock`), then rootful Podman's.
pub fn engine_sockets(xdg_runtime_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/var/run/docker.sock")];
    if let Some(dir) = xdg_runtime_dir.filter(|d| d.is_absolute()) {
        v.push(dir.join("podman/podman.sock"));
    }
    v.push(PathBuf::from("/run/podman/podman.sock"));
    v
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

/// The socket path: flag > `$BERTH_SOCKET` > config > default.
pub fn resolve_socket(flag: Option<&Path>, config: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("BERTH_SOCKET").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = config {
        return p.to_path_buf();
    }
    if is_root() {
        return PathBuf::from("/run/berth/berth.sock");
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("berth-{}", unsafe { libc::getuid() })));
    runtime.join("berth").join("berth.sock")
}

/// The state dir: flag > config > default.
pub fn resolve_state_dir(flag: Option<&Path>, config: Option<&Path>) -> PathBuf {
    if let Some(p) = flag.or(config) {
        return p.to_path_buf();
    }
    if is_root() {
        return PathBuf::from("/var/lib/berth");
    }
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".local/state"))
        .join("berth")
}

/// Examples shown when a duration is refused.
const DURATION_EXAMPLES: &str = r#"expected e.g. "30s", "10m", "2h""#;

/// A humantime duration in the config ("30s", "10m", "2h", "30d", "1h 30m").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|_| format!("invalid duration {s:?} ({DURATION_EXAMPLES})"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A duration or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptDur(pub Option<Duration>);

impl OptDur {
    pub fn parse(s: &str) -> Result<OptDur, String> {
        if s.trim() == "off" {
            return Ok(OptDur(None));
        }
        humantime::parse_duration(s.trim())
            .map(|d| OptDur(Some(d)))
            .map_err(|_| format!(r#"invalid duration {s:?} ({DURATION_EXAMPLES}, or "off")"#))
    }
}

impl<'de> Deserialize<'de> for OptDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OptDur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A byte size, in the Docker CLI's forms: `"512m"`, `"1g"`, `"1.5GiB"`, `"16MiB"`,
/// `"1000"`.
///
/// One convention for every unit: binary. `k`, `kb` and `kib` are 1024 bytes; `m`/`mb`/`mib`
/// 1024², `g`/`gb`/`gib` 1024³, `t`/`tb`/`tib` 1024⁴; `b` or no unit is bytes. Units are
/// case-insensitive and may follow the number after a space. A decimal number is allowed
/// (`"1.5g"`) and the result is rounded down to whole bytes. Negative numbers, an empty
/// string, `NaN`, exponents and unknown units are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Examples shown when a size is refused.
const SIZE_EXAMPLES: &str = r#"expected e.g. "512m", "1.5GiB", "16MiB", "1000""#;

/// Binary units, largest first: how `Display` picks the unit.
const SIZE_UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let bad = |why: &str| format!("invalid size {s:?}: {why} ({SIZE_EXAMPLES})");
        let t = s.trim();
        if t.is_empty() {
            return Err(bad("empty"));
        }
        let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let well_formed =
            !int.is_empty() && int.chars().all(|c| c.is_ascii_digit()) && frac.chars().all(|c| c.is_ascii_digit());
        if !well_formed || num.ends_with('.') {
            return Err(bad("not a non-negative number"));
        }
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(bad(&format!("unknown unit {:?}", unit.trim()))),
        };
        let too_large = || bad("too large");
        let whole = int.parse::<u64>().map_err(|_| too_large())?.checked_mul(mult).ok_or_else(too_large)?;
        // The fraction in integers, so "1.5g" is exact; digits past the 18th are ignored
        // (they weigh less than a millionth of a byte).
        let frac = &frac[..frac.len().min(18)];
        let part = if frac.is_empty() {
            0
        } else {
            let digits: u128 = frac.parse().map_err(|_| bad("not a non-negative number"))?;
            (digits * u128::from(mult) / 10u128.pow(frac.len() as u32)) as u64
        };
        whole.checked_add(part).map(Size).ok_or_else(too_large)
    }
}

/// The largest binary unit that shows the size exactly: `16MiB`, `1536MiB`, `1000`.
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match SIZE_UNITS.iter().find(|(_, m)| self.0 != 0 && self.0.is_multiple_of(*m)) {
            Some((unit, m)) => write!(f, "{}{unit}", self.0 / m),
            None => write!(f, "{}", self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Size::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A TOML error as one line that names the key: `exec.default_timeout: invalid duration
/// "soon" (...)`, or the line for a syntax error.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    // Without its input, the error's `Display` is the message and then "in `a.b`" naming
    // the key (with the input it shows a source snippet instead).
    let mut bare = e.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    let key = shown.strip_prefix(e.message()).and_then(|rest| rest.trim().strip_prefix("in `")?.strip_suffix('`'));
    match key {
        Some(k) if !k.is_empty() => format!("{k}: {}", e.message()),
        _ => match e.span() {
            Some(span) => {
                let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1;
                format!("line {line}: {}", e.message().trim_end())
            }
            None => e.message().trim_end().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::default();
        assert_eq!(c.docker.network, "vega-network");
        assert_eq!(c.docker.default_image, "node:20-slim");
        assert_eq!(c.docker.label_project, "vega.project");
        assert_eq!(c.docker.label_managed_by, "vega.managed-by");
        assert_eq!(c.janitor.stale_after.0, Duration::from_secs(30 * 86400));
        assert_eq!(c.exec.max_output.0, 16 << 20);
        assert_eq!(c.server.max_line.0, 1 << 20);
        assert_eq!(c.socket_mode().unwrap(), 0o660);
    }

    #[test]
    fn shipped_example_parses_to_the_defaults() {
        let text = include_str!("../config/berth.toml");
        let c = Config::parse(text).expect("config/berth.toml parses");
        let d = Config::default();
        // Every value, not a sample: the example documents the defaults exactly.
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
        for key in ["enabled", "user", "max_buffered", "max_memory", "max_pids_limit", "max_cpus", "publish_address"] {
            assert!(text.lines().any(|l| l.trim_start().starts_with(key)), "config/berth.toml lists {key}");
        }
    }

    #[test]
    fn defaults_past_the_ceilings_are_refused() {
        let e = Config::parse("[container]\nmemory = \"8GiB\"\n").unwrap_err();
        assert!(e.contains("max_memory"), "{e}");
        let e = Config::parse("[container]\nprofile = \"default\"\nmax_pids_limit = 100\n").unwrap_err();
        assert!(e.contains("max_pids_limit"), "{e}");
        let c = Config::parse("[container]\nmemory = \"0\"\nmax_memory = \"0\"\n").unwrap();
        assert_eq!(c.container.memory.0, 0, "no ceiling: no limit may be the default");
        let e = Config::parse("[container]\npublish_address = \"localhost\"\n").unwrap_err();
        assert!(e.contains("publish_address") || e.contains("address"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[exec]\ndefault_timeuot = \"1s\"\n").unwrap_err();
        assert!(e.contains("default_timeuot"), "{e}");
        let e = Config::parse("bogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("[exec]\ndefault_timeout = \"soon\"\n").unwrap_err();
        assert!(e.contains("soon"), "{e}");
        let e = Config::parse("[exec]\nmax_output = \"12XB\"\n").unwrap_err();
        assert!(e.contains("12XB"), "{e}");
        let e = Config::parse("[server]\nsocket_mode = \"999\"\n").unwrap_err();
        assert!(e.contains("999"), "{e}");
        let e = Config::parse("[docker]\nnetwork = \"host\"\n").unwrap_err();
        assert!(e.contains("\"host\""), "{e}");
        let e = Config::parse("[container]\nprofile = \"loose\"\n").unwrap_err();
        assert!(e.contains("loose"), "{e}");
        let e = Config::parse("[container]\ncpus = -1.0\n").unwrap_err();
        assert!(e.contains("-1"), "{e}");
        let c = Config::parse("[janitor]\nidle_stop_after = \"2h\"\n").unwrap();
        assert_eq!(c.janitor.idle_stop_after.0, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn sizes_take_the_docker_cli_forms_all_binary() {
        let table: &[(&str, u64)] = &[
            ("1000", 1000),
            ("0", 0),
            ("12b", 12),
            ("1k", 1 << 10),
            ("1KB", 1 << 10),
            ("1kib", 1 << 10),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("16MiB", 16 << 20),
            ("16mb", 16 << 20),
            ("1g", 1 << 30),
            ("4GiB", 4 << 30),
            ("1.5GiB", 3 << 29),
            ("1.5g", 3 << 29),
            ("2 GB", 2 << 30),
            ("1t", 1 << 40),
            ("1TiB", 1 << 40),
            ("0.5k", 512),
            // Rounded down to whole bytes.
            ("1.0001k", 1024),
            ("0.3b", 0),
        ];
        for (text, want) in table {
            assert_eq!(Size::parse(text), Ok(Size(*want)), "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused_naming_the_value() {
        for bad in [
            "",
            " ",
            "-1",
            "-1g",
            "MiB",
            "NaN",
            "nan",
            "inf",
            "1e3",
            "1.",
            ".5g",
            "1..5g",
            "1.5.2g",
            "12XB",
            "1pb",
            "1 2",
            "99999999999t",
        ] {
            let e = Size::parse(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(Size::parse("12XB").unwrap_err().contains("unknown unit \"XB\""));
    }

    #[test]
    fn sizes_display_in_the_largest_exact_binary_unit() {
        for (n, shown) in
            [(16 << 20, "16MiB"), (4 << 30, "4GiB"), (3 << 29, "1536MiB"), (1000, "1000"), (0, "0"), (1 << 40, "1TiB")]
        {
            assert_eq!(Size(n).to_string(), shown);
            assert_eq!(Size::parse(shown), Ok(Size(n)), "display parses back");
        }
    }

    #[test]
    fn bad_durations_and_sizes_name_the_key_and_show_an_example() {
        let table = [
            (
                "[exec]\ndefault_timeout = \"soon\"\n",
                "exec.default_timeout: invalid duration \"soon\" (expected e.g. \"30s\"",
            ),
            ("[janitor]\nidle_stop_after = \"never\"\n", "janitor.idle_stop_after: invalid duration \"never\""),
            ("[exec]\nmax_output = \"12XB\"\n", "exec.max_output: invalid size \"12XB\""),
            ("[server]\nmax_line = \"-1\"\n", "server.max_line: invalid size \"-1\""),
            ("[container]\nmemory = \"lots\"\n", "container.memory: invalid size \"lots\": "),
        ];
        for (text, want) in table {
            let e = Config::parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = Config::parse("[janitor]\nidle_stop_after = \"never\"\n").unwrap_err();
        assert!(e.contains("or \"off\""), "{e}");
        let e = Config::parse("[exec]\ndefault_timeuot = \"1s\"\n").unwrap_err();
        assert!(e.starts_with("exec: ") && e.contains("default_timeuot"), "{e}");
        let e = Config::parse("# berth\n[exec\n").unwrap_err();
        assert!(e.starts_with("line 2: ") && !e.contains('\n'), "a syntax error names its line: {e}");
    }
}
