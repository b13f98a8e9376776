//! What each request does: the bridge from a decoded `Request` to the actors and runtimes.
//!
//! Lifecycle changes go to the project's actor; reads are answered from the registry's
//! memory (and the engine, for live status and logs) without entering any project's
//! mailbox; an exec gets a lease from its project actor and then runs here, in the
//! connection's task, so it never blocks an actor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, ExecRequest, Outgoing, ProcessOp, Request, SnapshotOp, Utf8Carry};
use crate::actors::janitor::JanitorMsg;
use crate::actors::project::{ExecAsk, ExecLease, ProjectMsg};
use crate::actors::registry::RegistryMsg;
use crate::actors::supervisor::SupervisorMsg;
use crate::actors::{ask, Ctx};
use crate::error::{Error, ErrorKind};
use crate::files::{FsCall, FsReply, WORKSPACE_IN_CONTAINER};
use crate::model::{Activity, CreateSpec, Project, ProjectName, Status};
use crate::runtime::agent::{AgentConn, SpawnSpec};
use crate::runtime::{Capture, Chunk, ExecSpec, Reservation, RuntimeError, RuntimeKind, StreamKind};
use crate::snapshot::SnapshotState;

pub struct Service {
    pub ctx: Arc<Ctx>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

/// What a request may use of its connection: where notifications go, the token that is
/// cancelled when the client goes away, and who the client is.
#[derive(Clone)]
pub struct ConnHandle {
    pub out: mpsc::Sender<Outgoing>,
    pub gone: CancellationToken,
    pub uid: u32,
}

/// A request's result and the output budget it holds until it has been written.
pub struct Answer {
    pub result: Value,
    pub hold: Reservation,
}

impl From<Value> for Answer {
    fn from(result: Value) -> Self {
        Answer { result, hold: Reservation::default() }
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::internal(format!("encoding the result: {e}")))
}

impl Service {
    pub async fn handle(&self, id: &Value, req: Request, conn: &ConnHandle) -> Result<Answer, Error> {
        match req {
            Request::Exec(e) => self.exec(id, e, conn).await,
            Request::Fs { name, call } => self.fs(name, call).await,
            Request::Process { name, op } => self.process(id, name, op, conn).await.map(Answer::from),
            other => self.handle_plain(other).await.map(Answer::from),
        }
    }

    async fn handle_plain(&self, req: Request) -> Result<Value, Error> {
        let ctx = &self.ctx;
        match req {
            Request::Info => self.info().await,
            Request::List => to_value(self.registry(RegistryMsg::List).await?),
            Request::Get(name) => to_value(self.row(&name).await?),
            Request::Path(name) => Ok(json!({"path": self.row(&name).await?.path})),
            Request::Create { spec, or_get } => {
                let actor = self.project(&spec.name).await?;
                let p = ask(&actor, &format!("project {}", spec.name), ctx.lifecycle_timeout(), |reply| {
                    ProjectMsg::Create { spec, or_get, reply }
                })
                .await??;
                to_value(p)
            }
            Request::Start(name) => {
                let actor = self.project(&name).await?;
                to_value(ask(&actor, &format!("project {name}"), ctx.lifecycle_timeout(), ProjectMsg::Start).await??)
            }
            Request::Stop(name) => {
                let actor = self.project(&name).await?;
                to_value(ask(&actor, &format!("project {name}"), ctx.lifecycle_timeout(), ProjectMsg::Stop).await??)
            }
            Request::Snapshot(op) => self.snapshot(op).await,
            Request::Delete { name, purge, keep_snapshots } => {
                let actor = self.project(&name).await?;
                // Lifecycle calls queue behind each other in the project's actor (a create
                // may be pulling an image), so they all get the lifecycle bound.
                let archived = ask(&actor, &format!("project {name}"), ctx.lifecycle_timeout(), |reply| {
                    ProjectMsg::Delete { purge, keep_snapshots, reply }
                })
                .await??;
                Ok(match (archived, purge) {
                    (Some(path), _) => json!({"archived": path}),
                    (None, true) => json!({"purged": true}),
                    (None, false) => json!({}),
                })
            }
            Request::Status(name) => self.status(&name).await,
            Request::Logs { name, tail } => {
                let p = self.row(&name).await?;
                // The container's own log, where there is one; the keep-alive prints
                // nothing, so the project's recent activity comes with it.
                let logs = match p.status {
                    Status::Running | Status::Stopped if ctx.runtimes.docker_available() => {
                        ctx.runtimes.docker.logs(&name, tail).await.or_else(|e| match e {
                            RuntimeError::NotFound(_) => Ok(String::new()),
                            e => {
                                ctx.runtimes.note(&e);
                                Err(Error::from(e))
                            }
                        })?
                    }
                    Status::Running | Status::Stopped => {
                        return Err(Error::new(
                            ErrorKind::RuntimeUnavailable,
                            format!("cannot read the log of project {name}: its container engine does not answer"),
                        ))
                    }
                    _ => String::new(),
                };
                let limit = tail.map(|t| t.min(200) as usize).unwrap_or(50);
                let n = name.clone();
                let activity = self.registry(|r| RegistryMsg::Activity(n, limit, r)).await??;
                Ok(json!({"logs": logs, "activity": activity}))
            }
            Request::Exec(_) | Request::Fs { .. } | Request::Process { .. } => {
                Err(Error::internal("exec, fs and process requests are not plain requests"))
            }
            Request::Reconcile => {
                let j = self.janitor().await?;
                let changed =
                    ask(&j, "the janitor", ctx.lifecycle_timeout(), |r| JanitorMsg::Reconcile(Some(r))).await??;
                Ok(json!({"changed": changed}))
            }
            Request::ArchiveStale => {
                let j = self.janitor().await?;
                let archived =
                    ask(&j, "the janitor", ctx.lifecycle_timeout(), |r| JanitorMsg::ArchiveStale(Some(r))).await??;
                let stale_after = humantime::format_duration(ctx.config.janitor.stale_after.0).to_string();
                Ok(json!({"archived": archived, "stale_after": stale_after}))
            }
            Request::DebugPanic(name) => self.debug_panic(&name).await,
            Request::DebugSupervisor(what) => self.debug_supervisor(what).await,
            Request::DebugBusy { name, delay } => {
                let actor = self.project(&name).await?;
                actor
                    .cast(ProjectMsg::DebugBusy(delay))
                    .map_err(|e| Error::internal(format!("project {name}: {e}")))?;
                Ok(json!({}))
            }
            Request::DebugRetire { name, delay } => {
                let n = name.clone();
                let parked = ask(&self.supervisor, "the supervisor", ctx.short_timeout(), |r| {
                    SupervisorMsg::DebugRetire(n, delay, r)
                })
                .await?;
                Ok(json!({"parked": parked}))
            }
        }
    }

    /// `snapshot.*` and `project.fork`: each goes to the actor of the project it changes
    /// (a fork to the new project's, which asks the source's for what it needs).
    async fn snapshot(&self, op: SnapshotOp) -> Result<Value, Error> {
        let long = self.ctx.lifecycle_timeout();
        match op {
            SnapshotOp::Create { name, label } => {
                let actor = self.project(&name).await?;
                to_value(
                    ask(&actor, &format!("project {name}"), long, |reply| ProjectMsg::Snapshot { label, reply })
                        .await??,
                )
            }
            SnapshotOp::List(name) => {
                let all = self.registry(RegistryMsg::Snapshots).await?;
                let ready = all.into_iter().filter(|s| s.state == SnapshotState::Ready);
                let list: Vec<_> = match &name {
                    Some(n) => ready.filter(|s| &s.project == n).collect(),
                    None => ready.collect(),
                };
                if let Some(n) = &name {
                    // An unknown name is an error, unless snapshots of a deleted project
                    // were kept under it.
                    if list.is_empty() && self.row(n).await.is_err() {
                        return Err(Error::not_found(n));
                    }
                }
                to_value(list)
            }
            SnapshotOp::Restore { name, id } => {
                let actor = self.project(&name).await?;
                to_value(
                    ask(&actor, &format!("project {name}"), long, |reply| ProjectMsg::Restore { id, reply }).await??,
                )
            }
            SnapshotOp::Delete(id) => {
                let all = self.registry(RegistryMsg::Snapshots).await?;
                let s = all
                    .into_iter()
                    .find(|s| s.id == id)
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("snapshot {id} not found")))?;
                let actor = self.project(&s.project).await?;
                ask(&actor, &format!("project {}", s.project), long, |reply| ProjectMsg::DeleteSnapshot { id, reply })
                    .await??;
                Ok(json!({}))
            }
            SnapshotOp::Fork { from, name, snapshot } => {
                if from == name {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("project {name} already exists; a fork needs a new name"),
                    ));
                }
                let actor = self.project(&name).await?;
                to_value(
                    ask(&actor, &format!("project {name}"), long, |reply| ProjectMsg::Fork { from, snapshot, reply })
                        .await??,
                )
            }
        }
    }

    async fn registry<R: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<R>) -> RegistryMsg,
    ) -> Result<R, Error> {
        let reg = self.ctx.registry.get()?;
        ask(&reg, "the registry", self.ctx.short_timeout(), build).await
    }

    async fn row(&self, name: &ProjectName) -> Result<Project, Error> {
        let n = name.clone();
        self.registry(|r| RegistryMsg::Get(n, r)).await?.ok_or_else(|| Error::not_found(name))
    }

    async fn project(&self, name: &ProjectName) -> Result<ActorRef<ProjectMsg>, Error> {
        let n = name.clone();
        ask(&self.supervisor, "the supervisor", self.ctx.short_timeout(), |r| SupervisorMsg::Project(n, r)).await?
    }

    async fn janitor(&self) -> Result<ActorRef<JanitorMsg>, Error> {
        ask(&self.supervisor, "the supervisor", self.ctx.short_timeout(), SupervisorMsg::Janitor)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Busy, "the janitor is restarting; retry"))
    }

    /// Panics the project's actor and returns once the supervisor serves a fresh one, so
    /// that tests can rely on the restart having happened.
    async fn debug_panic(&self, name: &ProjectName) -> Result<Value, Error> {
        let old = self.project(name).await?;
        let _ = ask(&old, "project actor", self.ctx.short_timeout(), ProjectMsg::Panic).await;
        let deadline = Instant::now() + self.ctx.short_timeout();
        loop {
            if self.project(name).await?.get_id() != old.get_id() {
                return Ok(json!({"restarted": true}));
            }
            if Instant::now() > deadline {
                return Err(Error::internal(format!("the actor of project {name} was not restarted")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Debug hooks on the supervisor itself: `Panic` makes it fail (berthd must then exit
    /// non-zero), `Wedge` blocks its mailbox (the systemd watchdog must then go quiet).
    async fn debug_supervisor(&self, what: protocol::DebugSupervisor) -> Result<Value, Error> {
        let msg = match what {
            protocol::DebugSupervisor::Panic => SupervisorMsg::DebugPanic,
            protocol::DebugSupervisor::Wedge => SupervisorMsg::DebugWedge,
        };
        self.supervisor.cast(msg).map_err(|e| Error::internal(format!("the supervisor is not running: {e}")))?;
        Ok(json!({}))
    }

    async fn info(&self) -> Result<Value, Error> {
        let rt = &self.ctx.runtimes;
        let projects = self.registry(RegistryMsg::Count).await?;
        let (actors, handoffs) =
            ask(&self.supervisor, "the supervisor", self.ctx.short_timeout(), SupervisorMsg::CountProjects).await?;
        let mut docker = json!({"available": rt.docker_available()});
        if let (true, Some(v)) = (rt.docker_available(), rt.docker_version()) {
            docker["version"] = json!(v.version);
            docker["engine"] = json!(v.engine);
            docker["rootless"] = json!(v.rootless);
        }
        // Where commands run now: the host only where local execution is allowed.
        let runtime = match (rt.docker_available(), self.ctx.config.local.enabled) {
            (false, true) => RuntimeKind::Local,
            _ => RuntimeKind::Docker,
        };
        let quarantined = self.registry(RegistryMsg::Quarantined).await?;
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "runtime": runtime.as_str(),
            "quarantined": quarantined,
            "local_enabled": self.ctx.config.local.enabled,
            "docker": docker,
            "projects": projects,
            "project_actors": actors,
            "project_actor_handoffs": handoffs,
            "max_line": self.ctx.config.server.max_line.0,
            "max_output": self.ctx.config.exec.max_output.0,
        }))
    }

    async fn status(&self, name: &ProjectName) -> Result<Value, Error> {
        let p = self.row(name).await?;
        let rt = &self.ctx.runtimes;
        if !rt.docker_available() && matches!(p.status, Status::Running | Status::Stopped) {
            return Err(Error::new(
                ErrorKind::RuntimeUnavailable,
                format!("cannot read the status of project {name}: its container engine does not answer"),
            ));
        }
        let info = rt.primary().inspect(name).await.map_err(|e| {
            rt.note(&e);
            Error::from(e)
        })?;
        Ok(match info {
            Some(c) => {
                let agent = c.running && c.agent && rt.docker.agent_answers(name).await;
                json!({"container_id": c.container_id, "running": c.running, "image": c.image, "created": c.created, "agent": agent})
            }
            None => json!({
                "container_id": null,
                "running": false,
                "image": p.image.as_str(),
                "created": null,
                "runtime": rt.primary().kind().as_str(),
                "agent": false,
            }),
        })
    }

    async fn lease(&self, e: &ExecRequest, recheck: bool) -> Result<ExecLease, Error> {
        let ask_ = ExecAsk { local: e.local, tool: e.tool.clone(), recheck, engine_exec: e.engine_exec };
        self.lease_for(&e.name, true, ask_).await
    }

    /// The project ready for work (its container started or re-created if need be);
    /// with `auto_create` and `exec.auto_create`, an unknown project is created first.
    async fn lease_for(&self, name: &ProjectName, auto_create: bool, ask_: ExecAsk) -> Result<ExecLease, Error> {
        let auto_create = match self.ctx.config.exec.auto_create && auto_create {
            true => Some(CreateSpec {
                name: name.clone(),
                image: None,
                description: String::new(),
                env: Default::default(),
                ports: Default::default(),
                limits: self.ctx.config.container_policy().resolve(&Default::default())?,
            }),
            false => None,
        };
        let actor = self.project(name).await?;
        ask(&actor, &format!("project {name}"), self.ctx.lifecycle_timeout(), |reply| ProjectMsg::PrepareExec {
            auto_create,
            ask: ask_,
            reply,
        })
        .await?
    }

    async fn exec(&self, id: &Value, e: ExecRequest, conn: &ConnHandle) -> Result<Answer, Error> {
        let started = Instant::now();
        let at = time::OffsetDateTime::now_utc();
        let res = self.exec_leased(id, &e, conn, started).await;
        // The project's activity log (shown by `berth logs`): every exec that got a lease.
        let runtime = match &res {
            Ok((_, r)) | Err((_, r)) => *r,
        };
        if let Some(runtime) = runtime {
            let result = res.as_ref().ok().map(|(a, _)| &a.result);
            let activity = Activity {
                project: e.name.clone(),
                at,
                uid: conn.uid,
                command: shortened(&e.argv, ACTIVITY_COMMAND_BYTES),
                exit_code: result.filter(|r| r["timed_out"] != true).and_then(|r| r["exit_code"].as_i64()),
                duration_ms: started.elapsed().as_millis() as u64,
                runtime: runtime.as_str().to_string(),
                timed_out: result.is_some_and(|r| r["timed_out"] == true),
            };
            if let Ok(reg) = self.ctx.registry.get() {
                let _ = reg.cast(RegistryMsg::Record(activity));
            }
        }
        res.map(|(a, _)| a).map_err(|(e, _)| e)
    }

    /// Runs one exec; says which runtime it got (none if it never got a lease).
    async fn exec_leased(
        &self,
        id: &Value,
        e: &ExecRequest,
        conn: &ConnHandle,
        started: Instant,
    ) -> Result<(Answer, Option<RuntimeKind>), (Error, Option<RuntimeKind>)> {
        let e = e.clone();
        let mut lease = self.lease(&e, false).await.map_err(|err| (err, None))?;
        let auto_created = lease.auto_created;
        let mut retried = false;
        loop {
            let outcome = self.run(id, &e, &lease, conn).await;
            match outcome {
                // The container was stopped or removed behind berth's back since the actor
                // last looked: have it start or re-create the container, once.
                Err(RuntimeError::NotFound(_) | RuntimeError::Conflict(_))
                    if lease.runtime == RuntimeKind::Docker && !retried =>
                {
                    retried = true;
                    let kind = lease.runtime;
                    drop(lease);
                    lease = self.lease(&e, true).await.map_err(|err| (err, Some(kind)))?;
                }
                Err(err) => {
                    self.ctx.runtimes.note(&err);
                    return Err((err.into(), Some(lease.runtime)));
                }
                Ok(mut o) => {
                    let what = format!("{:?} in project {}", e.argv[0], e.name);
                    if o.cancelled {
                        let by_client = conn.gone.is_cancelled();
                        let why = match by_client {
                            true => "the connection closed (or berthd is shutting down)",
                            false => "the project was stopped or deleted",
                        };
                        // A stop or delete takes the container, and every process in it,
                        // right after cancelling its execs: a kill that raced it is moot.
                        let fate = match (&o.kill_error, by_client) {
                            (Some(k), true) => format!("it could NOT be killed ({k}) and may still run"),
                            _ => "it was killed".to_string(),
                        };
                        let err = Error::new(ErrorKind::RuntimeError, format!("{why} while {what} ran; {fate}"));
                        return Err((err, Some(lease.runtime)));
                    }
                    if let (true, Some(k)) = (o.timed_out, &o.kill_error) {
                        let err = Error::new(
                            ErrorKind::RuntimeError,
                            format!("{what} timed out, but it could NOT be killed ({k}) and may still run"),
                        );
                        return Err((err, Some(lease.runtime)));
                    }
                    let mut result = protocol::exec_result(&o, started.elapsed(), lease.runtime);
                    if auto_created {
                        result["auto_created"] = json!({"image": lease.project.image.as_str()});
                    }
                    let hold = std::mem::take(&mut o.hold);
                    return Ok((Answer { result, hold }, Some(lease.runtime)));
                }
            }
        }
    }

    async fn run(
        &self,
        id: &Value,
        e: &ExecRequest,
        lease: &ExecLease,
        conn: &ConnHandle,
    ) -> Result<crate::runtime::ExecOutcome, RuntimeError> {
        let cfg = &self.ctx.config.exec;
        let spec = ExecSpec {
            argv: e.argv.clone(),
            workdir: e.workdir.clone(),
            env: lease.project.env.merged(&e.env),
            timeout: e.timeout.unwrap_or(cfg.default_timeout.0),
            stdin: e.stdin.clone(),
            engine_exec: e.engine_exec,
        };
        let runtime = match lease.runtime {
            RuntimeKind::Docker => &self.ctx.runtimes.docker,
            RuntimeKind::Local => &self.ctx.runtimes.local,
        };
        // One token for this exec: cancelled by the project (stop, delete) or by the
        // connection closing.
        let cancel = lease.cancel.child_token();
        let watch = {
            let (gone, cancel) = (conn.gone.clone(), cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = gone.cancelled() => cancel.cancel(),
                    _ = cancel.cancelled() => {}
                }
            })
        };
        let (live, forwarder) = if e.stream {
            let (tx, rx) = mpsc::channel::<Chunk>(16);
            (Some(tx), Some(tokio::spawn(forward(id.clone(), rx, conn.out.clone()))))
        } else {
            (None, None)
        };
        let capture = Capture::new(cfg.max_output.0 as usize, live, self.ctx.budget.clone());
        let res = runtime.exec(&e.name, &lease.project.path, spec, capture, cancel.clone()).await;
        // Notifications go out before the response.
        if let Some(f) = forwarder {
            let _ = f.await;
        }
        watch.abort();
        res
    }
}

/// How long one call to a project's agent may take (besides any wait it asks for).
const AGENT_CALL: Duration = Duration::from_secs(60);
/// The most output the agent keeps per stream of a background process.
const PROCESS_KEEP_MAX: u64 = 16 << 20;
/// How long one `process.output` follow or `process.wait` round waits at the agent.
const WAIT_ROUND: Duration = Duration::from_secs(30);

impl Service {
    /// `fs.*`: in the container through its agent, or on the host inside the workspace.
    async fn fs(&self, name: ProjectName, call: FsCall) -> Result<Answer, Error> {
        let ask_ = ExecAsk { local: false, tool: None, recheck: false, engine_exec: false };
        let lease = self.lease_for(&name, false, ask_).await?;
        let runtime = match lease.runtime {
            RuntimeKind::Docker => &self.ctx.runtimes.docker,
            RuntimeKind::Local => &self.ctx.runtimes.local,
        };
        let path = call.path().clone();
        let listing = matches!(call, FsCall::List { .. });
        let writing = matches!(call, FsCall::Write { .. });
        // Data read is held (reserved before each piece is read) until the response is
        // written, like exec output.
        let mut hold = self.ctx.budget.reserve(0);
        let reply = runtime.fs(&name, &lease.project.path, call, AGENT_CALL, &mut hold).await?;
        drop(lease);
        Ok(match reply {
            FsReply::Data { data, size, eof } => Answer { result: protocol::read_json(&path, &data, size, eof), hold },
            FsReply::Entries(entries) if listing => {
                Value::Array(entries.iter().map(protocol::entry_json).collect()).into()
            }
            FsReply::Entries(entries) => match entries.first() {
                Some(e) => protocol::entry_json(e).into(),
                None => return Err(Error::internal(format!("stat of {path} returned no entry"))),
            },
            FsReply::Done { size } if writing => json!({"path": path.as_str(), "size": size}).into(),
            FsReply::Done { .. } => json!({}).into(),
        })
    }
}

impl Service {
    /// `process.*`: the project's background processes, held by its container's agent.
    async fn process(&self, id: &Value, name: ProjectName, op: ProcessOp, conn: &ConnHandle) -> Result<Value, Error> {
        if let ProcessOp::Spawn { argv, workdir, env, stdin } = op {
            let ask_ = ExecAsk { local: false, tool: None, recheck: false, engine_exec: false };
            let lease = self.lease_for(&name, true, ask_).await?;
            let runtime = match lease.runtime {
                RuntimeKind::Docker => &self.ctx.runtimes.docker,
                RuntimeKind::Local => &self.ctx.runtimes.local,
            };
            let agent = runtime.agent(&name).await?;
            let spec = SpawnSpec {
                env: lease.project.env.merged(&env).iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                argv,
                workdir: workdir.map(|w| w.as_str().to_string()).unwrap_or_else(|| WORKSPACE_IN_CONTAINER.into()),
                stdin,
                keep: self.ctx.config.exec.max_output.0.min(PROCESS_KEEP_MAX) as u32,
            };
            let info = agent.spawn(spec, AGENT_CALL).await?;
            return Ok(protocol::process_json(&name, &info));
        }
        // Everything else is about processes that exist: nothing is started for them.
        let p = self.row(&name).await?;
        let rt = &self.ctx.runtimes;
        if !rt.docker_available() && !rt.docker.agent_connected(&name) {
            // The project runs on the host now, or nowhere: either way no agent to ask.
            return Err(Error::new(
                ErrorKind::RuntimeUnavailable,
                format!(
                    "no container engine answers, and the background processes of project {name} are held by its \
                     container's berth-agent"
                ),
            ));
        }
        let no_container = p.status != Status::Running;
        let agent = match no_container {
            true => None,
            false => Some(self.ctx.runtimes.docker.agent(&name).await?),
        };
        let not_running = |pid: u32| {
            Error::new(
                ErrorKind::NotFound,
                format!("no background process {pid} in project {name}: its container is not running"),
            )
        };
        match op {
            ProcessOp::Spawn { .. } => Err(Error::internal("spawn handled above")),
            ProcessOp::List => match agent {
                None => Ok(json!([])),
                Some(a) => {
                    let procs = a.proc_list(AGENT_CALL).await?;
                    Ok(Value::Array(procs.iter().map(|i| protocol::process_json(&name, i)).collect()))
                }
            },
            ProcessOp::Wait { id: pid, timeout } => {
                let a = agent.ok_or_else(|| not_running(pid))?;
                let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
                loop {
                    let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
                    let round = left.unwrap_or(WAIT_ROUND).min(WAIT_ROUND);
                    let info = a.proc_wait(pid, round, AGENT_CALL, &conn.gone).await?;
                    if !info.running || left.is_some_and(|l| l <= round) {
                        return Ok(protocol::process_json(&name, &info));
                    }
                }
            }
            ProcessOp::Kill { id: pid, signal, grace } => {
                let a = agent.ok_or_else(|| not_running(pid))?;
                Ok(protocol::process_json(&name, &a.proc_kill(pid, signal, grace, AGENT_CALL).await?))
            }
            ProcessOp::Input { id: pid, data, close } => {
                let a = agent.ok_or_else(|| not_running(pid))?;
                a.proc_input(pid, &data, close, AGENT_CALL).await?;
                Ok(json!({}))
            }
            ProcessOp::Output { id: pid, offsets, follow, limit } => {
                let a = agent.ok_or_else(|| not_running(pid))?;
                match follow {
                    false => {
                        let mut out = a.proc_output(pid, offsets, limit, Duration::ZERO, AGENT_CALL).await?;
                        let (mut o, mut e) = (std::mem::take(&mut out.stdout), std::mem::take(&mut out.stderr));
                        if out.info.running || o.len() == limit as usize {
                            protocol::whole_chars(&mut o);
                        }
                        if out.info.running || e.len() == limit as usize {
                            protocol::whole_chars(&mut e);
                        }
                        Ok(protocol::process_output_json(&out, &o, &e, out.dropped))
                    }
                    true => self.follow(id, &a, pid, offsets, limit, conn).await,
                }
            }
        }
    }

    /// Streams a process's output as `process.output` notifications until it ends (or
    /// the client goes away); the response carries the final offsets.
    async fn follow(
        &self,
        id: &Value,
        agent: &Arc<AgentConn>,
        pid: u32,
        mut offsets: (u64, u64),
        limit: u32,
        conn: &ConnHandle,
    ) -> Result<Value, Error> {
        let mut dropped = 0;
        loop {
            let round = agent.proc_output(pid, offsets, limit, WAIT_ROUND, AGENT_CALL);
            let mut out = tokio::select! {
                r = round => r?,
                _ = conn.gone.cancelled() => return Err(Error::new(ErrorKind::RuntimeError, "the client went away")),
            };
            dropped += out.dropped;
            let ended = !out.info.running;
            let mut sent = false;
            for (stream, data) in [(StreamKind::Stdout, &mut out.stdout), (StreamKind::Stderr, &mut out.stderr)] {
                if !ended || data.len() == limit as usize {
                    protocol::whole_chars(data);
                }
                if data.is_empty() {
                    continue;
                }
                sent = true;
                let hold = self.ctx.budget.reserve(data.len());
                let line = protocol::process_notification(id, stream, data);
                if conn.out.send(Outgoing { line, hold }).await.is_err() {
                    return Err(Error::new(ErrorKind::RuntimeError, "the client went away"));
                }
            }
            offsets = (out.stdout_offset + out.stdout.len() as u64, out.stderr_offset + out.stderr.len() as u64);
            if ended && !sent {
                out.stdout_offset = offsets.0;
                out.stderr_offset = offsets.1;
                return Ok(protocol::process_output_json(&out, &[], &[], dropped));
            }
        }
    }
}

/// How much of a command the activity log keeps.
const ACTIVITY_COMMAND_BYTES: usize = 4096;

/// `argv` cut to about `max` bytes (whole arguments, the last one cut at a character
/// boundary), saying how much was left out.
fn shortened(argv: &[String], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = 0;
    for (i, a) in argv.iter().enumerate() {
        if used + a.len() <= max {
            used += a.len();
            out.push(a.clone());
            continue;
        }
        let mut cut = max.saturating_sub(used);
        while !a.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest: usize = a.len() - cut + argv[i + 1..].iter().map(String::len).sum::<usize>();
        out.push(format!("{}… ({rest} more bytes)", &a[..cut]));
        break;
    }
    out
}

/// Forwards live output as `exec.output` notifications, keeping characters whole. Each
/// notification holds its chunk's budget until the connection has written it.
async fn forward(id: Value, mut rx: mpsc::Receiver<Chunk>, out: mpsc::Sender<Outgoing>) {
    let mut carry = [Utf8Carry::default(), Utf8Carry::default()];
    while let Some(chunk) = rx.recv().await {
        let slot = chunk.stream as usize;
        let ready = carry[slot].feed(&chunk.data);
        if ready.is_empty() {
            continue;
        }
        let line = protocol::output_notification(&id, chunk.stream, &ready);
        if out.send(Outgoing { line, hold: chunk.hold }).await.is_err() {
            return;
        }
    }
    for (slot, stream) in
        [crate::runtime::StreamKind::Stdout, crate::runtime::StreamKind::Stderr].into_iter().enumerate()
    {
        let rest = carry[slot].finish();
        if !rest.is_empty() {
            let line = protocol::output_notification(&id, stream, &rest);
            let _ = out.send(Outgoing { line, hold: Reservation::default() }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_activity_log_keeps_a_bounded_command() {
        let short = vec!["echo".to_string(), "hi".to_string()];
        assert_eq!(shortened(&short, 4096), short);
        let long: Vec<String> =
            std::iter::once("true".to_string()).chain(std::iter::repeat_n("é".repeat(1000), 10)).collect();
        let s = shortened(&long, 4096);
        assert!(s.iter().map(String::len).sum::<usize>() < 4200, "{}", s.len());
        assert!(s.last().unwrap().contains("more bytes"), "{s:?}");
        assert_eq!(s[0], "true");
    }
}
