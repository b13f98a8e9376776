//! What each request does: the bridge from a decoded `Request` to the actors and runtimes.
//!
//! Lifecycle changes go to the project's actor; reads are answered from the registry's
//! memory (and the engine, for live status and logs) without entering any project's
//! mailbox; an exec gets a lease from its project actor and then runs here, in the
//! connection's task, so it never blocks an actor.

use std::sync::Arc;
use std::time::Instant;

use ractor::ActorRef;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, ExecRequest, Request, Utf8Carry};
use crate::actors::janitor::JanitorMsg;
use crate::actors::project::{ExecLease, Placement, ProjectMsg};
use crate::actors::registry::RegistryMsg;
use crate::actors::supervisor::SupervisorMsg;
use crate::actors::{ask, Ctx};
use crate::error::{Error, ErrorKind};
use crate::model::{CreateSpec, Project, ProjectName, Status};
use crate::runtime::{Chunk, ExecSpec, RuntimeError, RuntimeKind};

pub struct Service {
    pub ctx: Arc<Ctx>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

/// What a request may use of its connection: where notifications go and the token that
/// is cancelled when the client goes away.
#[derive(Clone)]
pub struct ConnHandle {
    pub out: mpsc::Sender<String>,
    pub gone: CancellationToken,
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::internal(format!("encoding the result: {e}")))
}

impl Service {
    pub async fn handle(&self, id: &Value, req: Request, conn: &ConnHandle) -> Result<Value, Error> {
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
            Request::Delete { name, purge } => {
                let actor = self.project(&name).await?;
                // Lifecycle calls queue behind each other in the project's actor (a create
                // may be pulling an image), so they all get the lifecycle bound.
                ask(&actor, &format!("project {name}"), ctx.lifecycle_timeout(), |reply| ProjectMsg::Delete {
                    purge,
                    reply,
                })
                .await??;
                Ok(json!({}))
            }
            Request::Status(name) => self.status(&name).await,
            Request::Logs { name, tail } => {
                self.row(&name).await?;
                let logs = ctx.runtimes.primary().logs(&name, tail).await.map_err(|e| {
                    ctx.runtimes.note(&e);
                    Error::from(e)
                })?;
                Ok(json!({"logs": logs}))
            }
            Request::Exec(e) => self.exec(id, e, conn).await,
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
                Ok(json!({"archived": archived}))
            }
            Request::DebugPanic(name) => self.debug_panic(&name).await,
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

    async fn info(&self) -> Result<Value, Error> {
        let rt = &self.ctx.runtimes;
        let projects = self.registry(RegistryMsg::Count).await?;
        let actors =
            ask(&self.supervisor, "the supervisor", self.ctx.short_timeout(), SupervisorMsg::CountProjects).await?;
        let mut docker = json!({"available": rt.docker_available()});
        if let (true, Some(v)) = (rt.docker_available(), rt.docker_version()) {
            docker["version"] = json!(v);
        }
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "runtime": rt.primary().kind().as_str(),
            "docker": docker,
            "projects": projects,
            "project_actors": actors,
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
                json!({"container_id": c.container_id, "running": c.running, "image": c.image, "created": c.created})
            }
            None => json!({
                "container_id": null,
                "running": false,
                "image": p.image.as_str(),
                "created": null,
                "runtime": rt.primary().kind().as_str(),
            }),
        })
    }

    /// Where an exec runs: locally when asked; for a named tool, in the container only if
    /// routing lists it and the engine answers; otherwise the project actor decides.
    fn placement(&self, e: &ExecRequest) -> Placement {
        if e.local {
            return Placement::Local;
        }
        match &e.tool {
            Some(tool) if self.ctx.config.routing.container_tools.iter().any(|t| t == tool) => {
                Placement::ContainerIfAvailable
            }
            Some(_) => Placement::Local,
            None => Placement::Auto,
        }
    }

    async fn lease(&self, e: &ExecRequest, place: Placement) -> Result<ExecLease, Error> {
        let auto_create = self.ctx.config.exec.auto_create.then(|| CreateSpec {
            name: e.name.clone(),
            image: None,
            description: String::new(),
            env: Default::default(),
            ports: Default::default(),
            limits: Default::default(),
        });
        let actor = self.project(&e.name).await?;
        ask(&actor, &format!("project {}", e.name), self.ctx.lifecycle_timeout(), |reply| ProjectMsg::PrepareExec {
            auto_create,
            place,
            reply,
        })
        .await?
    }

    async fn exec(&self, id: &Value, e: ExecRequest, conn: &ConnHandle) -> Result<Value, Error> {
        let started = Instant::now();
        let mut lease = self.lease(&e, self.placement(&e)).await?;
        let mut retried = false;
        loop {
            let outcome = self.run(id, &e, &lease, conn).await;
            match outcome {
                // The container was stopped or removed behind berth's back since the actor
                // last looked: have it start or re-create the container, once.
                Err(RuntimeError::Engine(msg))
                    if lease.runtime == RuntimeKind::Docker && !retried && container_missing(&msg) =>
                {
                    retried = true;
                    drop(lease);
                    lease = self.lease(&e, Placement::Recheck).await?;
                }
                Err(err) => {
                    self.ctx.runtimes.note(&err);
                    return Err(err.into());
                }
                Ok(o) => {
                    if o.cancelled {
                        let why = if conn.gone.is_cancelled() {
                            "the connection closed (or berthd is shutting down)"
                        } else {
                            "the project was stopped or deleted"
                        };
                        return Err(Error::new(
                            ErrorKind::RuntimeError,
                            format!("{why} while {:?} ran in project {}; it was killed", e.argv[0], e.name),
                        ));
                    }
                    return Ok(protocol::exec_result(&o, started.elapsed(), lease.runtime));
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
            max_output: cfg.max_output.0 as usize,
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
        let res = runtime.exec(&e.name, &lease.project.path, spec, live, cancel.clone()).await;
        // Notifications go out before the response.
        if let Some(f) = forwarder {
            let _ = f.await;
        }
        watch.abort();
        res
    }
}

/// Forwards live output as `exec.output` notifications, keeping characters whole.
async fn forward(id: Value, mut rx: mpsc::Receiver<Chunk>, out: mpsc::Sender<String>) {
    let mut carry = [Utf8Carry::default(), Utf8Carry::default()];
    while let Some(chunk) = rx.recv().await {
        let slot = chunk.stream as usize;
        let ready = carry[slot].feed(&chunk.data);
        if !ready.is_empty() && out.send(protocol::output_notification(&id, chunk.stream, &ready)).await.is_err() {
            return;
        }
    }
    for (slot, stream) in
        [crate::runtime::StreamKind::Stdout, crate::runtime::StreamKind::Stderr].into_iter().enumerate()
    {
        let rest = carry[slot].finish();
        if !rest.is_empty() {
            let _ = out.send(protocol::output_notification(&id, stream, &rest)).await;
        }
    }
}

fn container_missing(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("is not running") || m.contains("no such container") || m.contains("is paused")
}
