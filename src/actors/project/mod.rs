//! The project actor: one per project, the only place its lifecycle changes.
//!
//! Create, start, stop, delete, archive and the implicit start before an exec arrive as
//! messages and run one at a time, in order. Execs themselves do not run here: the actor
//! hands out an `ExecLease` (the project as it stands, plus a cancel token) and the
//! caller runs the command in its own task, so a long exec never blocks this mailbox.
//! Durable state is the registry row and the engine; a restarted actor rebuilds from the
//! row in `pre_start` and from the engine in `post_start`.

mod snapshots;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::registry::RegistryMsg;
use super::supervisor::SupervisorMsg;
use super::{ask, Ctx};
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::model::{CreateSpec, ImageRef, Pending, Project, ProjectName, Status};
use crate::runtime::{ContainerInfo, ContainerSpec, RuntimeError, RuntimeKind};
use crate::snapshot::{Snapshot, SnapshotId};
use crate::workspace::{WorkspaceError, Workspaces};

pub struct ProjectActor;

/// How precisely `last_used` is kept: within this, an exec does not rewrite the row.
const LAST_USED_RESOLUTION: time::Duration = time::Duration::seconds(1);

pub struct ProjectArgs {
    pub name: ProjectName,
    pub ctx: Arc<Ctx>,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Set while the actor works on a message: the supervisor never retires a busy actor.
    pub busy: Arc<AtomicBool>,
}

pub struct ProjectState {
    name: ProjectName,
    ctx: Arc<Ctx>,
    supervisor: ActorRef<SupervisorMsg>,
    /// The registry row; `None` when the project is not registered.
    project: Option<Project>,
    /// Lives in `Ctx::execs`, not here, so that execs stay cancellable across a restart
    /// of this actor.
    execs: Arc<ExecGate>,
    busy: Arc<AtomicBool>,
}

/// A change that reconcile made to one project.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub from: Option<Status>,
    pub to: Option<Status>,
    pub reason: String,
}

pub enum ProjectMsg {
    Create {
        spec: CreateSpec,
        or_get: bool,
        reply: RpcReplyPort<Result<Project, Error>>,
    },
    Start(RpcReplyPort<Result<Project, Error>>),
    Stop(RpcReplyPort<Result<Project, Error>>),
    /// Replies with where the workspace went (`None`: purged, or there was none). The
    /// project's snapshots go too, unless `keep_snapshots`.
    Delete {
        purge: bool,
        keep_snapshots: bool,
        reply: RpcReplyPort<Result<Option<PathBuf>, Error>>,
    },
    /// Takes a snapshot: container filesystem, workspace and settings.
    Snapshot {
        label: String,
        reply: RpcReplyPort<Result<Snapshot, Error>>,
    },
    /// Puts the project back as it was at one of its snapshots.
    Restore {
        id: SnapshotId,
        reply: RpcReplyPort<Result<Project, Error>>,
    },
    /// Deletes one of the project's snapshots.
    DeleteSnapshot {
        id: SnapshotId,
        reply: RpcReplyPort<Result<(), Error>>,
    },
    /// To the actor of a project that does not exist yet: make it as a fork of `from`
    /// (its current state, or one of its snapshots).
    Fork {
        from: ProjectName,
        snapshot: Option<SnapshotId>,
        reply: RpcReplyPort<Result<Project, Error>>,
    },
    /// From a fork's actor: commit this project's container as `id`'s image and copy its
    /// workspace to `into` (a new workspace); replies with this project's settings.
    CaptureInto {
        id: SnapshotId,
        into: PathBuf,
        reply: RpcReplyPort<Result<Project, Error>>,
    },
    /// Finishes interrupted snapshot journals and prunes beyond `[snapshots] keep`.
    SettleSnapshots(RpcReplyPort<Result<Vec<Change>, Error>>),
    /// Gets the project ready for one exec (starting or re-creating its container when it
    /// runs there) and hands out a lease.
    PrepareExec {
        auto_create: Option<CreateSpec>,
        ask: ExecAsk,
        reply: RpcReplyPort<Result<ExecLease, Error>>,
    },
    /// Compares the row with the engine and converges; replies with what changed.
    Reconcile(RpcReplyPort<Result<Option<Change>, Error>>),
    /// Adopts a labelled container that has no row (a crash between create and commit).
    Adopt(ContainerInfo, RpcReplyPort<Result<Option<Change>, Error>>),
    /// Archives the project if it has had no activity since `cutoff` and no exec runs.
    ArchiveIfStale {
        cutoff: OffsetDateTime,
        reply: RpcReplyPort<Result<bool, Error>>,
    },
    /// Stops (not removes) the container if idle since `cutoff` and no exec runs.
    StopIfIdle {
        cutoff: OffsetDateTime,
        reply: RpcReplyPort<Result<bool, Error>>,
    },
    /// From the supervisor: stop if idle. An actor whose project has an exec running
    /// declines (it holds that exec's cancel token).
    Retire,
    /// Debug hook: keep the actor busy this long, as a long image pull does.
    DebugBusy(std::time::Duration),
    /// Debug hook: panic inside the handler, to exercise supervision. The reply port is
    /// dropped by the panic, which is how the caller learns it happened.
    Panic(RpcReplyPort<()>),
}

/// What an exec request says about where it wants to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecAsk {
    /// `local: true`.
    pub local: bool,
    /// The `tool` the request names, for `[routing]`.
    pub tool: Option<String>,
    /// Ask the engine afresh (the container vanished since the actor last looked).
    pub recheck: bool,
    /// The request wants the engine's exec API, not the agent.
    pub engine_exec: bool,
}

/// Where one exec runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Container,
    Host,
}

/// The one place that decides where an exec runs.
///
/// Nothing runs on the host unless `[local] enabled`: then `local: true` and tools not
/// routed to the container run there, and a project that never had a container (status
/// `created`) runs there while no engine answers. A project that has a container never
/// silently moves to the host. `engine` is whether the container can be reached: the
/// engine answers (a slow engine is not an absent one: timeouts never clear it), or the
/// project's agent does.
pub fn decide(ask: &ExecAsk, cfg: &Config, engine: bool, name: &ProjectName, status: Status) -> Result<Where, Error> {
    let local = cfg.local.enabled;
    if ask.local && !ask.recheck {
        if !local {
            return Err(Error::new(
                ErrorKind::Forbidden,
                format!(
                    "local execution is disabled: `local: true` for project {name} needs [local] enabled = true in berthd's config"
                ),
            ));
        }
        return Ok(Where::Host);
    }
    if let Some(tool) = &ask.tool {
        if local && !ask.recheck && !cfg.routing.container_tools.iter().any(|t| t == tool) {
            return Ok(Where::Host);
        }
    }
    if engine {
        return Ok(Where::Container);
    }
    if status == Status::Created && local {
        return Ok(Where::Host);
    }
    let why = if status == Status::Created {
        format!("project {name} has no container yet, no container engine answers, and local execution is off ([local] enabled = false)")
    } else {
        format!("project {name} runs in a container and no container engine answers")
    };
    Err(Error::new(ErrorKind::RuntimeUnavailable, why))
}

/// The exec gates of every project, outside the project actors: an actor that panics
/// and is restarted takes its project's gate back, so the execs it leased stay
/// cancellable by its successor.
#[derive(Default)]
pub struct ExecTable(Mutex<HashMap<ProjectName, Arc<ExecGate>>>);

impl ExecTable {
    pub fn gate(&self, name: &ProjectName) -> Arc<ExecGate> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.clone()).or_default().clone()
    }

    /// Drops a deleted project's gate once nothing runs under it.
    pub fn forget(&self, name: &ProjectName) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(name).is_some_and(|g| g.running() == 0) {
            map.remove(name);
        }
    }
}

/// The running execs of one project: counted (a project with an exec running is never
/// stale or idle) and cancellable together (stop and delete fail them).
#[derive(Default)]
pub struct ExecGate {
    running: AtomicUsize,
    token: Mutex<CancellationToken>,
}

impl ExecGate {
    fn lease(self: &Arc<Self>) -> (CancellationToken, ExecGuard) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let token = self.token.lock().map(|t| t.child_token()).unwrap_or_default();
        (token, ExecGuard(self.clone()))
    }

    fn cancel_all(&self) {
        if let Ok(mut t) = self.token.lock() {
            t.cancel();
            *t = CancellationToken::new();
        }
    }

    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

pub struct ExecGuard(Arc<ExecGate>);

impl Drop for ExecGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Permission to run one exec: what to run it against and how it gets cancelled.
pub struct ExecLease {
    pub project: Project,
    pub runtime: RuntimeKind,
    /// This exec created the project (auto-create).
    pub auto_created: bool,
    /// Cancelled when the project is stopped or deleted.
    pub cancel: CancellationToken,
    pub guard: ExecGuard,
}

impl ProjectState {
    async fn registry<R: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<R>) -> RegistryMsg,
    ) -> Result<R, Error> {
        let reg = self.ctx.registry.get()?;
        ask(&reg, "the registry", self.ctx.short_timeout(), build).await
    }

    async fn save(&mut self, p: Project) -> Result<Project, Error> {
        let row = p.clone();
        self.registry(|r| RegistryMsg::Update(row, r)).await??;
        self.project = Some(p.clone());
        Ok(p)
    }

    /// Runs a workspace operation off the async workers: purging or moving a large tree
    /// is blocking disk work that must not stall other actors.
    async fn ws<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Workspaces, &ProjectName) -> Result<T, WorkspaceError> + Send + 'static,
    ) -> Result<T, Error> {
        let (w, n) = (self.ctx.workspaces.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || op(&w, &n))
            .await
            .map_err(|e| Error::internal(format!("workspace task of project {}: {e}", self.name)))?
            .map_err(Error::from)
    }

    fn engine_err(&self, e: RuntimeError) -> Error {
        self.ctx.runtimes.note(&e);
        e.into()
    }

    fn require(&self) -> Result<Project, Error> {
        self.project.clone().ok_or_else(|| Error::not_found(&self.name))
    }

    /// The project, if no delete of it is still being finished and `allowed` holds for
    /// its status (one of `Status::can_*`).
    fn require_settled(&self, allowed: fn(Status) -> bool) -> Result<Project, Error> {
        let p = self.require()?;
        if p.pending.is_some() || !allowed(p.status) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("project {} is being created or deleted; retry", self.name),
            ));
        }
        Ok(p)
    }

    async fn ensure_container(&self, p: &Project) -> Result<Option<ContainerInfo>, Error> {
        let spec = ContainerSpec {
            project: &p.name,
            image: &p.image,
            env: &p.env,
            ports: &p.ports,
            workspace: &p.path,
            limits: &p.limits,
        };
        self.ctx.runtimes.docker.ensure_running(&spec).await.map_err(|e| self.engine_err(e))
    }

    async fn create(&mut self, spec: CreateSpec, or_get: bool) -> Result<Project, Error> {
        if let Some(p) = &self.project {
            if or_get {
                return Ok(p.clone());
            }
            return Err(Error::new(ErrorKind::AlreadyExists, format!("project {} already exists", self.name)));
        }
        let image = match spec.image {
            Some(i) => i,
            None => ImageRef::parse(&self.ctx.config.docker.default_image)?,
        };
        let now = OffsetDateTime::now_utc();
        let mut p = Project {
            name: self.name.clone(),
            description: spec.description,
            image,
            created: now,
            last_used: now,
            status: Status::Creating,
            env: spec.env,
            ports: spec.ports,
            path: self.ctx.workspaces.path(&self.name),
            pending: None,
            limits: spec.limits,
        };
        // The row goes in first (as `creating`): a crash from here on leaves a row that
        // the next start-up finishes, never a container nobody knows.
        let row = p.clone();
        self.registry(|r| RegistryMsg::Insert(row, r)).await??;
        self.project = Some(p.clone());
        let made_workspace = match self.ws(|w, n| w.ensure(n)).await {
            Ok(made) => made,
            Err(e) => {
                self.roll_back(false).await;
                return Err(e);
            }
        };
        p.status = if self.ctx.runtimes.docker_available() {
            match self.ensure_container(&p).await {
                Ok(_) => Status::Running,
                Err(e) if e.kind == ErrorKind::RuntimeUnavailable => Status::Created,
                Err(e) => {
                    self.roll_back(made_workspace).await;
                    return Err(e);
                }
            }
        } else {
            Status::Created
        };
        tracing::info!(project = %self.name, image = %p.image, status = p.status.as_str(), "created project");
        self.save(p).await
    }

    /// Undoes a failed create: the container, the row, and the workspace only if this
    /// create made it.
    async fn roll_back(&mut self, remove_workspace: bool) {
        if let Err(e) = self.ctx.runtimes.docker.remove(&self.name).await {
            tracing::warn!(project = %self.name, error = %e, "rollback: container not removed");
        }
        if remove_workspace {
            if let Err(e) = self.ws(|w, n| w.purge(n)).await {
                tracing::warn!(project = %self.name, error = %e, "rollback: workspace not removed");
            }
        }
        let name = self.name.clone();
        match self.registry(|r| RegistryMsg::Delete(name, r)).await {
            Ok(Ok(())) => self.project = None,
            Ok(Err(e)) | Err(e) => tracing::error!(project = %self.name, error = %e, "rollback: row not removed"),
        }
    }

    async fn start(&mut self) -> Result<Project, Error> {
        let mut p = self.require_settled(Status::can_start)?;
        if !self.ctx.runtimes.docker_available() {
            return Err(Error::new(
                ErrorKind::RuntimeUnavailable,
                format!("cannot start project {}: no container engine answers", self.name),
            ));
        }
        self.ensure_container(&p).await?;
        p.status = Status::Running;
        p.last_used = OffsetDateTime::now_utc();
        self.save(p).await
    }

    async fn stop(&mut self) -> Result<Project, Error> {
        let mut p = self.require_settled(Status::can_stop)?;
        self.execs.cancel_all();
        if p.status == Status::Created {
            return Ok(p);
        }
        self.ctx.runtimes.docker.stop(&self.name).await.map_err(|e| self.engine_err(e))?;
        p.status = Status::Stopped;
        tracing::info!(project = %self.name, "stopped");
        self.save(p).await
    }

    /// Deletes the project: container, workspace (archived or purged) and row.
    ///
    /// The intent is journaled in the row first, so a crash part-way is finished on
    /// restart. The container is stopped before the workspace moves; if the move fails,
    /// the container is started again and the row is left as it was.
    async fn delete(&mut self, purge: bool, keep_snapshots: bool) -> Result<Option<PathBuf>, Error> {
        let mut p = self.require()?;
        let has_container = matches!(p.status, Status::Running | Status::Stopped);
        if has_container && !self.ctx.runtimes.docker_available() {
            return Err(Error::new(
                ErrorKind::RuntimeUnavailable,
                format!("cannot delete project {}: its container cannot be removed while no engine answers", self.name),
            ));
        }
        self.execs.cancel_all();
        let was_running = p.status == Status::Running;
        p.pending = Some(if purge { Pending::Purge { keep_snapshots } } else { Pending::Archive { keep_snapshots } });
        let p = self.save(p).await?;
        self.finish_delete(p, Some(was_running)).await
    }

    /// The steps of a journaled delete. `undo` is `Some(was_running)` for a delete asked
    /// for now: if it fails before the workspace has moved, the project is put back as it
    /// was and the journal cleared. A resumed delete (`None`) keeps its journal on failure
    /// and is retried by the next reconcile.
    async fn finish_delete(&mut self, mut p: Project, undo: Option<bool>) -> Result<Option<PathBuf>, Error> {
        let engine = self.ctx.runtimes.docker_available();
        let keep_snapshots = matches!(
            p.pending,
            Some(Pending::Archive { keep_snapshots: true } | Pending::Purge { keep_snapshots: true })
        );
        if !keep_snapshots && engine {
            if let Err(e) = self.delete_all_snapshots().await {
                if undo.is_some() {
                    p.pending = None;
                    self.save(p).await?;
                }
                return Err(e);
            }
        }
        if engine {
            if let Err(e) = self.ctx.runtimes.docker.stop(&self.name).await {
                let e = self.engine_err(e);
                if undo.is_some() {
                    p.pending = None;
                    self.save(p).await?;
                }
                return Err(e);
            }
        }
        let moved = match p.pending {
            Some(Pending::Purge { .. }) => self.ws(|w, n| w.purge(n)).await.map(|_| None),
            _ => self.ws(|w, n| w.archive(n, OffsetDateTime::now_utc())).await,
        };
        let archived = match moved {
            Ok(a) => a,
            // Asked for now: nothing is lost, so put the project back as it was.
            Err(e) if undo.is_some() => {
                if undo == Some(true) {
                    let _ = self.ensure_container(&p).await;
                }
                p.pending = None;
                self.save(p).await?;
                return Err(e);
            }
            // Resumed after a crash: nobody is waiting to be told, so the journal stays
            // and the next reconcile retries once the cause is repaired.
            Err(e) => {
                tracing::warn!(project = %self.name, error = %e, "interrupted delete still cannot move the workspace; kept journaled, retried by the next reconcile");
                return Err(e);
            }
        };
        if engine {
            self.ctx.runtimes.docker.remove(&self.name).await.map_err(|e| self.engine_err(e))?;
        }
        let name = self.name.clone();
        self.registry(|r| RegistryMsg::Delete(name, r)).await??;
        self.project = None;
        self.release_image(p.image.as_str()).await;
        match &archived {
            Some(path) => tracing::info!(project = %self.name, archived = %path.display(), "deleted project"),
            None => tracing::info!(project = %self.name, "deleted project and its workspace"),
        }
        Ok(archived)
    }

    /// Finishes what a crash interrupted: a journaled delete, or a create left
    /// `creating` (its container is made now if the engine answers, else it is `created`).
    async fn resume(&mut self) -> Result<Option<Change>, Error> {
        let Some(mut p) = self.project.clone() else { return Ok(None) };
        match &p.pending {
            Some(Pending::Restore(_) | Pending::Restored(_)) => {
                if !self.ctx.runtimes.docker_available() {
                    return Ok(None);
                }
                let from = p.status;
                let p = self.finish_restore(p).await?;
                tracing::warn!(project = %self.name, "finished an interrupted restore");
                return Ok(Some(Change {
                    name: self.name.to_string(),
                    from: Some(from),
                    to: Some(p.status),
                    reason: "finished an interrupted restore".into(),
                }));
            }
            Some(Pending::Fork(_)) => {
                if !self.ctx.runtimes.docker_available() {
                    return Ok(None);
                }
                self.roll_back_fork().await;
                tracing::warn!(project = %self.name, "rolled back an interrupted fork");
                return Ok(Some(Change {
                    name: self.name.to_string(),
                    from: Some(p.status),
                    to: None,
                    reason: "rolled back an interrupted fork".into(),
                }));
            }
            _ => {}
        }
        if p.pending.is_some() {
            // A container can only be removed with the engine; without one, only a
            // project that never had a container can be finished.
            if !self.ctx.runtimes.docker_available() && p.status != Status::Created {
                return Ok(None);
            }
            let from = p.status;
            self.finish_delete(p, None).await?;
            return Ok(Some(Change {
                name: self.name.to_string(),
                from: Some(from),
                to: None,
                reason: "finished an interrupted delete".into(),
            }));
        }
        if p.status != Status::Creating {
            return Ok(None);
        }
        self.ws(|w, n| w.ensure(n)).await?;
        p.status = match self.ctx.runtimes.docker_available() {
            true => match self.ensure_container(&p).await {
                Ok(_) => Status::Running,
                Err(e) => {
                    tracing::warn!(project = %self.name, error = %e, "could not finish an interrupted create");
                    Status::Created
                }
            },
            false => Status::Created,
        };
        let to = p.status;
        self.save(p).await?;
        Ok(Some(Change {
            name: self.name.to_string(),
            from: Some(Status::Creating),
            to: Some(to),
            reason: "finished an interrupted create".into(),
        }))
    }

    async fn prepare_exec(&mut self, auto_create: Option<CreateSpec>, ask: ExecAsk) -> Result<ExecLease, Error> {
        let mut auto_created = false;
        if self.project.is_none() {
            match auto_create {
                Some(spec) => {
                    self.create(spec, true).await?;
                    auto_created = true;
                }
                None => return Err(Error::not_found(&self.name)),
            }
        }
        let mut p = self.require_settled(Status::can_exec)?;
        let cfg = &self.ctx.config;
        // The container is reachable through the engine, or through its agent even while
        // the engine is away (unless the request asked for the engine's exec path).
        let rt = &self.ctx.runtimes;
        let engine = rt.docker_available() || (!ask.engine_exec && rt.docker.agent_connected(&self.name));
        let runtime = match decide(&ask, cfg, engine, &self.name, p.status)? {
            Where::Host => RuntimeKind::Local,
            Where::Container => {
                if ask.recheck || !p.status.can_exec_directly() {
                    match self.ensure_container(&p).await {
                        Ok(_) => p.status = Status::Running,
                        // The engine went away just now (refused, not slow): decide again
                        // as without an engine.
                        Err(e) if e.kind == ErrorKind::RuntimeUnavailable => {
                            match decide(&ask, cfg, false, &self.name, p.status) {
                                Ok(Where::Host) => return self.lease(p, RuntimeKind::Local, auto_created).await,
                                _ => return Err(e),
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                RuntimeKind::Docker
            }
        };
        self.lease(p, runtime, auto_created).await
    }

    async fn lease(&mut self, mut p: Project, runtime: RuntimeKind, auto_created: bool) -> Result<ExecLease, Error> {
        if runtime == RuntimeKind::Local {
            self.ws(|w, n| w.ensure(n)).await?;
        }
        let now = OffsetDateTime::now_utc();
        // Activity is recorded to the second: a burst of execs writes the row once, not
        // once per exec (staleness is counted in days).
        let unchanged = self.project.as_ref().is_some_and(|s| {
            let mut same = s.clone();
            same.last_used = p.last_used;
            same == p && now - s.last_used < LAST_USED_RESOLUTION
        });
        let p = match unchanged {
            true => p,
            false => {
                p.last_used = now;
                self.save(p).await?
            }
        };
        let (cancel, guard) = self.execs.lease();
        Ok(ExecLease { project: p, runtime, auto_created, cancel, guard })
    }

    async fn reconcile(&mut self) -> Result<Option<Change>, Error> {
        if let Some(change) = self.resume().await? {
            return Ok(Some(change));
        }
        let Some(mut p) = self.project.clone() else { return Ok(None) };
        if !self.ctx.runtimes.docker_available() {
            return Ok(None);
        }
        let observed = self.ctx.runtimes.docker.inspect(&self.name).await.map_err(|e| self.engine_err(e))?;

        let (to, reason) = match (&observed, p.status) {
            (Some(c), _) if c.running => (Status::Running, "container is running"),
            (Some(_), _) => (Status::Stopped, "container is stopped"),
            (None, Status::Created) => (Status::Created, ""),
            (None, _) => (Status::Stopped, "container is gone; the next start or exec re-creates it"),
        };
        if to == p.status {
            return Ok(None);
        }
        let change = Change { name: self.name.to_string(), from: Some(p.status), to: Some(to), reason: reason.into() };
        let from = p.status;
        p.status = to;
        self.save(p).await?;
        tracing::info!(project = %self.name, from = from.as_str(), to = to.as_str(), reason, "reconciled");
        Ok(Some(change))
    }

    async fn adopt(&mut self, listed: ContainerInfo) -> Result<Option<Change>, Error> {
        if self.project.is_some() {
            return self.reconcile().await;
        }
        // The janitor's list is older than this message: a delete served by this actor
        // in between may have removed the container (and then its row). Adopting from the
        // list would make a ghost row, so ask the engine afresh and adopt only what is
        // still there.
        let Some(c) = self.ctx.runtimes.docker.inspect(&self.name).await.map_err(|e| self.engine_err(e))? else {
            tracing::debug!(project = %self.name, container = %listed.container_id, "container gone before adoption; nothing to adopt");
            return Ok(None);
        };
        let now = OffsetDateTime::now_utc();
        let image = ImageRef::parse(&c.image).or_else(|_| ImageRef::parse(&self.ctx.config.docker.default_image))?;
        let status = if c.running { Status::Running } else { Status::Stopped };
        let p = Project {
            name: self.name.clone(),
            description: "adopted by reconcile".into(),
            image,
            created: now,
            last_used: now,
            status,
            env: Default::default(),
            ports: Default::default(),
            path: self.ctx.workspaces.path(&self.name),
            pending: None,
            limits: Default::default(),
        };
        self.ws(|w, n| w.ensure(n)).await?;
        let row = p.clone();
        self.registry(|r| RegistryMsg::Insert(row, r)).await??;
        self.project = Some(p);
        tracing::warn!(project = %self.name, container = %c.container_id, "adopted a labelled container that had no registry row");
        Ok(Some(Change {
            name: self.name.to_string(),
            from: None,
            to: Some(status),
            reason: format!("adopted container {}", c.container_id),
        }))
    }

    fn quiet_since(&self, cutoff: OffsetDateTime) -> bool {
        matches!(&self.project, Some(p) if p.last_used < cutoff) && self.execs.running() == 0
    }
}

impl Actor for ProjectActor {
    type Msg = ProjectMsg;
    type State = ProjectState;
    type Arguments = ProjectArgs;

    async fn pre_start(&self, _me: ActorRef<Self::Msg>, args: ProjectArgs) -> Result<Self::State, ActorProcessingErr> {
        let reg = args.ctx.registry.get()?;
        let name = args.name.clone();
        let project = ask(&reg, "the registry", args.ctx.short_timeout(), |r| RegistryMsg::Get(name, r)).await?;
        let execs = args.ctx.execs.gate(&args.name);
        Ok(ProjectState {
            name: args.name,
            ctx: args.ctx,
            supervisor: args.supervisor,
            project,
            execs,
            busy: args.busy,
        })
    }

    async fn post_start(&self, _me: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // A (re)started actor may hold a row that the engine disagrees with, or one left
        // `creating` by a crash: converge before serving.
        if st.project.is_some() {
            st.busy.store(true, Ordering::SeqCst);
            if let Err(e) = st.reconcile().await {
                tracing::debug!(project = %st.name, error = %e, "startup reconcile skipped");
            }
            st.busy.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        st.busy.store(true, Ordering::SeqCst);
        let _idle = Idle(st.busy.clone());
        match msg {
            ProjectMsg::Create { spec, or_get, reply } => {
                let _ = reply.send(st.create(spec, or_get).await);
            }
            ProjectMsg::Start(reply) => {
                let _ = reply.send(st.start().await);
            }
            ProjectMsg::Stop(reply) => {
                let _ = reply.send(st.stop().await);
            }
            ProjectMsg::Delete { purge, keep_snapshots, reply } => {
                let res = st.delete(purge, keep_snapshots).await;
                if res.is_ok() {
                    st.ctx.execs.forget(&st.name);
                }
                let _ = reply.send(res);
            }
            ProjectMsg::Snapshot { label, reply } => {
                let _ = reply.send(st.take_snapshot(label).await);
            }
            ProjectMsg::Restore { id, reply } => {
                let _ = reply.send(st.restore(id).await);
            }
            ProjectMsg::DeleteSnapshot { id, reply } => {
                let _ = reply.send(st.delete_snapshot(id).await);
            }
            ProjectMsg::Fork { from, snapshot, reply } => {
                let _ = reply.send(st.fork(from, snapshot).await);
            }
            ProjectMsg::CaptureInto { id, into, reply } => {
                let _ = reply.send(st.capture_into(id, into).await);
            }
            ProjectMsg::SettleSnapshots(reply) => {
                let _ = reply.send(st.settle_snapshots().await);
            }
            ProjectMsg::PrepareExec { auto_create, ask, reply } => {
                let _ = reply.send(st.prepare_exec(auto_create, ask).await);
            }
            ProjectMsg::Reconcile(reply) => {
                let _ = reply.send(st.reconcile().await);
            }
            ProjectMsg::Adopt(info, reply) => {
                let _ = reply.send(st.adopt(info).await);
            }
            ProjectMsg::ArchiveIfStale { cutoff, reply } => {
                // Archiving is recoverable (the workspace is kept), so the snapshots are too.
                let res = if st.quiet_since(cutoff) { st.delete(false, true).await.map(|_| true) } else { Ok(false) };
                let _ = reply.send(res);
            }
            ProjectMsg::StopIfIdle { cutoff, reply } => {
                let idle = st.quiet_since(cutoff)
                    && st.project.as_ref().is_some_and(|p| p.status == Status::Running)
                    && !st.has_running_processes().await;
                let res = if idle { st.stop().await.map(|_| true) } else { Ok(false) };
                let _ = reply.send(res);
            }
            ProjectMsg::Retire => {
                if st.execs.running() > 0 {
                    let _ = st.supervisor.cast(SupervisorMsg::RetireDeclined(st.name.clone(), me.get_id()));
                } else {
                    // Everything sent before the supervisor stopped handing this actor out
                    // was ahead of this message and has been served.
                    me.stop(Some("idle".into()));
                }
            }
            ProjectMsg::DebugBusy(d) => tokio::time::sleep(d).await,
            ProjectMsg::Panic(_reply) => panic!("injected panic in the actor of project {}", st.name),
        }
        Ok(())
    }
}

impl ProjectState {
    /// Whether the container's agent holds a running background process (a dev server
    /// left running is activity: idle-stop leaves the project alone). A container without
    /// the agent has none; an agent that cannot be asked (slow engine, no answer in time)
    /// counts as having one, so a doubt never stops a project.
    async fn has_running_processes(&self) -> bool {
        let docker = &self.ctx.runtimes.docker;
        let check = async {
            match docker.inspect(&self.name).await {
                Ok(Some(info)) if info.running && info.agent => {}
                Ok(_) => return false,
                Err(_) => return true,
            }
            match docker.agent(&self.name).await {
                Ok(agent) => agent.proc_list(PROCESS_CHECK).await.map(|p| p.iter().any(|p| p.running)).unwrap_or(true),
                Err(_) => true,
            }
        };
        tokio::time::timeout(PROCESS_CHECK, check).await.unwrap_or(true)
    }
}

/// How long idle-stop asks the agent about background processes.
const PROCESS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Clears the busy flag when a handler ends, however it ends (a panic included).
struct Idle(Arc<AtomicBool>);

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_an_exec_runs_table() {
        use Status::*;
        use Where::*;
        let off = Config::default();
        let mut on = Config::default();
        on.local.enabled = true;
        on.routing.container_tools = vec!["shell".into()];
        let name = ProjectName::parse("p").unwrap();
        let ask = |local: bool, tool: Option<&str>| ExecAsk {
            local,
            tool: tool.map(String::from),
            recheck: false,
            engine_exec: false,
        };
        // (config, ask, engine answers, status, expected place or error kind)
        type Row<'a> = (&'a Config, ExecAsk, bool, Status, Result<Where, ErrorKind>);
        let rows: Vec<Row> = vec![
            // Local execution off: nothing runs on the host.
            (&off, ask(false, None), true, Running, Ok(Container)),
            (&off, ask(true, None), true, Running, Err(ErrorKind::Forbidden)),
            (&off, ask(true, None), false, Created, Err(ErrorKind::Forbidden)),
            (&off, ask(false, Some("git")), true, Running, Ok(Container)),
            (&off, ask(false, None), false, Created, Err(ErrorKind::RuntimeUnavailable)),
            (&off, ask(false, None), false, Stopped, Err(ErrorKind::RuntimeUnavailable)),
            // On: explicit local and routing go to the host.
            (&on, ask(true, None), true, Running, Ok(Host)),
            (&on, ask(false, Some("git")), true, Running, Ok(Host)),
            (&on, ask(false, Some("shell")), true, Running, Ok(Container)),
            (&on, ask(false, None), true, Created, Ok(Container)),
            // Without an engine, only a project that never had a container degrades.
            (&on, ask(false, None), false, Created, Ok(Host)),
            (&on, ask(false, Some("shell")), false, Created, Ok(Host)),
            (&on, ask(false, None), false, Running, Err(ErrorKind::RuntimeUnavailable)),
            (&on, ask(false, None), false, Stopped, Err(ErrorKind::RuntimeUnavailable)),
            (&on, ExecAsk { recheck: true, ..ask(false, Some("git")) }, true, Running, Ok(Container)),
        ];
        for (cfg, a, engine, status, want) in rows {
            let got = decide(&a, cfg, engine, &name, status).map_err(|e| e.kind);
            assert_eq!(got, want, "local={} {a:?} engine={engine} {status:?}", cfg.local.enabled);
        }
        let e = decide(&ask(true, None), &off, true, &name, Running).unwrap_err();
        assert!(e.message.contains("[local] enabled"), "the refusal names the key: {e}");
    }
}
