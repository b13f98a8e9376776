//! The janitor: keeps the registry and the engine in agreement, on a schedule.
//!
//! Every `reconcile_interval` it pings the engine, reads the rows and then lists berth's
//! containers in one call (that order matters: see `observe`), and asks each project
//! whose row disagrees to converge (the project actor makes the
//! change, so lifecycle stays serialised); labelled containers without a row are adopted,
//! never destroyed. Every `archive_interval` it archives projects idle longer than
//! `stale_after`, and with `idle_stop_after` set it stops idle containers. It never
//! touches the engine or the disk for a project directly.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use super::project::{Change, ProjectMsg};
use super::registry::RegistryMsg;
use super::supervisor::SupervisorMsg;
use super::{ask, Ctx};
use crate::error::Error;
use crate::model::{Pending, Project, ProjectName, Status};
use crate::runtime::ContainerInfo;
use crate::snapshot::SnapshotState;

pub struct JanitorActor;

pub struct JanitorArgs {
    pub ctx: Arc<Ctx>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

pub struct JanitorState {
    ctx: Arc<Ctx>,
    supervisor: ActorRef<SupervisorMsg>,
    timers: Vec<JoinHandle<()>>,
}

pub enum JanitorMsg {
    Reconcile(Option<RpcReplyPort<Result<Vec<Change>, Error>>>),
    ArchiveStale(Option<RpcReplyPort<Result<Vec<String>, Error>>>),
    IdleStop,
    /// Pings the engine; reconciles when it has just come back.
    PingEngine,
}

/// How often the engine is pinged to notice it going away or coming back.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

impl JanitorState {
    async fn rows(&self) -> Result<Vec<Project>, Error> {
        let reg = self.ctx.registry.get()?;
        ask(&reg, "the registry", self.ctx.short_timeout(), RegistryMsg::List).await
    }

    async fn project(&self, name: &ProjectName) -> Result<ActorRef<ProjectMsg>, Error> {
        let n = name.clone();
        ask(&self.supervisor, "the supervisor", self.ctx.short_timeout(), |r| SupervisorMsg::Project(n, r)).await?
    }

    async fn reconcile(&self) -> Result<Vec<Change>, Error> {
        let rt = &self.ctx.runtimes;
        // The one list call doubles as the engine check; a ping is only needed to learn
        // the version when the engine was not known to be up.
        if !rt.docker_available() && !rt.refresh().await {
            return self.settle_creating().await;
        }
        let (rows, listed) = observe(self.rows(), rt.docker.list()).await?;
        let containers = match listed {
            Ok(c) => c,
            Err(e) => {
                rt.note(&e);
                return match e {
                    crate::runtime::RuntimeError::Unavailable(_) => self.settle_creating().await,
                    other => Err(other.into()),
                };
            }
        };
        let reg = self.ctx.registry.get()?;
        let quarantined = ask(&reg, "the registry", self.ctx.short_timeout(), RegistryMsg::Quarantined).await?;
        let plan = plan(&rows, containers, &quarantined);
        let calls = plan.check.into_iter().map(|name| async move {
            let actor = self.project(&name).await?;
            ask(&actor, &format!("project {name}"), self.ctx.short_timeout(), ProjectMsg::Reconcile).await?
        });
        let adopt = plan.adopt.into_iter().map(|(name, info)| async move {
            let actor = self.project(&name).await?;
            ask(&actor, &format!("project {name}"), self.ctx.short_timeout(), |r| ProjectMsg::Adopt(info, r)).await?
        });
        let mut changes = Vec::new();
        for res in join_all(calls).await.into_iter().chain(join_all(adopt).await) {
            match res {
                Ok(Some(c)) => changes.push(c),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reconcile of a project failed; retried next round"),
            }
        }
        match self.reconcile_snapshots().await {
            Ok(more) => changes.extend(more),
            Err(e) => tracing::warn!(error = %e, "reconcile of snapshots failed; retried next round"),
        }
        for c in &changes {
            tracing::info!(project = %c.name, reason = %c.reason, "reconcile changed something");
        }
        Ok(changes)
    }

    /// Snapshots: each project with an unfinished journal or more than `keep` settles
    /// them in its actor; then images and directories that no row names are removed, and
    /// rows whose image is gone are reported. Images and directories are listed before
    /// the rows are read: both are made only after their row is written, so an image or
    /// directory whose row is missing from a later read is an orphan, never one being made.
    async fn reconcile_snapshots(&self) -> Result<Vec<Change>, Error> {
        let rt = &self.ctx.runtimes;
        if !rt.docker_available() {
            return Ok(Vec::new());
        }
        let images = rt.docker.snapshot_images().await.map_err(|e| {
            rt.note(&e);
            Error::from(e)
        })?;
        let root = self.ctx.snapshots.root().to_path_buf();
        let entries = tokio::task::spawn_blocking(move || -> Vec<String> {
            std::fs::read_dir(&root)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        let reg = self.ctx.registry.get()?;
        let snaps = ask(&reg, "the registry", self.ctx.short_timeout(), RegistryMsg::Snapshots).await?;
        let keep = self.ctx.config.snapshots.keep;
        let mut counts: HashMap<ProjectName, (usize, bool)> = HashMap::new();
        for s in &snaps {
            let c = counts.entry(s.project.clone()).or_default();
            c.0 += usize::from(s.state == SnapshotState::Ready);
            c.1 |= s.state != SnapshotState::Ready;
        }
        let settle = counts.into_iter().filter(|(_, (ready, unfinished))| *unfinished || *ready > keep).map(
            |(name, _)| async move {
                let actor = self.project(&name).await?;
                ask(&actor, &format!("project {name}"), self.ctx.lifecycle_timeout(), ProjectMsg::SettleSnapshots)
                    .await?
            },
        );
        let mut changes = Vec::new();
        for res in join_all(settle).await {
            match res {
                Ok(c) => changes.extend(c),
                Err(e) => tracing::warn!(error = %e, "settling a project's snapshots failed; retried next round"),
            }
        }
        // Read again: settling removed rows.
        let snaps = ask(&reg, "the registry", self.ctx.short_timeout(), RegistryMsg::Snapshots).await?;
        let rows = self.rows().await?;
        let named =
            |image: &str| snaps.iter().any(|s| s.image == image) || rows.iter().any(|p| p.image.as_str() == image);
        for img in &images {
            let orphan = !snaps.iter().any(|s| s.id.as_str() == img.snapshot);
            // An untagged one (a commit that a crash cut short) goes by its id.
            let names = if img.tags.is_empty() { vec![img.id.clone()] } else { img.tags.clone() };
            for tag in names.iter().filter(|t| orphan && !named(t)) {
                match rt.docker.remove_image(tag).await {
                    Ok(true) => changes.push(Change {
                        name: img.project.clone().unwrap_or_default(),
                        from: None,
                        to: None,
                        reason: format!("removed image {tag}: no snapshot or project uses it"),
                    }),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(image = %tag, error = %e, "orphaned snapshot image not removed"),
                }
            }
        }
        for s in snaps.iter().filter(|s| s.state == SnapshotState::Ready) {
            if !images.iter().any(|i| i.tags.contains(&s.image)) {
                tracing::warn!(snapshot = %s.id, image = %s.image, "a snapshot's image is gone from the engine");
                changes.push(Change {
                    name: s.project.to_string(),
                    from: None,
                    to: None,
                    reason: format!("snapshot {}: its image {} is gone; it cannot be restored", s.id, s.image),
                });
            }
        }
        let restoring = |name: &str| {
            rows.iter().any(|p| {
                p.name.as_str() == name && matches!(p.pending, Some(Pending::Restore(_) | Pending::Restored(_)))
            })
        };
        let dirs = self.ctx.snapshots.clone();
        let mut stale = Vec::new();
        for e in entries {
            let known = |id: &str, taking_only: bool| {
                snaps.iter().any(|s| s.id.as_str() == id && (!taking_only || s.state == SnapshotState::Taking))
            };
            let keep_it = if let Some(id) = e.strip_prefix(".partial-") {
                known(id, true)
            } else if let Some(rest) = e.strip_prefix(".restore-") {
                restoring(rest.strip_suffix(".partial").or_else(|| rest.strip_suffix(".ready")).unwrap_or(rest))
            } else if let Some(name) = e.strip_prefix(".trash-") {
                restoring(name)
            } else if e.starts_with(".gone-") {
                // A restore's replaced workspace, being removed in the background; one
                // that nobody is removing was left by a crash.
                self.ctx.snapshot_locks.removing(&dirs.root().join(&e))
            } else if let Some(rest) = e.strip_prefix(".fork-") {
                let name = rest.strip_suffix(".partial").unwrap_or(rest);
                rows.iter().any(|p| p.name.as_str() == name && matches!(p.pending, Some(Pending::Fork(_))))
            } else {
                known(&e, false)
            };
            if !keep_it {
                stale.push(dirs.root().join(&e));
            }
        }
        for path in stale {
            let p = path.clone();
            match tokio::task::spawn_blocking(move || crate::snapshot::copy::remove_tree(&p)).await {
                Ok(Ok(())) => changes.push(Change {
                    name: String::new(),
                    from: None,
                    to: None,
                    reason: format!("removed {}: no snapshot or restore uses it", path.display()),
                }),
                Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "orphaned snapshot files not removed"),
                Err(e) => tracing::warn!(error = %e, "orphan removal task failed"),
            }
        }
        Ok(changes)
    }

    /// Without an engine there is nothing to compare with, but a create that a crash left
    /// `creating` is still settled (as `created`).
    async fn settle_creating(&self) -> Result<Vec<Change>, Error> {
        let rows = self.rows().await?;
        let calls = rows.iter().filter(|p| p.status == Status::Creating).map(|p| {
            let name = p.name.clone();
            async move {
                let actor = self.project(&name).await?;
                ask(&actor, &format!("project {name}"), self.ctx.short_timeout(), ProjectMsg::Reconcile).await?
            }
        });
        Ok(join_all(calls).await.into_iter().filter_map(|r| r.ok().flatten()).collect())
    }

    /// Asks each project quiet since `cutoff` to act (archive or stop); returns the names
    /// of those that did.
    async fn sweep(
        &self,
        cutoff: OffsetDateTime,
        pick: fn(&Project) -> bool,
        msg: fn(OffsetDateTime, RpcReplyPort<Result<bool, Error>>) -> ProjectMsg,
    ) -> Result<Vec<String>, Error> {
        let rows = self.rows().await?;
        let calls = rows.iter().filter(|p| p.last_used < cutoff && pick(p)).map(|p| {
            let name = p.name.clone();
            async move {
                let actor = self.project(&name).await?;
                let done =
                    ask(&actor, &format!("project {name}"), self.ctx.lifecycle_timeout(), |r| msg(cutoff, r)).await??;
                Ok::<_, Error>((name, done))
            }
        });
        let mut names = Vec::new();
        for res in join_all(calls).await {
            match res {
                Ok((name, true)) => names.push(name.to_string()),
                Ok((_, false)) => {}
                Err(e) => tracing::warn!(error = %e, "janitor could not sweep a project"),
            }
        }
        Ok(names)
    }

    async fn archive_stale(&self) -> Result<Vec<String>, Error> {
        let cutoff = OffsetDateTime::now_utc() - self.ctx.config.janitor.stale_after.0;
        let names = self.sweep(cutoff, |_| true, |cutoff, reply| ProjectMsg::ArchiveIfStale { cutoff, reply }).await?;
        if !names.is_empty() {
            tracing::info!(projects = %names.join(" "), "archived stale projects");
        }
        Ok(names)
    }

    async fn idle_stop(&self) -> Result<Vec<String>, Error> {
        let Some(idle) = self.ctx.config.janitor.idle_stop_after.0 else { return Ok(Vec::new()) };
        if !self.ctx.runtimes.docker_available() {
            return Ok(Vec::new());
        }
        let cutoff = OffsetDateTime::now_utc() - idle;
        let names = self
            .sweep(cutoff, |p| p.status == Status::Running, |cutoff, reply| ProjectMsg::StopIfIdle { cutoff, reply })
            .await?;
        if !names.is_empty() {
            tracing::info!(projects = %names.join(" "), "stopped idle containers");
        }
        Ok(names)
    }
}

impl Actor for JanitorActor {
    type Msg = JanitorMsg;
    type State = JanitorState;
    type Arguments = JanitorArgs;

    async fn pre_start(&self, _me: ActorRef<Self::Msg>, args: JanitorArgs) -> Result<Self::State, ActorProcessingErr> {
        Ok(JanitorState { ctx: args.ctx, supervisor: args.supervisor, timers: Vec::new() })
    }

    async fn post_start(&self, me: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let j = &st.ctx.config.janitor;
        st.timers.push(me.send_interval(j.reconcile_interval.0, || JanitorMsg::Reconcile(None)));
        st.timers.push(me.send_interval(j.archive_interval.0, || JanitorMsg::ArchiveStale(None)));
        st.timers.push(me.send_interval(PING_INTERVAL.min(j.reconcile_interval.0), || JanitorMsg::PingEngine));
        if let Some(idle) = j.idle_stop_after.0 {
            let every = (idle / 4).clamp(Duration::from_secs(1), j.reconcile_interval.0.max(Duration::from_secs(1)));
            st.timers.push(me.send_interval(every, || JanitorMsg::IdleStop));
        }
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<Self::Msg>, st: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for t in st.timers.drain(..) {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            JanitorMsg::Reconcile(reply) => answer(reply, st.reconcile().await, "reconcile"),
            JanitorMsg::ArchiveStale(reply) => answer(reply, st.archive_stale().await, "stale-archive"),
            JanitorMsg::IdleStop => {
                if let Err(e) = st.idle_stop().await {
                    tracing::warn!(error = %e, "idle stop failed");
                }
            }
            JanitorMsg::PingEngine => {
                let was = st.ctx.runtimes.docker_available();
                if st.ctx.runtimes.refresh().await && !was {
                    if let Err(e) = st.reconcile().await {
                        tracing::warn!(error = %e, "reconcile after the engine came back failed");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads the rows, then lists the containers: in that order. A delete removes the
/// container and then the row, so one that runs in between shows as a row without a
/// container (its actor, asked to converge, finds nothing to do). Read the other way
/// round, it would show as a container without a row, and be adopted into a ghost row.
async fn observe<L>(
    rows: impl Future<Output = Result<Vec<Project>, Error>>,
    list: impl Future<Output = L>,
) -> Result<(Vec<Project>, L), Error> {
    let rows = rows.await?;
    Ok((rows, list.await))
}

/// What one reconcile round asks of projects.
#[derive(Debug, Default)]
struct Plan {
    /// Projects whose row disagrees with the engine (or has a journaled change).
    check: Vec<ProjectName>,
    /// Labelled containers without a row, by project.
    adopt: Vec<(ProjectName, ContainerInfo)>,
}

/// `quarantined`: names whose row was set aside as corrupt. Their containers are left
/// alone rather than adopted: adoption would make a fresh row with default env, ports
/// and limits (looser than the project's own, on the next re-create) and hide the
/// corruption from the operator, whose repair is to fix the quarantined row.
fn plan(rows: &[Project], containers: Vec<ContainerInfo>, quarantined: &[String]) -> Plan {
    let mut by_project: HashMap<String, _> =
        containers.into_iter().filter_map(|c| c.project.clone().map(|p| (p, c))).collect();
    let mut plan = Plan::default();
    for row in rows {
        let observed = by_project.remove(row.name.as_str());
        let agrees = row.pending.is_none()
            && match (&observed, row.status) {
                (Some(c), Status::Running) => c.running,
                (Some(c), Status::Stopped) => !c.running,
                (None, Status::Created) => true,
                _ => false,
            };
        if !agrees {
            plan.check.push(row.name.clone());
        }
    }
    for (label, info) in by_project {
        match ProjectName::parse(&label) {
            Ok(_) if quarantined.contains(&label) => {
                tracing::debug!(project = %label, container = %info.container_id, "container of a quarantined row; left alone")
            }
            Ok(name) => plan.adopt.push((name, info)),
            Err(_) => {
                tracing::warn!(label = %label, container = %info.container_id, "labelled container with an invalid project name; left alone")
            }
        }
    }
    plan
}

/// Replies to an explicit request, or logs the failure of a scheduled run.
fn answer<T>(reply: Option<RpcReplyPort<Result<T, Error>>>, res: Result<T, Error>, what: &str) {
    match reply {
        Some(r) => {
            let _ = r.send(res);
        }
        None => {
            if let Err(e) = res {
                tracing::warn!(error = %e, "scheduled {what} failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::Pending;

    fn row(name: &str, status: Status) -> Project {
        Project::sample(name, status, OffsetDateTime::now_utc())
    }

    fn container(name: &str, running: bool) -> ContainerInfo {
        ContainerInfo {
            container_id: format!("id-{name}"),
            project: Some(name.into()),
            running,
            image: "busybox".into(),
            created: String::new(),
            pid: None,
            agent: false,
            paused: false,
        }
    }

    /// The registry and the engine as a delete racing the janitor sees them: the first
    /// read by reconcile is followed by the whole delete (container, then row) before the
    /// second read. Whatever the order of reads, nothing may be planned for adoption:
    /// an adoption here would turn a deleted project into a ghost row. With the old order
    /// (containers first) this test fails.
    #[tokio::test(flavor = "current_thread")]
    async fn a_delete_between_the_two_reads_is_never_adopted() {
        struct World {
            rows: Vec<Project>,
            containers: Vec<ContainerInfo>,
            reads: usize,
        }
        let world = Mutex::new(World {
            rows: vec![row("gone", Status::Running), row("kept", Status::Running)],
            containers: vec![container("gone", true), container("kept", true)],
            reads: 0,
        });
        let after_read = |w: &mut World| {
            w.reads += 1;
            if w.reads == 1 {
                w.containers.retain(|c| c.project.as_deref() != Some("gone"));
                w.rows.retain(|r| r.name.as_str() != "gone");
            }
        };
        let rows = async {
            let mut w = world.lock().unwrap();
            let r = w.rows.clone();
            after_read(&mut w);
            Ok(r)
        };
        let list = async {
            let mut w = world.lock().unwrap();
            let c = w.containers.clone();
            after_read(&mut w);
            c
        };
        let (rows, containers) = observe(rows, list).await.unwrap();
        let plan = plan(&rows, containers, &[]);
        assert!(plan.adopt.is_empty(), "would adopt {:?}", plan.adopt);
        let checked: Vec<&str> = plan.check.iter().map(|n| n.as_str()).collect();
        assert_eq!(checked, ["gone"], "the row without a container is left to its actor");
    }

    /// One row per case of the agreement table.
    #[test]
    fn plan_checks_what_disagrees_and_adopts_rowless_containers() {
        let mut pending = row("pending", Status::Running);
        pending.pending = Some(Pending::Archive { keep_snapshots: false });
        let rows = [
            row("run-ok", Status::Running),
            row("run-stopped", Status::Running),
            row("stop-ok", Status::Stopped),
            row("stop-running", Status::Stopped),
            row("created-ok", Status::Created),
            row("created-has", Status::Created),
            row("running-gone", Status::Running),
            row("creating", Status::Creating),
            pending,
        ];
        let containers = vec![
            container("run-ok", true),
            container("run-stopped", false),
            container("stop-ok", false),
            container("stop-running", true),
            container("created-has", true),
            container("creating", false),
            container("pending", true),
            container("orphan", true),
            container("Bad Label", true),
            container("quarantined", true),
        ];
        let p = plan(&rows, containers, &["quarantined".to_string()]);
        let mut checked: Vec<&str> = p.check.iter().map(|n| n.as_str()).collect();
        checked.sort();
        assert_eq!(checked, ["created-has", "creating", "pending", "run-stopped", "running-gone", "stop-running"]);
        let adopted: Vec<&str> = p.adopt.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(adopted, ["orphan"], "an invalid label and a quarantined name are left alone");
    }
}
