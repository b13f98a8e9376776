//! The registry actor: owns the SQLite store and an in-memory copy of every row.
//!
//! Reads are answered from memory; every write goes to SQLite first and to memory only
//! once committed, so memory never shows what the disk does not hold. It knows nothing of
//! containers and never waits on another actor.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::Error;
use crate::model::{Project, ProjectName};
use crate::store::Store;

pub struct RegistryActor;

pub struct RegistryState {
    store: Store,
    rows: BTreeMap<ProjectName, Project>,
}

pub enum RegistryMsg {
    Get(ProjectName, RpcReplyPort<Option<Project>>),
    List(RpcReplyPort<Vec<Project>>),
    Count(RpcReplyPort<usize>),
    /// Inserts a new row; `already_exists` if the name is taken.
    Insert(Project, RpcReplyPort<Result<(), Error>>),
    /// Writes a row's status, image and last_used.
    Update(Project, RpcReplyPort<Result<(), Error>>),
    Delete(ProjectName, RpcReplyPort<Result<(), Error>>),
    /// Folds the WAL into the database file (clean shutdown).
    Checkpoint(RpcReplyPort<Result<(), Error>>),
}

impl Actor for RegistryActor {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = PathBuf;

    async fn pre_start(&self, _me: ActorRef<Self::Msg>, state_dir: PathBuf) -> Result<Self::State, ActorProcessingErr> {
        let store = Store::open(&state_dir)?;
        let rows = store.list()?.into_iter().map(|p| (p.name.clone(), p)).collect::<BTreeMap<_, _>>();
        tracing::info!(projects = rows.len(), db = %state_dir.join("berth.db").display(), "registry loaded");
        Ok(RegistryState { store, rows })
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
            RegistryMsg::Insert(p, reply) => {
                let res = st.store.insert(&p).map_err(Error::from);
                if res.is_ok() {
                    st.rows.insert(p.name.clone(), p);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::Update(p, reply) => {
                let res = st.store.update(&p).map_err(Error::from);
                if res.is_ok() {
                    st.rows.insert(p.name.clone(), p);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::Delete(name, reply) => {
                let res = st.store.delete(&name).map(|_| ()).map_err(Error::from);
                if res.is_ok() {
                    st.rows.remove(&name);
                }
                let _ = reply.send(res);
            }
            RegistryMsg::Checkpoint(reply) => {
                let _ = reply.send(st.store.checkpoint().map_err(Error::from));
            }
        }
        Ok(())
    }
}
