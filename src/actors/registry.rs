//! The registry actor: owns the store thread and an in-memory copy of every row.
//!
//! Reads are answered from memory; every write goes to SQLite first and to memory only
//! once committed, so memory never shows what the disk does not hold. SQLite itself runs
//! on the store's own OS thread (`store::StoreThread`): this actor awaits its answers and
//! never blocks an async worker. It knows nothing of containers and never waits on
//! another actor.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::Error;
use crate::model::{Activity, Project, ProjectName};
use crate::snapshot::{Snapshot, SnapshotId};
use crate::store::StoreThread;

pub struct RegistryActor;

pub struct RegistryState {
    store: StoreThread,
    rows: BTreeMap<ProjectName, Project>,
    /// Names of the rows in the quarantine table (corrupt rows set aside at load).
    quarantined: Vec<String>,
    /// Every snapshot row, whatever its state.
    snapshots: BTreeMap<SnapshotId, Snapshot>,
}

pub enum RegistryMsg {
    Get(ProjectName, RpcReplyPort<Option<Project>>),
    List(RpcReplyPort<Vec<Project>>),
    Count(RpcReplyPort<usize>),
    /// Inserts a new row; `already_exists` if the name is taken.
    Insert(Project, RpcReplyPort<Result<(), Error>>),
    /// Writes a row's status, image, last_used and pending; `not_found` if it has no row.
    Update(Project, RpcReplyPort<Result<(), Error>>),
    /// Deletes a row and its activity log.
    Delete(ProjectName, RpcReplyPort<Result<(), Error>>),
    /// Folds the WAL into the database file (clean shutdown).
    Checkpoint(RpcReplyPort<Result<(), Error>>),
    /// The names of the rows quarantined as corrupt (for `daemon.info`).
    Quarantined(RpcReplyPort<Vec<String>>),
    /// Appends one exec to the project's activity log. Fire-and-forget (`cast`): a failure
    /// is logged here and never fails the exec.
    Record(Activity),
    /// The newest `limit` activity entries of a project, oldest first; `not_found` if the
    /// project has no row.
    Activity(ProjectName, usize, RpcReplyPort<Result<Vec<Activity>, Error>>),
    /// Every snapshot row (any state), oldest first.
    Snapshots(RpcReplyPort<Vec<Snapshot>>),
    /// Writes a snapshot's row (insert or replace).
    PutSnapshot(Snapshot, RpcReplyPort<Result<(), Error>>),
    DeleteSnapshot(SnapshotId, RpcReplyPort<Result<(), Error>>),
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = PathBuf;

    async fn pre_start(&self, _me: ActorRef<Self::Msg>, state_dir: PathBuf) -> Result<Self::State, ActorProcessingErr> {
        let store = StoreThread::open(state_dir.clone()).await?;
        let loaded = store.call(|s| s.load()).await?;
        for q in &loaded.quarantined {
            tracing::error!(
                project = %q.name,
                reason = %q.reason,
                "corrupt registry row moved to the quarantine table; serving the other projects"
            );
        }
        let quarantined = store.call(|s| s.quarantined()).await?;
        let rows = loaded.projects.into_iter().map(|p| (p.name.clone(), p)).collect::<BTreeMap<_, _>>();
        let snapshots = store.call(|s| s.snapshots()).await?.into_iter().map(|s| (s.id.clone(), s)).collect();
        tracing::info!(
            projects = rows.len(),
            quarantined = quarantined.len(),
            db = %state_dir.join("berth.db").display(),
            "registry loaded"
        );
        Ok(RegistryState { store, rows, quarantined, snapshots })
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Get(name, reply) => {
                let _ = reply.send(st.rows.get(&name).cloned());
            }
            RegistryMsg::List(reply) => {
                let _ = reply.send(st.rows.values().cloned().collect());
            }
            RegistryMsg::Count(reply) => {
                let _ = reply.send(st.rows.len());
            }
            RegistryMsg::Quarantined(reply) => {
                let _ = reply.send(st.quarantined.clone());
            }
            RegistryMsg::Insert(p, reply) => {
                let row = p.clone();
                let res = st.store.call(move |s| s.insert(&row)).await.map_err(Error::from);
                if res.is_ok() {
                    st.rows.insert(p.name.clone(), p);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::Update(p, reply) => {
                let row = p.clone();
                let res = st.store.call(move |s| s.update(&row)).await.map_err(Error::from);
                if res.is_ok() {
                    st.rows.insert(p.name.clone(), p);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::Delete(name, reply) => {
                let n = name.clone();
                let res = st.store.call(move |s| s.delete(&n)).await.map(|_| ()).map_err(Error::from);
                if res.is_ok() {
                    st.rows.remove(&name);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::Checkpoint(reply) => {
                let _ = reply.send(st.store.call(|s| s.checkpoint()).await.map_err(Error::from));
            }
            RegistryMsg::Record(a) => {
                let project = a.project.clone();
                match st.store.call(move |s| s.record(&a)).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(project = %project, "activity of a project without a row; not logged"),
                    Err(e) => tracing::warn!(project = %project, error = %e, "activity not logged"),
                }
            }
            RegistryMsg::Snapshots(reply) => {
                let mut all: Vec<Snapshot> = st.snapshots.values().cloned().collect();
                all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
                let _ = reply.send(all);
            }
            RegistryMsg::PutSnapshot(snap, reply) => {
                let row = snap.clone();
                let res = st.store.call(move |s| s.put_snapshot(&row)).await.map_err(Error::from);
                if res.is_ok() {
                    st.snapshots.insert(snap.id.clone(), snap);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::DeleteSnapshot(id, reply) => {
                let i = id.clone();
                let res = st.store.call(move |s| s.delete_snapshot(&i)).await.map(|_| ()).map_err(Error::from);
                if res.is_ok() {
                    st.snapshots.remove(&id);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::Activity(name, limit, reply) => {
                let res = if st.rows.contains_key(&name) {
                    st.store.call(move |s| s.activity(&name, limit)).await.map_err(Error::from)
                } else {
                    Err(Error::not_found(&name))
                };
                let _ = reply.send(res);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ractor::rpc::CallResult;
    use time::OffsetDateTime;

    use super::*;
    use crate::error::ErrorKind;
    use crate::model::Status;
    use crate::store::Store;

    fn project(name: &str) -> Project {
        Project::sample(name, Status::Running, OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap())
    }

    async fn call<R: Send + 'static>(
        r: &ActorRef<RegistryMsg>,
        build: impl FnOnce(RpcReplyPort<R>) -> RegistryMsg,
    ) -> R {
        match r.call(build, Some(Duration::from_secs(10))).await.unwrap() {
            CallResult::Success(v) => v,
            _ => panic!("the registry did not answer"),
        }
    }

    /// A write that has to wait for SQLite (here: another connection holds the write
    /// lock) must not stall the async runtime. On a single-threaded runtime a blocking
    /// call in the handler would hold every other task until SQLite's busy timeout (5 s);
    /// with the store on its own thread, a 50 ms timer still fires on time and the write
    /// completes once the lock is released.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_waiting_on_sqlite_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, handle) = Actor::spawn(None, RegistryActor, dir.path().to_path_buf()).await.unwrap();
        let lock = rusqlite::Connection::open(dir.path().join("berth.db")).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let r = reg.clone();
        let insert = tokio::spawn(async move { call(&r, |p| RegistryMsg::Insert(project("late"), p)).await });
        let t0 = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(t0.elapsed() < Duration::from_secs(2), "the runtime stalled for {:?}", t0.elapsed());
        assert!(!insert.is_finished(), "the insert is still waiting for the lock");
        lock.execute_batch("COMMIT").unwrap();
        insert.await.unwrap().unwrap();
        assert!(call(&reg, |p| RegistryMsg::Get(ProjectName::parse("late").unwrap(), p)).await.is_some());
        reg.stop(None);
        handle.await.unwrap();
    }

    /// A database with one corrupt row still starts a registry that serves the rest,
    /// reports the bad one, and keeps its memory in step with the disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_row_is_reported_not_fatal_and_memory_follows_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.insert(&project("good")).unwrap();
            store.insert(&project("rotten")).unwrap();
        }
        let conn = rusqlite::Connection::open(dir.path().join("berth.db")).unwrap();
        conn.execute("UPDATE projects SET status = 'melted' WHERE name = 'rotten'", []).unwrap();
        drop(conn);

        let (reg, handle) = Actor::spawn(None, RegistryActor, dir.path().to_path_buf()).await.unwrap();
        assert_eq!(call(&reg, RegistryMsg::Quarantined).await, ["rotten"]);
        let names: Vec<String> = call(&reg, RegistryMsg::List).await.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["good"]);

        // An update of a row that is not there fails and memory does not invent it.
        let e = call(&reg, |r| RegistryMsg::Update(project("ghost"), r)).await.unwrap_err();
        assert!(e.message.contains("ghost"), "{e}");
        assert_eq!(call(&reg, |r| RegistryMsg::Get(ProjectName::parse("ghost").unwrap(), r)).await, None);

        // Activity: recorded by cast, read back in order; unknown projects are not_found.
        let good = ProjectName::parse("good").unwrap();
        for i in 0..3u64 {
            reg.cast(RegistryMsg::Record(Activity {
                project: good.clone(),
                at: OffsetDateTime::now_utc(),
                uid: 0,
                command: vec![format!("c{i}")],
                exit_code: Some(0),
                duration_ms: i,
                runtime: "docker".into(),
                timed_out: false,
            }))
            .unwrap();
        }
        let got = call(&reg, |r| RegistryMsg::Activity(good.clone(), 2, r)).await.unwrap();
        let cmds: Vec<&str> = got.iter().map(|a| a.command[0].as_str()).collect();
        assert_eq!(cmds, ["c1", "c2"]);
        let e = call(&reg, |r| RegistryMsg::Activity(ProjectName::parse("nope").unwrap(), 2, r)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);

        // Deleting the project deletes its log.
        call(&reg, |r| RegistryMsg::Delete(good.clone(), r)).await.unwrap();
        reg.stop(None);
        handle.await.unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.activity(&good, 10).unwrap().is_empty());
    }
}
