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
        }
    }
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self { profile: Profile::Default, memory: Size(4 << 30), pids_limit: 1024, cpus: 0.0 }
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
        let cfg: Config = toml::from_str(text).map_err(|e| e.message().to_string())?;
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
        let limits = crate::model::Limits {
            memory: Some(self.container.memory.0),
            pids_limit: Some(self.container.pids_limit),
            cpus: Some(self.container.cpus),
            ..Default::default()
        };
        limits.check().map_err(|e| ConfigError::Invalid(format!("[container]: {e}")))?;
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

    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(&self.server.socket_mode, 8).ok().filter(|m| *m <= 0o777).ok_or_else(|| {
            ConfigError::Invalid(format!("server.socket_mode {:?} is not an octal mode", self.server.socket_mode))
        })
    }

    /// The engine address: config, else `$DOCKER_HOST`, else the local socket.
    pub fn docker_host(&self) -> String {
        self.docker
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }
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

/// A humantime duration in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// A duration or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptDur(pub Option<Duration>);

impl<'de> Deserialize<'de> for OptDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "off" {
            return Ok(OptDur(None));
        }
        humantime::parse_duration(&s)
            .map(|d| OptDur(Some(d)))
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} (or \"off\"): {e}")))
    }
}

/// A byte size such as `"16MiB"`, `"4GiB"`, `"512KiB"` or `"1000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
        };
        n.checked_mul(mult).map(Size).ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Size::parse(&s).map_err(serde::de::Error::custom)
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
        assert_eq!(c.docker.network, d.docker.network);
        assert_eq!(c.exec.default_timeout, d.exec.default_timeout);
        assert_eq!(c.janitor.reconcile_interval, d.janitor.reconcile_interval);
        assert_eq!(c.server.max_connections, d.server.max_connections);
        assert_eq!(c.container.memory, d.container.memory);
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
    fn sizes() {
        assert_eq!(Size::parse("16MiB").unwrap().0, 16 << 20);
        assert_eq!(Size::parse("1000").unwrap().0, 1000);
        assert_eq!(Size::parse("4GiB").unwrap().0, 4 << 30);
        assert!(Size::parse("-1").is_err());
        assert!(Size::parse("MiB").is_err());
    }
}
