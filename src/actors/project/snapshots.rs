//! Snapshots, restores and forks, as steps of one project's actor.
//!
//! Each is journaled before it changes anything: a snapshot's row is written `taking`
//! first (and `deleting` before one is removed), a restore sets the project's `pending`
//! to `restore:<id>` and then `restored:<id>`, a fork writes the new project's row with
//! `pending = fork`. Whatever a crash interrupts is finished or undone by `resume` and
//! `settle_snapshots`, so afterwards a snapshot is either complete and listed or gone
//! with everything it had made. Running in the actor, none of this interleaves with the
//! project's other lifecycle changes; execs already running go on (frozen while the
//! container is paused for a snapshot), except across a restore, which replaces the
//! container and so ends them.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{Change, ProjectMsg, ProjectState};
use crate::actors::ask;
use crate::actors::registry::RegistryMsg;
use crate::actors::supervisor::SupervisorMsg;
use crate::error::{Error, ErrorKind};
use crate::model::{ImageRef, Pending, PortMap, Project, ProjectName, Status};
use crate::snapshot::copy::{self, CopyError, RESERVE};
use crate::snapshot::{Settings, Snapshot, SnapshotId, SnapshotState, IMAGE_REPO};

impl ProjectState {
    /// `what` names the operation and its project, e.g. "restore project web".
    fn need_engine(&self, what: &str) -> Result<(), Error> {
        if self.ctx.runtimes.docker_available() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::RuntimeUnavailable,
            format!("cannot {what}: snapshots need the container engine, and none answers"),
        ))
    }

    async fn all_snapshots(&self) -> Result<Vec<Snapshot>, Error> {
        self.registry(RegistryMsg::Snapshots).await
    }

    async fn put_snapshot(&self, s: &Snapshot) -> Result<(), Error> {
        let row = s.clone();
        self.registry(|r| RegistryMsg::PutSnapshot(row, r)).await?
    }

    /// A ready snapshot of this project, or the error a user should see.
    async fn own_snapshot(&self, id: &SnapshotId, of: &ProjectName) -> Result<Snapshot, Error> {
        let s = self
            .all_snapshots()
            .await?
            .into_iter()
            .find(|s| &s.id == id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("snapshot {id} not found")))?;
        if &s.project != of {
            return Err(Error::invalid_params(format!(
                "snapshot {id} is a snapshot of project {}, not of project {of}",
                s.project
            )));
        }
        if s.state != SnapshotState::Ready {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "snapshot {id} is being {}; retry",
                    if s.state == SnapshotState::Taking { "taken" } else { "deleted" }
                ),
            ));
        }
        Ok(s)
    }

    /// Runs blocking disk work off the async workers.
    async fn disk<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::internal(format!("disk task of project {}: {e}", self.name)))?
    }

    /// Refuses a copy of `bytes` into the filesystem holding `dir` unless it has room
    /// for it and `RESERVE` more.
    fn check_room(&self, dir: &Path, bytes: u64) -> Result<(), Error> {
        let free =
            copy::free_space(dir).map_err(|e| Error::internal(format!("free space of {}: {e}", dir.display())))?;
        if free < bytes.saturating_add(RESERVE) {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "project {}: copying {bytes} bytes of workspace needs {} bytes free in {}, which has {free}; \
                     nothing was copied",
                    self.name,
                    bytes.saturating_add(RESERVE),
                    dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// Copies a tree (`to` must not exist); on failure nothing of `to` is left.
    async fn copy_tree(&self, from: PathBuf, to: PathBuf) -> Result<u64, Error> {
        let name = self.name.clone();
        let started = std::time::Instant::now();
        self.disk(move || match copy::copy_tree(&from, &to) {
            Ok(t) => {
                let ms = started.elapsed().as_millis() as u64;
                tracing::debug!(project = %name, from = %from.display(), bytes = t.bytes, entries = t.entries, ms, "copied a workspace");
                Ok(t.bytes)
            }
            Err(e) => {
                if let Err(r) = copy::remove_tree(&to) {
                    tracing::error!(path = %to.display(), error = %r, "could not remove a failed copy");
                }
                Err(copy_error(&name, &e))
            }
        })
        .await
    }

    async fn remove_tree(&self, path: PathBuf) -> Result<(), Error> {
        self.disk(move || {
            copy::remove_tree(&path).map_err(|e| Error::internal(format!("removing {}: {e}", path.display())))
        })
        .await
    }

    /// Freezes the container, commits it as `image`, copies the workspace to `into`, and
    /// thaws it; returns the bytes copied. On failure the image and `into` are removed.
    async fn capture(&mut self, p: &Project, id: &SnapshotId, image: &str, into: PathBuf) -> Result<u64, Error> {
        let docker = self.ctx.runtimes.docker.clone();
        if docker.inspect(&self.name).await.map_err(|e| self.engine_err(e))?.is_none() {
            // The container is gone (reconcile reports it `stopped`): make it from the row.
            self.ensure_container(p).await?;
        }
        self.ws(|w, n| w.ensure(n)).await?;
        let src = p.path.clone();
        let need = self
            .disk(move || copy::measure(&src).map_err(|e| Error::internal(format!("measuring the workspace: {e}"))))
            .await?;
        self.check_room(into.parent().unwrap_or(&into), need.bytes)?;
        docker.pause(&self.name, true).await.map_err(|e| self.engine_err(e))?;
        let taken = async {
            docker.commit(&self.name, id, image).await.map_err(|e| self.engine_err(e))?;
            match self.copy_tree(p.path.clone(), into).await {
                Ok(bytes) => Ok(bytes),
                Err(e) => {
                    if let Err(r) = docker.remove_image(image).await {
                        tracing::warn!(project = %self.name, %image, error = %r, "image of a failed snapshot not removed; reconcile will");
                    }
                    Err(e)
                }
            }
        }
        .await;
        if let Err(e) = docker.pause(&self.name, false).await {
            // The next reconcile thaws it; the snapshot itself is whole.
            tracing::warn!(project = %self.name, error = %e, "container not unpaused after a snapshot");
        }
        taken
    }

    pub(super) async fn take_snapshot(&mut self, label: String) -> Result<Snapshot, Error> {
        let p = self.require_settled(|_| true)?;
        self.need_engine(&format!("take a snapshot of project {}", self.name))?;
        let id = SnapshotId::new();
        let mut snap = Snapshot {
            image: id.image(),
            id: id.clone(),
            project: self.name.clone(),
            label,
            created: OffsetDateTime::now_utc(),
            workspace_bytes: 0,
            state: SnapshotState::Taking,
            settings: Settings::of(&p),
        };
        self.put_snapshot(&snap).await?;
        let dirs = self.ctx.snapshots.clone();
        let taken = match self.capture(&p, &id, &snap.image, dirs.partial(&id)).await {
            Ok(bytes) => {
                let (from, to) = (dirs.partial(&id), dirs.dir(&id));
                self.disk(move || {
                    std::fs::rename(&from, &to).map_err(|e| Error::internal(format!("{}: {e}", to.display())))
                })
                .await
                .map(|_| bytes)
            }
            Err(e) => Err(e),
        };
        match taken {
            Ok(bytes) => {
                snap.workspace_bytes = bytes;
                snap.state = SnapshotState::Ready;
                self.put_snapshot(&snap).await?;
                tracing::info!(project = %self.name, snapshot = %id, bytes, "took a snapshot");
                self.prune().await;
                Ok(snap)
            }
            Err(e) => {
                self.discard(&snap).await;
                Err(e)
            }
        }
    }

    /// Undoes a snapshot that was not finished: its image, its copy, its row.
    async fn discard(&mut self, s: &Snapshot) {
        let docker = self.ctx.runtimes.docker.clone();
        let _ = docker.pause(&self.name, false).await;
        let gone = async {
            docker.remove_image(&s.image).await.map_err(|e| self.engine_err(e))?;
            self.remove_tree(self.ctx.snapshots.partial(&s.id)).await?;
            self.remove_tree(self.ctx.snapshots.dir(&s.id)).await?;
            let id = s.id.clone();
            self.registry(|r| RegistryMsg::DeleteSnapshot(id, r)).await?
        };
        if let Err(e) = gone.await {
            tracing::warn!(snapshot = %s.id, error = %e, "unfinished snapshot not yet discarded; the next reconcile retries");
        }
    }

    /// Prunes this project's oldest ready snapshots beyond `[snapshots] keep`, skipping
    /// any a fork is copying from. Returns the ids removed.
    async fn prune(&mut self) -> Vec<SnapshotId> {
        let keep = self.ctx.config.snapshots.keep;
        let Ok(all) = self.all_snapshots().await else { return Vec::new() };
        let ready: Vec<Snapshot> =
            all.into_iter().filter(|s| s.project == self.name && s.state == SnapshotState::Ready).collect();
        let mut pruned = Vec::new();
        let excess = ready.len().saturating_sub(keep);
        for s in ready.into_iter().take(excess) {
            if self.ctx.snapshot_locks.held(&s.id) {
                continue;
            }
            let id = s.id.clone();
            match self.remove_snapshot(s).await {
                Ok(()) => pruned.push(id),
                Err(e) => tracing::warn!(snapshot = %id, error = %e, "could not prune a snapshot"),
            }
        }
        if !pruned.is_empty() {
            tracing::info!(project = %self.name, keep, pruned = pruned.len(), "pruned snapshots");
        }
        pruned
    }

    pub(super) async fn delete_snapshot(&mut self, id: SnapshotId) -> Result<(), Error> {
        let s = self
            .all_snapshots()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("snapshot {id} not found")))?;
        if s.state == SnapshotState::Taking {
            return Err(Error::new(ErrorKind::Busy, format!("snapshot {id} is being taken; retry")));
        }
        self.need_engine(&format!("delete snapshot {id}"))?;
        self.remove_snapshot(s).await
    }

    /// Removes a snapshot, journaled (`deleting`) so a crash part-way is finished later.
    async fn remove_snapshot(&mut self, mut s: Snapshot) -> Result<(), Error> {
        if self.ctx.snapshot_locks.held(&s.id) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("snapshot {} is being copied into a fork; retry when the fork is done", s.id),
            ));
        }
        if s.state != SnapshotState::Deleting {
            s.state = SnapshotState::Deleting;
            self.put_snapshot(&s).await?;
        }
        self.remove_tree(self.ctx.snapshots.dir(&s.id)).await?;
        self.remove_tree(self.ctx.snapshots.partial(&s.id)).await?;
        let id = s.id.clone();
        self.registry(|r| RegistryMsg::DeleteSnapshot(id, r)).await??;
        self.release_image(&s.image).await;
        tracing::info!(project = %s.project, snapshot = %s.id, "deleted snapshot");
        Ok(())
    }

    /// Removes a berth-made image that no snapshot row and no project row names any
    /// more (a project restored or forked from a snapshot keeps using its image after the
    /// snapshot is gone). The engine keeps an image a container uses; reconcile retries.
    pub(super) async fn release_image(&self, image: &str) {
        if !image.starts_with(&format!("{IMAGE_REPO}:")) {
            return;
        }
        let (Ok(snaps), Ok(rows)) = (self.all_snapshots().await, self.registry(RegistryMsg::List).await) else {
            return;
        };
        if snaps.iter().any(|s| s.image == image) || rows.iter().any(|p| p.image.as_str() == image) {
            return;
        }
        match self.ctx.runtimes.docker.remove_image(image).await {
            Ok(true) => tracing::debug!(%image, "removed image"),
            Ok(false) => tracing::debug!(%image, "image still used by a container or a newer image built on it; kept"),
            Err(e) => tracing::warn!(%image, error = %e, "image not removed; reconcile retries"),
        }
    }

    /// Deletes every snapshot of this project (a project delete without `keep_snapshots`).
    pub(super) async fn delete_all_snapshots(&mut self) -> Result<(), Error> {
        let mine: Vec<Snapshot> = self.all_snapshots().await?.into_iter().filter(|s| s.project == self.name).collect();
        for s in mine {
            if s.state == SnapshotState::Taking {
                self.discard(&s).await;
            } else {
                self.remove_snapshot(s).await?;
            }
        }
        Ok(())
    }

    /// Finishes this project's snapshot journals (discards those a crash left `taking`,
    /// completes those left `deleting`) and prunes beyond `keep`.
    pub(super) async fn settle_snapshots(&mut self) -> Result<Vec<Change>, Error> {
        if !self.ctx.runtimes.docker_available() {
            return Ok(Vec::new());
        }
        let name = self.name.to_string();
        let change = |id: &SnapshotId, why: &str| Change {
            name: name.clone(),
            from: None,
            to: None,
            reason: format!("snapshot {id}: {why}"),
        };
        let mut changes = Vec::new();
        let mine: Vec<Snapshot> = self.all_snapshots().await?.into_iter().filter(|s| s.project == self.name).collect();
        for s in mine {
            match s.state {
                SnapshotState::Ready => {}
                // Nothing of this actor is in progress while it handles this message, so a
                // row still `taking` was left by a crash.
                SnapshotState::Taking => {
                    self.discard(&s).await;
                    changes.push(change(&s.id, "discarded; it was interrupted while being taken"));
                }
                SnapshotState::Deleting => {
                    let id = s.id.clone();
                    match self.remove_snapshot(s).await {
                        Ok(()) => changes.push(change(&id, "finished an interrupted delete")),
                        Err(e) => {
                            tracing::warn!(snapshot = %id, error = %e, "interrupted snapshot delete not finished")
                        }
                    }
                }
            }
        }
        let keep = self.ctx.config.snapshots.keep;
        for id in self.prune().await {
            changes.push(change(&id, &format!("pruned (snapshots.keep = {keep})")));
        }
        Ok(changes)
    }

    pub(super) async fn restore(&mut self, id: SnapshotId) -> Result<Project, Error> {
        let mut p = self.require_settled(|_| true)?;
        let s = self.own_snapshot(&id, &self.name.clone()).await?;
        self.need_engine(&format!("restore project {}", self.name))?;
        if !self.ctx.runtimes.docker.image_exists(&s.image).await.map_err(|e| self.engine_err(e))? {
            return Err(Error::new(
                ErrorKind::RuntimeError,
                format!("snapshot {id}: its image {} is gone from the engine, so it cannot be restored", s.image),
            ));
        }
        self.check_room(self.ctx.snapshots.root(), s.workspace_bytes)?;
        p.pending = Some(Pending::Restore(id.clone()));
        let p = self.save(p).await?;
        // The copy comes first, while the container still runs: if it fails, nothing of
        // the project has changed.
        let dirs = self.ctx.snapshots.clone();
        self.remove_tree(dirs.restore_partial(&self.name)).await?;
        self.remove_tree(dirs.restore_ready(&self.name)).await?;
        if let Err(e) = self.stage_restore(&id).await {
            let mut p = p;
            p.pending = None;
            self.save(p).await?;
            return Err(e);
        }
        self.execs.cancel_all();
        self.finish_restore(p).await
    }

    /// Copies snapshot `id`'s workspace to the staging place of a restore, marking it
    /// complete by a rename.
    async fn stage_restore(&mut self, id: &SnapshotId) -> Result<(), Error> {
        let dirs = self.ctx.snapshots.clone();
        let (partial, ready) = (dirs.restore_partial(&self.name), dirs.restore_ready(&self.name));
        self.copy_tree(dirs.dir(id), partial.clone()).await?;
        self.disk(move || {
            std::fs::rename(&partial, &ready).map_err(|e| Error::internal(format!("{}: {e}", ready.display())))
        })
        .await
    }

    /// The steps of a journaled restore from wherever a crash left them (see `Pending`).
    pub(super) async fn finish_restore(&mut self, mut p: Project) -> Result<Project, Error> {
        let dirs = self.ctx.snapshots.clone();
        let (ready, trash) = (dirs.restore_ready(&self.name), dirs.trash(&self.name));
        if let Some(Pending::Restore(id)) = p.pending.clone() {
            if std::fs::symlink_metadata(&ready).is_err() {
                self.remove_tree(dirs.restore_partial(&self.name)).await?;
                self.remove_tree(trash.clone()).await?;
                self.stage_restore(&id).await?;
            }
            // The container goes (with the processes in it); the workspace is swapped.
            self.ctx.runtimes.docker.remove(&self.name).await.map_err(|e| self.engine_err(e))?;
            let ws = p.path.clone();
            let (r, t) = (ready.clone(), trash.clone());
            self.disk(move || {
                let io = |path: &Path| {
                    let path = path.to_path_buf();
                    move |e: std::io::Error| Error::internal(format!("{}: {e}", path.display()))
                };
                if std::fs::symlink_metadata(&ws).is_ok() {
                    std::fs::rename(&ws, &t).map_err(io(&ws))?;
                }
                std::fs::rename(&r, &ws).map_err(io(&ws))
            })
            .await?;
            p.pending = Some(Pending::Restored(id));
            p = self.save(p).await?;
        }
        let Some(Pending::Restored(id)) = p.pending.clone() else {
            return Ok(p);
        };
        // The replaced workspace is not part of the answer: it is renamed out of the
        // journal's way and deleted in the background (a crash leaves it for reconcile,
        // which removes every `.trash-*` no restore is using).
        if std::fs::symlink_metadata(&trash).is_ok() {
            let gone = self.ctx.snapshots.root().join(format!(".gone-{}", &crate::runtime::token()[..12]));
            let t = trash.clone();
            let moved = gone.clone();
            self.disk(move || {
                std::fs::rename(&t, &moved).map_err(|e| Error::internal(format!("{}: {e}", t.display())))
            })
            .await?;
            let removal = self.ctx.snapshot_locks.begin_removal(&gone);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = copy::remove_tree(&gone) {
                    tracing::warn!(path = %gone.display(), error = %e, "replaced workspace not removed; reconcile will");
                }
                drop(removal);
            });
        }
        self.ws(|w, n| w.ensure(n)).await?;
        match self.all_snapshots().await?.into_iter().find(|s| s.id == id) {
            Some(s) => s.settings.apply(&mut p, &s.image)?,
            None => {
                tracing::error!(project = %self.name, snapshot = %id, "the snapshot of an interrupted restore is gone; its settings could not be put back")
            }
        }
        p.pending = None;
        p.status = Status::Stopped;
        p.last_used = OffsetDateTime::now_utc();
        let mut p = self.save(p).await?;
        self.ensure_container(&p).await?;
        p.status = Status::Running;
        tracing::info!(project = %self.name, snapshot = %id, "restored");
        self.save(p).await
    }

    pub(super) async fn fork(&mut self, from: ProjectName, snapshot: Option<SnapshotId>) -> Result<Project, Error> {
        if self.project.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("project {} already exists; a fork needs a new name", self.name),
            ));
        }
        if self.ctx.workspaces.exists(&self.name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} exists without a project of that name; remove it or fork under another name",
                    self.ctx.workspaces.path(&self.name).display()
                ),
            ));
        }
        self.need_engine(&format!("fork project {from} into {}", self.name))?;
        let source = match &snapshot {
            Some(id) => {
                let s = self.own_snapshot(id, &from).await?;
                let docker = self.ctx.runtimes.docker.clone();
                if !docker.image_exists(&s.image).await.map_err(|e| self.engine_err(e))? {
                    return Err(Error::new(
                        ErrorKind::RuntimeError,
                        format!("snapshot {id}: its image {} is gone from the engine, so it cannot be forked", s.image),
                    ));
                }
                self.check_room(self.ctx.snapshots.root(), s.workspace_bytes)?;
                Some(s)
            }
            None => {
                let f = from.clone();
                self.registry(|r| RegistryMsg::Get(f, r)).await?.ok_or_else(|| Error::not_found(&from))?;
                None
            }
        };
        let _hold = snapshot.as_ref().map(|id| self.ctx.snapshot_locks.hold(id));
        let image = match &source {
            Some(s) => s.image.clone(),
            None => SnapshotId::new().image(),
        };
        let now = OffsetDateTime::now_utc();
        let p = Project {
            name: self.name.clone(),
            description: format!("fork of {from}"),
            image: ImageRef::parse(&image)?,
            created: now,
            last_used: now,
            status: Status::Creating,
            env: Default::default(),
            ports: PortMap::default(),
            path: self.ctx.workspaces.path(&self.name),
            pending: Some(Pending::Fork(from.clone())),
            limits: Default::default(),
        };
        // The row (journaling the fork, and naming the image before it exists) goes first.
        let row = p.clone();
        self.registry(|r| RegistryMsg::Insert(row, r)).await??;
        self.project = Some(p.clone());
        match self.make_fork(p, &from, source).await {
            Ok(p) => Ok(p),
            Err(e) => {
                self.roll_back_fork().await;
                Err(e)
            }
        }
    }

    async fn make_fork(
        &mut self,
        mut p: Project,
        from: &ProjectName,
        source: Option<Snapshot>,
    ) -> Result<Project, Error> {
        let settings = match source {
            Some(s) => {
                // Copied beside the snapshots and renamed into place, as a restore does:
                // files are created away from `projects/`, where deletes just happened.
                let staging = self.ctx.snapshots.fork_staging(&self.name);
                self.remove_tree(staging.clone()).await?;
                self.copy_tree(self.ctx.snapshots.dir(&s.id), staging.clone()).await?;
                let to = p.path.clone();
                self.disk(move || {
                    std::fs::rename(&staging, &to).map_err(|e| Error::internal(format!("{}: {e}", to.display())))
                })
                .await?;
                s.settings
            }
            None => {
                let id =
                    p.image.as_str().strip_prefix(&format!("{IMAGE_REPO}:")).and_then(|t| SnapshotId::parse(t).ok());
                let id = id.ok_or_else(|| Error::internal(format!("fork image {} is not berth's", p.image)))?;
                let actor = {
                    let n = from.clone();
                    let sup = self.supervisor.clone();
                    ask(&sup, "the supervisor", self.ctx.short_timeout(), |r| SupervisorMsg::Project(n, r)).await??
                };
                // Into the staging place too (see above), then renamed into `projects/`.
                let staging = self.ctx.snapshots.fork_staging(&self.name);
                self.remove_tree(staging.clone()).await?;
                let into = staging.clone();
                let source = ask(&actor, &format!("project {from}"), self.ctx.lifecycle_timeout(), |reply| {
                    ProjectMsg::CaptureInto { id, into, reply }
                })
                .await??;
                let to = p.path.clone();
                self.disk(move || {
                    std::fs::rename(&staging, &to).map_err(|e| Error::internal(format!("{}: {e}", to.display())))
                })
                .await?;
                Settings::of(&source)
            }
        };
        let image = p.image.to_string();
        settings.apply(&mut p, &image)?;
        // Host ports belong to the source; a fork publishes none.
        p.ports = PortMap::default();
        p.description = format!("fork of {from}");
        self.ws(|w, n| w.ensure(n)).await?;
        self.ensure_container(&p).await?;
        p.status = Status::Running;
        p.pending = None;
        tracing::info!(project = %self.name, %from, image = %p.image, "forked");
        self.save(p).await
    }

    /// Undoes a fork that did not finish: container, workspace, row, and the image it
    /// committed (one made for the fork, never a snapshot's).
    pub(super) async fn roll_back_fork(&mut self) {
        let image = self.project.as_ref().map(|p| p.image.to_string());
        if let Some(Pending::Fork(from)) = self.project.as_ref().and_then(|p| p.pending.clone()) {
            // A fork of a current state pauses its source while it commits and copies; a
            // crash then leaves it paused. (Only berth's own pauses are ever undone.)
            if let Err(e) = self.ctx.runtimes.docker.pause(&from, false).await {
                tracing::warn!(project = %from, error = %e, "fork rollback: source not unpaused");
            }
        }
        if let Err(e) = self.ctx.runtimes.docker.remove(&self.name).await {
            tracing::warn!(project = %self.name, error = %e, "fork rollback: container not removed");
        }
        if let Err(e) = self.remove_tree(self.ctx.snapshots.fork_staging(&self.name)).await {
            tracing::warn!(project = %self.name, error = %e, "fork rollback: staging copy not removed");
        }
        if let Err(e) = self.ws(|w, n| w.purge(n)).await {
            tracing::warn!(project = %self.name, error = %e, "fork rollback: workspace not removed");
        }
        let name = self.name.clone();
        match self.registry(|r| RegistryMsg::Delete(name, r)).await {
            Ok(Ok(())) => self.project = None,
            Ok(Err(e)) | Err(e) => {
                tracing::error!(project = %self.name, error = %e, "fork rollback: row not removed");
                return;
            }
        }
        if let Some(image) = image {
            self.release_image(&image).await;
        }
    }

    /// For a fork of this project: commits its container as `id`'s image and copies its
    /// workspace to `into`. Replies with the project as it was captured.
    pub(super) async fn capture_into(&mut self, id: SnapshotId, into: PathBuf) -> Result<Project, Error> {
        let p = self.require_settled(|_| true)?;
        self.need_engine(&format!("fork project {}", self.name))?;
        let image = id.image();
        self.capture(&p, &id, &image, into).await?;
        Ok(p)
    }
}

fn copy_error(name: &ProjectName, e: &CopyError) -> Error {
    if e.no_space() {
        return Error::new(
            ErrorKind::TooLarge,
            format!("project {name}: the disk filled up while copying ({e}); what was copied has been removed"),
        );
    }
    Error::internal(format!("project {name}: copying the workspace: {e}"))
}
