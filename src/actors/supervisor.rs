//! The root supervisor: spawns the registry, the janitor and the project actors linked
//! under itself, hands out project actors by name, and restarts any child that fails.
//!
//! A failed project actor is respawned with exponential backoff (its state is rebuilt
//! from the registry and the engine); other projects never notice. A project actor not
//! handed out for `janitor.retire_actors_after` is asked to retire, so memory follows the
//! active projects, not the registered ones: while it retires, requests for it wait here
//! and go to its successor. The supervisor does no engine or disk work itself, so its
//! mailbox stays quick.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent};

use super::janitor::{JanitorActor, JanitorArgs, JanitorMsg};
use super::project::{ProjectActor, ProjectArgs, ProjectMsg};
use super::registry::RegistryActor;
use super::Ctx;
use crate::error::Error;
use crate::model::ProjectName;

pub struct Supervisor;

pub struct SupervisorArgs {
    pub ctx: Arc<Ctx>,
    pub state_dir: PathBuf,
}

pub struct SupervisorState {
    ctx: Arc<Ctx>,
    state_dir: PathBuf,
    registry_id: ActorId,
    janitor: Option<ActorRef<JanitorMsg>>,
    projects: HashMap<ProjectName, Entry>,
    names: HashMap<ActorId, ProjectName>,
    /// Recent failures per project: (count within the window, time of the last one).
    failures: HashMap<ProjectName, (u32, Instant)>,
    /// Actors retired since memory was last handed back to the system.
    retired: usize,
    /// Parked requests answered so far.
    handoffs: u64,
    /// berthd is shutting down: children that stop are not restarted.
    stopping: bool,
}

type ProjectReply = RpcReplyPort<Result<ActorRef<ProjectMsg>, Error>>;

/// A live project actor.
struct Entry {
    actor: ActorRef<ProjectMsg>,
    last_handout: Instant,
    /// Set by the actor while it works on a message (a long image pull, say): a busy
    /// actor is never asked to retire.
    busy: Arc<AtomicBool>,
    /// `Some` while the actor is asked to retire: requests for the project wait here and
    /// are answered by the actor (if it declines) or its successor.
    parked: Option<Vec<ProjectReply>>,
}

pub enum SupervisorMsg {
    /// The project's actor, spawned if it is not running.
    Project(ProjectName, ProjectReply),
    /// How many project actors are alive, and how many requests were handed over from a
    /// retiring actor to its successor (or back to it, when it declined) so far.
    CountProjects(RpcReplyPort<(usize, u64)>),
    /// Debug hook: park the project's requests now and ask its actor to retire after
    /// the delay (a retirement that takes that long). Replies whether there was an actor.
    DebugRetire(ProjectName, Duration, RpcReplyPort<bool>),
    /// Timer: ask project actors idle past `retire_actors_after` to retire.
    RetireIdle,
    /// A project actor kept itself alive (an exec of its project is running).
    RetireDeclined(ProjectName, ActorId),
    Janitor(RpcReplyPort<Option<ActorRef<JanitorMsg>>>),
    /// Respawns a failed project actor once its backoff has passed.
    Respawn(ProjectName),
    RespawnJanitor,
    /// Answers if the supervisor's mailbox is moving (the systemd watchdog asks this).
    Ping(RpcReplyPort<()>),
    /// berthd is shutting down: stop every child, and restart none of them.
    Shutdown(RpcReplyPort<()>),
    /// Debug hook: fail the supervisor (berthd must exit non-zero).
    DebugPanic,
    /// Debug hook: block the supervisor's mailbox (the watchdog must go quiet).
    DebugWedge,
}

const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Backoff before the `n`th respawn within the window: 0, 100 ms, 200 ms, ... 30 s.
pub fn backoff(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    (Duration::from_millis(100) * 2u32.saturating_pow(n.saturating_sub(2).min(16))).min(MAX_BACKOFF)
}

impl SupervisorState {
    /// Spawns the project's actor (there is no live one) and answers whatever requests
    /// were parked for the one it replaces.
    async fn spawn_project(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        name: &ProjectName,
    ) -> Result<ActorRef<ProjectMsg>, Error> {
        let parked = match self.projects.remove(name) {
            Some(old) => {
                self.names.remove(&old.actor.get_id());
                old.parked.unwrap_or_default()
            }
            None => Vec::new(),
        };
        let busy = Arc::new(AtomicBool::new(false));
        let args =
            ProjectArgs { name: name.clone(), ctx: self.ctx.clone(), supervisor: me.clone(), busy: busy.clone() };
        let res = Actor::spawn_linked(None, ProjectActor, args, me.get_cell())
            .await
            .map(|(actor, _)| actor)
            .map_err(|e| Error::internal(format!("cannot start the actor of project {name}: {e}")));
        if let Ok(actor) = &res {
            self.names.insert(actor.get_id(), name.clone());
            self.projects
                .insert(name.clone(), Entry { actor: actor.clone(), last_handout: Instant::now(), busy, parked: None });
        }
        self.handoffs += parked.len() as u64;
        for reply in parked {
            let _ = reply.send(res.clone());
        }
        res
    }

    /// Hands out the project's live actor, or parks the request while it retires, or
    /// spawns one.
    async fn project(&mut self, me: &ActorRef<SupervisorMsg>, name: ProjectName, reply: ProjectReply) {
        if let Some(e) = self.projects.get_mut(&name) {
            // A failed actor stays in the map until its supervision event arrives; never
            // hand it out in that window.
            if matches!(e.actor.get_status(), ActorStatus::Starting | ActorStatus::Running) {
                match &mut e.parked {
                    Some(parked) => parked.push(reply),
                    None => {
                        e.last_handout = Instant::now();
                        let _ = reply.send(Ok(e.actor.clone()));
                    }
                }
                return;
            }
        }
        let _ = reply.send(self.spawn_project(me, &name).await);
    }

    fn retire_idle(&mut self) {
        let Some(after) = self.ctx.config.janitor.retire_actors_after.0 else { return };
        if self.retired > 0 {
            // The allocator keeps freed memory for reuse; give back what the retired
            // actors held, so that RSS follows the active projects.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            unsafe {
                libc::malloc_trim(0);
            }
            self.retired = 0;
        }
        for e in self.projects.values_mut() {
            if e.parked.is_none()
                && e.last_handout.elapsed() >= after
                && !e.busy.load(Ordering::SeqCst)
                && e.actor.cast(ProjectMsg::Retire).is_ok()
            {
                e.parked = Some(Vec::new());
            }
        }
    }

    async fn spawn_janitor(&mut self, me: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        let args = JanitorArgs { ctx: self.ctx.clone(), supervisor: me.clone() };
        let (j, _) = Actor::spawn_linked(None, JanitorActor, args, me.get_cell()).await?;
        self.janitor = Some(j);
        Ok(())
    }

    fn record_failure(&mut self, name: &ProjectName) -> u32 {
        let now = Instant::now();
        let entry = self.failures.entry(name.clone()).or_insert((0, now));
        if now.duration_since(entry.1) > FAILURE_WINDOW {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        entry.0
    }
}

async fn spawn_registry(ctx: &Ctx, state_dir: PathBuf, me: ActorCell) -> Result<ActorId, ActorProcessingErr> {
    let (reg, _) = Actor::spawn_linked(None, RegistryActor, state_dir, me).await?;
    let id = reg.get_id();
    ctx.registry.set(reg);
    Ok(id)
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let registry_id = spawn_registry(&args.ctx, args.state_dir.clone(), me.get_cell()).await?;
        Ok(SupervisorState {
            ctx: args.ctx,
            state_dir: args.state_dir,
            registry_id,
            janitor: None,
            projects: HashMap::new(),
            names: HashMap::new(),
            failures: HashMap::new(),
            retired: 0,
            handoffs: 0,
            stopping: false,
        })
    }

    async fn post_start(&self, me: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(after) = st.ctx.config.janitor.retire_actors_after.0 {
            let every = (after / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
            me.send_interval(every, || SupervisorMsg::RetireIdle);
        }
        st.spawn_janitor(&me).await
    }

    async fn handle(
        &self,
        me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Project(name, reply) => st.project(&me, name, reply).await,
            SupervisorMsg::CountProjects(reply) => {
                let _ = reply.send((st.projects.len(), st.handoffs));
            }
            SupervisorMsg::DebugRetire(name, delay, reply) => {
                let parked = match st.projects.get_mut(&name) {
                    Some(e) if e.parked.is_none() => {
                        e.parked = Some(Vec::new());
                        let actor = e.actor.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = actor.cast(ProjectMsg::Retire);
                        });
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(parked);
            }
            SupervisorMsg::RetireIdle => st.retire_idle(),
            SupervisorMsg::RetireDeclined(name, id) => {
                if let Some(e) = st.projects.get_mut(&name).filter(|e| e.actor.get_id() == id) {
                    e.last_handout = Instant::now();
                    let parked = e.parked.take().unwrap_or_default();
                    st.handoffs += parked.len() as u64;
                    for reply in parked {
                        let _ = reply.send(Ok(e.actor.clone()));
                    }
                }
            }
            SupervisorMsg::Janitor(reply) => {
                let _ = reply.send(st.janitor.clone());
            }
            SupervisorMsg::Respawn(name) => {
                if !st.projects.contains_key(&name) {
                    if let Err(e) = st.spawn_project(&me, &name).await {
                        tracing::error!(project = %name, error = %e, "respawn failed; the next request retries");
                    }
                }
            }
            SupervisorMsg::RespawnJanitor => {
                if st.janitor.is_none() {
                    st.spawn_janitor(&me).await?;
                }
            }
            SupervisorMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            SupervisorMsg::Shutdown(reply) => {
                st.stopping = true;
                me.stop_children(None);
                let _ = reply.send(());
            }
            SupervisorMsg::DebugPanic => panic!("injected panic in the supervisor"),
            SupervisorMsg::DebugWedge => {
                tracing::warn!("debug hook: the supervisor's mailbox is blocked for an hour");
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if st.stopping {
            tracing::debug!(actor = %id, "child stopped during shutdown");
            return Ok(());
        }
        if id == st.registry_id {
            // The registry's state is the database: a fresh actor reloads it.
            tracing::error!(reason = failure.as_deref().unwrap_or("stopped"), "registry actor exited; restarting it");
            st.registry_id = spawn_registry(&st.ctx, st.state_dir.clone(), me.get_cell()).await?;
        } else if st.janitor.as_ref().is_some_and(|j| j.get_id() == id) {
            st.janitor = None;
            tracing::error!(reason = failure.as_deref().unwrap_or("stopped"), "janitor exited; restarting it");
            me.send_after(Duration::from_secs(1), || SupervisorMsg::RespawnJanitor);
        } else if let Some(name) = st.names.remove(&id) {
            // Only handle the map entry if it is still this actor (a request may already
            // have replaced it).
            let waiting = st
                .projects
                .get(&name)
                .filter(|e| e.actor.get_id() == id)
                .map(|e| e.parked.as_ref().is_some_and(|p| !p.is_empty()));
            if let Some(waiting) = waiting {
                if waiting {
                    // Requests are waiting for this project: serve them from a new actor now.
                    if let Err(e) = st.spawn_project(&me, &name).await {
                        tracing::error!(project = %name, error = %e, "could not replace a project actor");
                    }
                } else {
                    st.projects.remove(&name);
                }
            }
            match failure {
                Some(reason) => {
                    let n = st.record_failure(&name);
                    let delay = backoff(n);
                    tracing::error!(project = %name, %reason, failures = n, ?delay, "project actor failed; restarting it");
                    me.send_after(delay, move || SupervisorMsg::Respawn(name));
                }
                None => {
                    st.retired += 1;
                    tracing::debug!(project = %name, "project actor retired");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(1600));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
