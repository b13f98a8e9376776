//! The Docker runtime: one container per project, on the engine, through bollard.
//!
//! This is the only module that imports bollard. Containers are named `berth-<project>`,
//! carry the project and managed-by labels, join the labelled bridge network, mount the
//! workspace at `/workspace`, run an init as PID 1 and are kept alive by a shell loop that
//! works in any image with `/bin/sh` (a bare busybox one included). It never touches a
//! container without the managed-by label, nor one whose `/workspace` is not bound from
//! this daemon's state dir (another berth instance's). Exec, and killing what an exec
//! started, is in `exec.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::agent::{
    fits, AgentConn, AgentError, AgentExecError, Agents, AGENT_IN_CONTAINER, RUN_IN_CONTAINER, SOCKET_IN_CONTAINER,
};
use super::{
    Capture, ContainerInfo, ContainerSpec, EngineInfo, ExecOutcome, ExecSpec, Runtime, RuntimeError, RuntimeKind,
    SnapshotImage,
};
use crate::config::Config;
use crate::snapshot::{SnapshotId, SNAPSHOT_LABEL, STATE_LABEL};

mod exec;
use crate::model::{Profile, ProjectName};

/// Keeps the container alive in any image with a POSIX shell; exits at once on SIGTERM
/// so that stops are quick instead of waiting out the stop timeout.
const KEEPALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// Capabilities kept in the `default` profile: what package managers need (apt drops to
/// its own user, dpkg sets owners and modes, npm and pip write as other users) and killing
/// a command's own tree. Everything else Docker grants by default (NET_RAW, MKNOD,
/// AUDIT_WRITE, SYS_CHROOT, SETPCAP, SETFCAP) is dropped. `strict` keeps none.
pub const DEFAULT_CAPS: &[&str] = &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"];

#[derive(Debug, Clone)]
pub struct DockerSettings {
    pub host: String,
    pub network: String,
    pub label_project: String,
    pub label_managed_by: String,
    pub api_timeout: Duration,
    pub pull_timeout: Duration,
    pub stop_timeout: Duration,
    /// Host address published ports bind to (`[container] publish_address`).
    pub publish_address: String,
    /// The uid:gid that strict-profile containers run as: the workspace owner when that
    /// is not root (a non-root berthd, or `[local] enabled`), so that a container without
    /// capabilities can still write the workspace.
    pub strict_user: Option<String>,
    /// The `[container]` defaults; a project's `Limits` override them.
    pub profile: Profile,
    pub memory: u64,
    pub pids_limit: i64,
    pub cpus: f64,
    /// `<state_dir>/projects`: a labelled container is this daemon's only if its
    /// `/workspace` is bound from here, so daemons with other state dirs sharing the
    /// engine never touch each other's containers.
    pub projects_dir: PathBuf,
}

impl DockerSettings {
    pub fn from_config(c: &Config, state_dir: &Path, owner: (u32, u32)) -> Self {
        Self {
            publish_address: c.container.publish_address.to_string(),
            strict_user: (owner.0 != 0).then(|| format!("{}:{}", owner.0, owner.1)),
            host: c.docker_host(),
            network: c.docker.network.clone(),
            label_project: c.docker.label_project.clone(),
            label_managed_by: c.docker.label_managed_by.clone(),
            api_timeout: c.docker.api_timeout.0,
            pull_timeout: c.docker.pull_timeout.0,
            stop_timeout: c.docker.stop_timeout.0,
            profile: c.container.profile,
            memory: c.container.memory.0,
            pids_limit: c.container.pids_limit,
            cpus: c.container.cpus,
            projects_dir: state_dir.join("projects"),
        }
    }
}

/// The value of the managed-by label on every container berth makes.
pub const MANAGED_BY: &str = "berth";

pub struct DockerRuntime {
    settings: DockerSettings,
    client: Mutex<Option<Docker>>,
    network_ready: AtomicBool,
    /// berth-agent: new containers run it as PID 1 and execs go through it; `None` makes
    /// every container the old way (a shell keep-alive) and every exec an engine exec.
    agents: Option<Arc<Agents>>,
    /// Whether the engine runs rootless, once asked (cleared with the client).
    rootless: Mutex<Option<bool>>,
    /// The engine cannot freeze containers (rootless on cgroup v1).
    cannot_pause: AtomicBool,
}

/// How long a freshly started container's agent gets to answer.
const AGENT_START_WAIT: Duration = Duration::from_secs(3);

/// The label that marks a container made with berth-agent as its PID 1.
pub const AGENT_LABEL: &str = "berth.agent";

impl DockerRuntime {
    pub fn new(settings: DockerSettings, agents: Option<Arc<Agents>>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            client: Mutex::new(None),
            network_ready: AtomicBool::new(false),
            agents,
            rootless: Mutex::new(None),
            cannot_pause: AtomicBool::new(false),
        })
    }

    /// The connection to the project's agent, when its container runs one that answers
    /// as its PID 1.
    async fn agent_for(&self, project: &ProjectName) -> Result<Arc<AgentConn>, AgentError> {
        let Some(agents) = &self.agents else {
            return Err(AgentError::Absent("berthd runs with [exec] agent = false".into()));
        };
        if let Some(c) = agents.cached(project) {
            return Ok(c);
        }
        let docker = self.client().await.map_err(|e| AgentError::Unavailable(e.to_string()))?;
        let info = self.inspect_raw(&docker, project).await.map_err(|e| AgentError::Unavailable(e.to_string()))?;
        match info {
            Some(ContainerInfo { running: true, agent: true, pid: Some(pid), .. }) => {
                agents.connect(project, pid).await
            }
            Some(ContainerInfo { agent: false, .. }) => {
                Err(AgentError::Absent(format!("the container of project {project} was made without berth-agent")))
            }
            _ => Err(AgentError::Unavailable(format!("the container of project {project} is not running"))),
        }
    }

    /// The state dir this daemon serves, as the snapshot images' label names it.
    fn state_dir(&self) -> String {
        self.settings.projects_dir.parent().unwrap_or(&self.settings.projects_dir).display().to_string()
    }

    pub fn container_name(project: &ProjectName) -> String {
        format!("berth-{project}")
    }

    /// The client, connecting (and negotiating the API version) on first use and again
    /// after the engine went away.
    async fn client(&self) -> Result<Docker, RuntimeError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let host = &self.settings.host;
        let secs = self.settings.api_timeout.as_secs().max(1);
        let docker = if host.starts_with("unix://") || host.starts_with('/') {
            Docker::connect_with_unix(host, secs, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(host, secs, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|e| RuntimeError::Unavailable(format!("{host}: {e}")))?;
        let docker = tokio::time::timeout(self.settings.api_timeout, docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Timeout(format!("{host}: no answer within {:?}", self.settings.api_timeout)))?
            .map_err(|e| RuntimeError::Unavailable(format!("{host}: {e}")))?;
        *guard = Some(docker.clone());
        Ok(docker)
    }

    /// Maps a bollard error; connection-level failures drop the client so the next call
    /// reconnects (and renegotiates) instead of reusing a dead one.
    async fn fail(&self, e: BollardError) -> RuntimeError {
        match e {
            BollardError::DockerResponseServerError { status_code: 404, message } => RuntimeError::NotFound(message),
            BollardError::DockerResponseServerError { status_code: 409, message } => RuntimeError::Conflict(message),
            BollardError::DockerResponseServerError { status_code, message } => {
                RuntimeError::Engine(format!("{message} (HTTP {status_code})"))
            }
            BollardError::DockerStreamError { error } => RuntimeError::Engine(error),
            // An answer berth could not read is the engine's answer, not its absence (Podman
            // lists a container it is stopping as `stopped`, which Docker's schema lacks).
            e @ (BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. }) => {
                RuntimeError::Unreadable(format!("{}: {e}", self.settings.host))
            }
            BollardError::RequestTimeoutError => {
                *self.client.lock().await = None;
                RuntimeError::Timeout(format!(
                    "{}: no answer within {:?}",
                    self.settings.host, self.settings.api_timeout
                ))
            }
            other => {
                *self.client.lock().await = None;
                *self.rootless.lock().await = None;
                self.network_ready.store(false, Ordering::Relaxed);
                RuntimeError::Unavailable(format!("{}: {other}", self.settings.host))
            }
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, BollardError>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(self.settings.api_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => {
                // A slow engine is not an absent one: a timeout never marks it unavailable.
                *self.client.lock().await = None;
                Err(RuntimeError::Timeout(format!(
                    "{what}: no answer from {} within {:?}",
                    self.settings.host, self.settings.api_timeout
                )))
            }
        }
    }

    /// Whether a listed container's `/workspace` is bound from this daemon's state dir
    /// for the project its label names.
    fn owns(&self, c: &bollard::models::ContainerSummary) -> bool {
        let Some(project) = c.labels.as_ref().and_then(|l| l.get(&self.settings.label_project)) else {
            return false;
        };
        let ours = self.settings.projects_dir.join(project);
        c.mounts.iter().flatten().any(|m| {
            m.destination.as_deref() == Some("/workspace") && m.source.as_deref().map(Path::new) == Some(ours.as_path())
        })
    }

    fn is_not_found(e: &BollardError) -> bool {
        matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
    }

    fn is_conflict(e: &BollardError) -> bool {
        matches!(e, BollardError::DockerResponseServerError { status_code: 409, .. })
    }

    fn is_not_modified(e: &BollardError) -> bool {
        matches!(e, BollardError::DockerResponseServerError { status_code: 304, .. })
    }

    async fn ensure_network(&self, docker: &Docker) -> Result<(), RuntimeError> {
        if self.network_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let name = &self.settings.network;
        match tokio::time::timeout(self.settings.api_timeout, docker.inspect_network(name, None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if Self::is_not_found(&e) => {
                let req = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(self.settings.label_managed_by.clone(), MANAGED_BY.into())])),
                    ..Default::default()
                };
                match tokio::time::timeout(self.settings.api_timeout, docker.create_network(req)).await {
                    Ok(Ok(_)) => {
                        tracing::info!(network = %name, "created network");
                        // Engines before API 1.44 let two racing creates make two networks
                        // of one name; every racer keeps the same one and removes the rest.
                        self.dedupe_network(docker).await?;
                    }
                    Ok(Err(e)) if Self::is_conflict(&e) => {}
                    Ok(Err(e)) => return Err(self.fail(e).await),
                    Err(_) => {
                        return Err(RuntimeError::Timeout(format!(
                            "creating network {name}: no answer within {:?}",
                            self.settings.api_timeout
                        )))
                    }
                }
            }
            // Ambiguous: two networks of that name (a race of older engines).
            Ok(Err(BollardError::DockerResponseServerError { status_code: 400 | 409 | 500, .. })) => {
                self.dedupe_network(docker).await?
            }
            Ok(Err(e)) => return Err(self.fail(e).await),
            Err(_) => {
                return Err(RuntimeError::Timeout(format!(
                    "inspecting network {name}: no answer within {:?}",
                    self.settings.api_timeout
                )))
            }
        }
        self.network_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps the oldest of several networks named `[docker] network` and removes the
    /// others that berth made (labelled). Racing daemons all pick the same one.
    async fn dedupe_network(&self, docker: &Docker) -> Result<(), RuntimeError> {
        let name = &self.settings.network;
        let filters = HashMap::from([("name", vec![name.as_str()])]);
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::new().filters(&filters).build();
        let mut same: Vec<_> = self
            .bounded("listing networks", docker.list_networks(Some(opts)))
            .await?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name.as_str()))
            .collect();
        if same.len() < 2 {
            return Ok(());
        }
        same.sort_by_key(|n| (n.created.clone(), n.id.clone()));
        for extra in same.iter().skip(1) {
            let ours = extra.labels.as_ref().and_then(|l| l.get(&self.settings.label_managed_by)).map(String::as_str)
                == Some(MANAGED_BY);
            if let (true, Some(id)) = (ours, extra.id.as_deref()) {
                tracing::warn!(network = %name, %id, "removing a duplicate network made by a racing create");
                // Another racer may have removed it first.
                let _ = tokio::time::timeout(self.settings.api_timeout, docker.remove_network(id)).await;
            }
        }
        Ok(())
    }

    /// Makes sure the image is present, pulling it if not; a failed pull names the image
    /// and the engine's reason.
    async fn ensure_image(&self, docker: &Docker, image: &str) -> Result<(), RuntimeError> {
        match tokio::time::timeout(self.settings.api_timeout, docker.inspect_image(image)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if Self::is_not_found(&e) => {}
            Ok(Err(e)) => return Err(self.fail(e).await),
            Err(_) => {
                return Err(RuntimeError::Timeout(format!(
                    "inspecting image {image}: no answer within {:?}",
                    self.settings.api_timeout
                )))
            }
        }
        let (repo, tag) = split_image(image);
        tracing::info!(%image, "pulling image");
        let opts = CreateImageOptionsBuilder::new().from_image(repo).tag(tag).build();
        let pull = async {
            let mut stream = docker.create_image(Some(opts), None, None);
            while let Some(item) = stream.next().await {
                item?;
            }
            Ok::<(), BollardError>(())
        };
        match tokio::time::timeout(self.settings.pull_timeout, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::Image {
                image: image.into(),
                why: format!("not present and the pull failed: {}", describe(&e)),
            }),
            Err(_) => Err(RuntimeError::Image {
                image: image.into(),
                why: format!("not present and the pull did not finish within {:?}", self.settings.pull_timeout),
            }),
        }
    }

    /// The container's settings; `agent`: with berth-agent (binary and run dir under
    /// `/.berth/`) as PID 1, else Docker's init and the shell keep-alive.
    fn create_body(&self, spec: &ContainerSpec<'_>, agent: Option<(&Path, &Path)>) -> ContainerCreateBody {
        let s = &self.settings;
        let mut labels = HashMap::from([
            (s.label_project.clone(), spec.project.to_string()),
            (s.label_managed_by.clone(), MANAGED_BY.to_string()),
            // Carried into snapshot images by a commit (see `commit`).
            (STATE_LABEL.to_string(), self.state_dir()),
            // Explicit either way: an image committed from an agent container says "1".
            (AGENT_LABEL.to_string(), "0".to_string()),
        ]);
        // The workspace is the only mount besides berth's own, which live under /.berth/;
        // the engine's socket never is.
        let mut binds = vec![format!("{}:/workspace:rw", spec.workspace.display())];
        let (init, entrypoint) = match agent {
            Some((binary, run)) => {
                labels.insert(AGENT_LABEL.into(), "1".into());
                binds.push(format!("{}:{AGENT_IN_CONTAINER}:ro", binary.display()));
                binds.push(format!("{}:{RUN_IN_CONTAINER}:rw", run.display()));
                (false, vec![AGENT_IN_CONTAINER.to_string(), "--socket".into(), SOCKET_IN_CONTAINER.into()])
            }
            None => (true, vec!["/bin/sh".into(), "-c".into(), KEEPALIVE.into()]),
        };
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for (container, host) in spec.ports.iter() {
            exposed.push(container.clone());
            port_bindings.insert(
                container.clone(),
                Some(vec![PortBinding { host_ip: Some(s.publish_address.clone()), host_port: Some(host.to_string()) }]),
            );
        }
        let l = spec.limits;
        let profile = l.profile.unwrap_or(s.profile);
        let memory = l.memory.unwrap_or(s.memory);
        let pids = l.pids_limit.unwrap_or(s.pids_limit);
        let cpus = l.cpus.unwrap_or(s.cpus);
        let offline = l.offline.unwrap_or(false);
        let (cap_add, readonly, tmpfs) = match profile {
            Profile::Default => (DEFAULT_CAPS.iter().map(|c| c.to_string()).collect(), false, None),
            Profile::Strict => {
                (Vec::new(), true, Some(HashMap::from([("/tmp".to_string(), "rw,nosuid,nodev,size=256m".to_string())])))
            }
        };
        let host_config = HostConfig {
            init: Some(init),
            network_mode: Some(if offline { "none".into() } else { s.network.clone() }),
            binds: Some(binds),
            port_bindings: if offline { None } else { Some(port_bindings) },
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(cap_add),
            readonly_rootfs: Some(readonly),
            tmpfs,
            memory: (memory > 0).then_some(memory as i64),
            // Without a swap limit equal to memory, the container could swap past it.
            memory_swap: (memory > 0).then_some(memory as i64),
            pids_limit: (pids > 0).then_some(pids),
            nano_cpus: (cpus > 0.0).then_some((cpus * 1e9) as i64),
            // Containers come back after an engine restart, unless berth stopped them.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        // On a rootless engine the container's root is the unprivileged user who owns the
        // workspace (and has no capabilities on the host): strict containers run as it.
        let rootless = self.rootless.try_lock().ok().and_then(|r| *r).unwrap_or(false);
        ContainerCreateBody {
            user: match (profile, rootless) {
                (Profile::Strict, true) => Some("0:0".into()),
                (Profile::Strict, false) => s.strict_user.clone(),
                (Profile::Default, _) => None,
            },
            image: Some(spec.image.to_string()),
            entrypoint: Some(entrypoint),
            cmd: Some(vec![]),
            env: Some(spec.env.to_docker()),
            labels: Some(labels),
            working_dir: Some("/workspace".into()),
            exposed_ports: if offline { None } else { Some(exposed) },
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    async fn inspect_raw(&self, docker: &Docker, project: &ProjectName) -> Result<Option<ContainerInfo>, RuntimeError> {
        // As for `list`: Podman's passing `stopped` state does not parse; ask again.
        let mut tries = 0;
        loop {
            match self.inspect_once(docker, project).await {
                Err(RuntimeError::Unreadable(_)) if tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn inspect_once(
        &self,
        docker: &Docker,
        project: &ProjectName,
    ) -> Result<Option<ContainerInfo>, RuntimeError> {
        let name = Self::container_name(project);
        match tokio::time::timeout(self.settings.api_timeout, docker.inspect_container(&name, None)).await {
            Ok(Ok(c)) => {
                let config = c.config.unwrap_or_default();
                let labels = config.labels.unwrap_or_default();
                if labels.get(&self.settings.label_managed_by).map(String::as_str) != Some(MANAGED_BY) {
                    // Someone else's container holds our name: never touch it.
                    return Err(RuntimeError::Engine(format!(
                        "container {name} exists but is not managed by berth; remove or rename it"
                    )));
                }
                let source = c
                    .mounts
                    .unwrap_or_default()
                    .into_iter()
                    .find(|m| m.destination.as_deref() == Some("/workspace"))
                    .and_then(|m| m.source);
                let ours = self.settings.projects_dir.join(project.as_str());
                if source.as_deref().map(Path::new) != Some(ours.as_path()) {
                    return Err(RuntimeError::Engine(format!(
                        "container {name} belongs to another berth instance (workspace {}); not touching it",
                        source.unwrap_or_else(|| "none".into())
                    )));
                }
                let state = c.state.unwrap_or_default();
                Ok(Some(ContainerInfo {
                    container_id: c.id.unwrap_or_default(),
                    project: labels.get(&self.settings.label_project).cloned(),
                    // A container the restart policy keeps restarting is not running.
                    running: state.running.unwrap_or(false) && !state.restarting.unwrap_or(false),
                    image: config.image.unwrap_or_default(),
                    created: c.created.map(|d| d.to_string()).unwrap_or_default(),
                    pid: state.pid.filter(|p| *p > 0).map(|p| p as u32),
                    agent: labels.get(AGENT_LABEL).map(String::as_str) == Some("1"),
                    paused: state.paused.unwrap_or(false),
                }))
            }
            Ok(Err(e)) if Self::is_not_found(&e) => Ok(None),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => Err(RuntimeError::Timeout(format!(
                "inspecting {name}: no answer within {:?}",
                self.settings.api_timeout
            ))),
        }
    }

    async fn create_raw(&self, docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<(), RuntimeError> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        match tokio::time::timeout(self.settings.api_timeout, docker.create_container(Some(opts), body)).await {
            Ok(Ok(_)) => Ok(()),
            // Made by a racing call a moment ago: fine, start it.
            Ok(Err(e)) if Self::is_conflict(&e) => Ok(()),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => {
                Err(RuntimeError::Timeout(format!("creating {name}: no answer within {:?}", self.settings.api_timeout)))
            }
        }
    }

    async fn remove_raw(&self, docker: &Docker, name: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match tokio::time::timeout(self.settings.api_timeout, docker.remove_container(name, Some(opts))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if Self::is_not_found(&e) => Ok(()),
            // 409: removal already in progress.
            Ok(Err(e)) if Self::is_conflict(&e) => Ok(()),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => {
                Err(RuntimeError::Timeout(format!("removing {name}: no answer within {:?}", self.settings.api_timeout)))
            }
        }
    }

    /// Waits (briefly) until the project's freshly started agent answers; false at once
    /// if its container stopped (the agent cannot run in the image).
    async fn agent_comes_up(&self, project: &ProjectName) -> bool {
        let (Some(agents), Ok(docker)) = (&self.agents, self.client().await) else { return false };
        let deadline = tokio::time::Instant::now() + AGENT_START_WAIT;
        loop {
            let pid = match self.inspect_raw(&docker, project).await {
                Ok(Some(ContainerInfo { running: true, pid: Some(pid), .. })) => pid,
                _ => return false,
            };
            match agents.connect(project, pid).await {
                Ok(_) => return true,
                Err(AgentError::Forged(_) | AgentError::Refused(_) | AgentError::Protocol(_)) => return false,
                Err(_) if tokio::time::Instant::now() >= deadline => return false,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    async fn start_raw(&self, docker: &Docker, name: &str) -> Result<(), RuntimeError> {
        match tokio::time::timeout(self.settings.api_timeout, docker.start_container(name, None)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if Self::is_not_modified(&e) => Ok(()),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => {
                Err(RuntimeError::Timeout(format!("starting {name}: no answer within {:?}", self.settings.api_timeout)))
            }
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    async fn agent(&self, project: &ProjectName) -> Result<Arc<AgentConn>, crate::error::Error> {
        self.agent_for(project).await.map_err(|e| {
            let why = match e {
                AgentError::Absent(w) => format!(
                    "{w}; files and background processes need berth-agent (containers made with [exec] agent = \
                     false, or before berth had an agent, lack it)"
                ),
                other => other.to_string(),
            };
            crate::error::Error::new(crate::error::ErrorKind::RuntimeUnavailable, format!("project {project}: {why}"))
        })
    }

    async fn fs(
        &self,
        project: &ProjectName,
        _workspace: &Path,
        call: crate::files::FsCall,
        within: Duration,
        hold: &mut crate::runtime::Reservation,
    ) -> Result<crate::files::FsReply, crate::error::Error> {
        self.agent(project).await?.fs(call, within, hold).await
    }

    async fn ping(&self) -> Result<EngineInfo, RuntimeError> {
        let docker = self.client().await?;
        let v = self.bounded("version", docker.version()).await?;
        let podman = v.components.iter().flatten().any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let version = v.version.unwrap_or_else(|| "unknown".into());
        // Rootless or not does not change while the engine stays up: asked once per
        // connection (the engine's info call is the slow one).
        let known = *self.rootless.lock().await;
        let rootless = match known {
            Some(r) => r,
            None => {
                let info = self.bounded("info", docker.info()).await?;
                // Docker says so in its security options; Podman's compatible API does
                // not, but a rootless Podman keeps its storage in the user's home.
                let root_dir = info.docker_root_dir.clone().unwrap_or_default();
                let r = info.security_options.iter().flatten().any(|o| o.contains("name=rootless"))
                    || (podman && !root_dir.is_empty() && !root_dir.starts_with("/var/lib/"));
                let v1 = matches!(info.cgroup_version, Some(bollard::models::SystemInfoCgroupVersionEnum::_1));
                if r && v1 {
                    tracing::warn!(
                        "the engine is rootless on cgroup v1: it cannot enforce memory, pids or cpu limits, so \
                         [container] memory, pids_limit and cpus (and each project's limits) are not applied; \
                         nor can it pause a container, so snapshots are taken while the container runs"
                    );
                }
                self.cannot_pause.store(r && v1, Ordering::Relaxed);
                *self.rootless.lock().await = Some(r);
                r
            }
        };
        Ok(EngineInfo { engine: if podman { "podman" } else { "docker" }.into(), version, rootless })
    }

    async fn ensure_running(&self, spec: &ContainerSpec<'_>) -> Result<Option<ContainerInfo>, RuntimeError> {
        let docker = self.client().await?;
        let name = Self::container_name(spec.project);
        // (the container has an agent, it was made by this call)
        let (with_agent, made_now) = match self.inspect_raw(&docker, spec.project).await? {
            Some(info) if info.running => return Ok(Some(info)),
            Some(info) => {
                if let (true, Some(a)) = (info.agent, &self.agents) {
                    a.clear_socket_path(spec.project).await;
                }
                self.start_raw(&docker, &name).await?;
                (info.agent, false)
            }
            None => {
                self.ensure_network(&docker).await?;
                self.ensure_image(&docker, spec.image.as_str()).await?;
                let agent = match &self.agents {
                    Some(a) => {
                        let run = a
                            .run_dir(spec.project)
                            .await
                            .map_err(|e| RuntimeError::Io(format!("agent run dir of project {}: {e}", spec.project)))?;
                        Some((a.binary().to_path_buf(), run))
                    }
                    None => None,
                };
                let body = self.create_body(spec, agent.as_ref().map(|(b, r)| (b.as_path(), r.as_path())));
                self.create_raw(&docker, &name, body).await?;
                self.start_raw(&docker, &name).await?;
                (agent.is_some(), true)
            }
        };
        if with_agent && !self.agent_comes_up(spec.project).await {
            // Only a container made just now is re-made: an existing one (and whatever is
            // in it) is never thrown away because its agent did not come up; its execs
            // take the exec path.
            let stopped = !self.inspect_raw(&docker, spec.project).await?.is_some_and(|i| i.running);
            if stopped && made_now {
                // The agent cannot run in this image: fall back to the old way, never fail.
                tracing::warn!(project = %spec.project, image = %spec.image, "berth-agent did not start in this image; re-creating the container without it");
                self.remove_raw(&docker, &name).await?;
                self.create_raw(&docker, &name, self.create_body(spec, None)).await?;
                self.start_raw(&docker, &name).await?;
            }
        }
        match self.inspect_raw(&docker, spec.project).await? {
            Some(info) if info.running => Ok(Some(info)),
            Some(_) => Err(RuntimeError::Engine(format!(
                "container {name} stopped right after starting; does image {} have /bin/sh?",
                spec.image
            ))),
            None => Err(RuntimeError::Engine(format!("container {name} vanished right after starting"))),
        }
    }

    async fn stop(&self, project: &ProjectName) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let name = Self::container_name(project);
        if self.inspect_raw(&docker, project).await?.is_none() {
            return Ok(());
        }
        if let Some(a) = &self.agents {
            a.forget(project);
        }
        let t = self.settings.stop_timeout.as_secs() as i32;
        let opts = StopContainerOptionsBuilder::new().t(t).build();
        let budget = self.settings.api_timeout + self.settings.stop_timeout;
        match tokio::time::timeout(budget, docker.stop_container(&name, Some(opts))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if Self::is_not_modified(&e) || Self::is_not_found(&e) => Ok(()),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => {
                Err(RuntimeError::Timeout(format!("stopping {name}: no answer within {:?}", self.settings.api_timeout)))
            }
        }
    }

    async fn remove(&self, project: &ProjectName) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let name = Self::container_name(project);
        if self.inspect_raw(&docker, project).await?.is_some() {
            self.remove_raw(&docker, &name).await?;
        }
        if let Some(a) = &self.agents {
            a.remove_run_dir(project).await;
        }
        Ok(())
    }

    async fn inspect(&self, project: &ProjectName) -> Result<Option<ContainerInfo>, RuntimeError> {
        let docker = self.client().await?;
        self.inspect_raw(&docker, project).await
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let docker = self.client().await?;
        let filter = format!("{}={}", self.settings.label_managed_by, MANAGED_BY);
        let filters = HashMap::from([("label", vec![filter.as_str()])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        // A Podman container between stop and exit is listed as `stopped`, which does not
        // parse: that moment passes, so the list is asked again a few times.
        let mut tries = 0;
        let list = loop {
            match self.bounded("listing containers", docker.list_containers(Some(opts.clone()))).await {
                Err(RuntimeError::Unreadable(_)) if tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        Ok(list
            .into_iter()
            .filter(|c| self.owns(c))
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                ContainerInfo {
                    container_id: c.id.unwrap_or_default(),
                    project: labels.get(&self.settings.label_project).cloned(),
                    running: c.state.map(|s| s.to_string() == "running").unwrap_or(false),
                    image: c.image.unwrap_or_default(),
                    created: c
                        .created
                        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                        .map(crate::model::rfc3339)
                        .unwrap_or_default(),
                    pid: None,
                    agent: labels.get(AGENT_LABEL).map(String::as_str) == Some("1"),
                    paused: false,
                }
            })
            .collect())
    }

    async fn logs(&self, project: &ProjectName, tail: Option<u64>) -> Result<String, RuntimeError> {
        let docker = self.client().await?;
        if self.inspect_raw(&docker, project).await?.is_none() {
            return Err(RuntimeError::NotFound(format!("project {project} has no container")));
        }
        let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
        let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&tail).build();
        let name = Self::container_name(project);
        let collect = async {
            let mut out = Vec::new();
            let mut stream = docker.logs(&name, Some(opts));
            while let Some(item) = stream.next().await {
                out.extend_from_slice(&item?.into_bytes());
            }
            Ok::<_, BollardError>(out)
        };
        let bytes = self.bounded("reading logs", collect).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn exec(
        &self,
        project: &ProjectName,
        _workspace: &Path,
        spec: ExecSpec,
        capture: Capture,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, RuntimeError> {
        // Through the agent where the container has one that answers; otherwise (a
        // container made before the agent, an image it cannot run in, an agent that is
        // gone) through the engine's exec, and the result says which.
        let agent = match (spec.engine_exec, fits(&spec)) {
            (true, _) => Err(AgentError::Unavailable("the request asked for the exec path".into())),
            (_, false) => Err(AgentError::Unavailable("the command is larger than one agent frame".into())),
            _ => self.agent_for(project).await,
        };
        match agent {
            Ok(conn) => {
                return conn.exec(spec, capture, cancel).await.map_err(|e| match e {
                    AgentExecError::Workdir(m) => RuntimeError::InvalidWorkdir(m),
                    AgentExecError::Start(m) => RuntimeError::Engine(m),
                    AgentExecError::Agent(a) => RuntimeError::Engine(a.to_string()),
                })
            }
            Err(AgentError::Forged(why)) => tracing::warn!(%project, %why, "using the exec path"),
            Err(e) => tracing::debug!(%project, error = %e, "using the exec path"),
        }
        let mut o = exec::run(self, project, spec, capture, cancel).await?;
        o.path = "exec";
        Ok(o)
    }

    fn agent_connected(&self, project: &ProjectName) -> bool {
        self.agents.as_ref().is_some_and(|a| a.cached(project).is_some())
    }

    async fn pause(&self, project: &ProjectName, paused: bool) -> Result<(), RuntimeError> {
        if self.cannot_pause.load(Ordering::Relaxed) {
            // Rootless on cgroup v1: there is no freezer to use (said once at start-up).
            return Ok(());
        }
        let docker = self.client().await?;
        let name = Self::container_name(project);
        match self.inspect_raw(&docker, project).await? {
            None => return Ok(()),
            Some(c) if c.paused == paused || !c.running => return Ok(()),
            Some(_) => {}
        }
        let call = async {
            match paused {
                true => docker.pause_container(&name).await,
                false => docker.unpause_container(&name).await,
            }
        };
        match self.bounded(if paused { "pausing" } else { "unpausing" }, call).await {
            // Already in that state, or not running (nothing to freeze).
            Err(RuntimeError::Conflict(_)) => Ok(()),
            other => other,
        }
    }

    async fn commit(&self, project: &ProjectName, snapshot: &SnapshotId, image: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let name = Self::container_name(project);
        if self.inspect_raw(&docker, project).await?.is_none() {
            return Err(RuntimeError::NotFound(format!("project {project} has no container to commit")));
        }
        let (repo, tag) = split_image(image);
        let s = &self.settings;
        let labels = HashMap::from([
            (s.label_project.clone(), project.to_string()),
            (s.label_managed_by.clone(), MANAGED_BY.to_string()),
            (SNAPSHOT_LABEL.to_string(), snapshot.to_string()),
            (STATE_LABEL.to_string(), self.state_dir()),
            // A container made from this image decides for itself whether it has an agent.
            (AGENT_LABEL.to_string(), String::new()),
        ]);
        // Podman's compatible API ignores the body's labels and applies one `LABEL k=v`
        // change (unquoted, one pair); the rest it takes from the container's own labels,
        // which carry the project, managed-by and state-dir labels for that reason.
        let change = format!("LABEL {SNAPSHOT_LABEL}={snapshot}");
        let opts = bollard::query_parameters::CommitContainerOptionsBuilder::new()
            .container(&name)
            .repo(repo)
            .tag(tag)
            .comment(&format!("berth snapshot {snapshot} of project {project}"))
            .pause(false)
            .changes(&change)
            .build();
        let config = bollard::models::ContainerConfig { labels: Some(labels), ..Default::default() };
        // A commit writes the container's changes: it gets the pull's bound, not an API call's.
        match tokio::time::timeout(s.pull_timeout, docker.commit_container(opts, config)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => Err(RuntimeError::Timeout(format!("committing {name}: not done within {:?}", s.pull_timeout))),
        }
    }

    async fn snapshot_images(&self) -> Result<Vec<SnapshotImage>, RuntimeError> {
        let docker = self.client().await?;
        let s = &self.settings;
        let managed = format!("{}={MANAGED_BY}", s.label_managed_by);
        let state = format!("{STATE_LABEL}={}", self.state_dir());
        let filters = HashMap::from([("label", vec![managed.as_str(), SNAPSHOT_LABEL, state.as_str()])]);
        // `all`: an untagged image (a commit a crash cut short) is listed too.
        let opts = bollard::query_parameters::ListImagesOptionsBuilder::new().all(true).filters(&filters).build();
        let list = self.bounded("listing images", docker.list_images(Some(opts))).await?;
        Ok(list
            .into_iter()
            .filter_map(|i| {
                Some(SnapshotImage {
                    id: i.id.clone(),
                    snapshot: i.labels.get(SNAPSHOT_LABEL)?.clone(),
                    project: i.labels.get(&s.label_project).cloned(),
                    tags: i
                        .repo_tags
                        .iter()
                        .filter(|t| t.as_str() != "<none>:<none>")
                        .map(|t| short_name(t).to_string())
                        .collect(),
                })
            })
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        let opts = bollard::query_parameters::RemoveImageOptionsBuilder::new().force(false).build();
        match tokio::time::timeout(self.settings.api_timeout * 4, docker.remove_image(image, Some(opts), None)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if Self::is_not_found(&e) => Ok(true),
            // A container (a project restored or forked from it) still uses it.
            Ok(Err(e)) if Self::is_conflict(&e) => Ok(false),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => Err(RuntimeError::Timeout(format!("removing image {image}: no answer in time"))),
        }
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        match tokio::time::timeout(self.settings.api_timeout, docker.inspect_image(image)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if Self::is_not_found(&e) => Ok(false),
            Ok(Err(e)) => Err(self.fail(e).await),
            Err(_) => Err(RuntimeError::Timeout(format!("inspecting image {image}: no answer in time"))),
        }
    }

    async fn agent_answers(&self, project: &ProjectName) -> bool {
        match self.agent_for(project).await {
            Ok(conn) => conn.ping(Duration::from_secs(2)).await,
            Err(_) => false,
        }
    }
}

/// An image name as the engine lists it, as berth names it: Podman lists an image
/// tagged `berth-snapshot:x` as `localhost/berth-snapshot:x`.
fn short_name(tag: &str) -> &str {
    tag.strip_prefix("localhost/").unwrap_or(tag)
}

/// Splits `repo[:tag]` or `repo@digest` the way the pull API wants them.
fn split_image(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let after_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[after_slash..].rfind(':') {
        Some(i) => (&image[..after_slash + i], &image[after_slash + i + 1..]),
        None => (image, "latest"),
    }
}

fn describe(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_split() {
        assert_eq!(split_image("node:20-slim"), ("node", "20-slim"));
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("reg:5000/a/b"), ("reg:5000/a/b", "latest"));
        assert_eq!(split_image("reg:5000/a/b:c"), ("reg:5000/a/b", "c"));
        assert_eq!(split_image("a@sha256:ff"), ("a", "sha256:ff"));
    }
}
