//! The actor tree: a root supervisor, the registry, the janitor and one actor per
//! project. This module holds what they share: the context handed to each and the one
//! helper every actor call goes through, so that no call is made without a timeout.

pub mod janitor;
pub mod project;
pub mod registry;
pub mod supervisor;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::runtime::Runtimes;
use crate::workspace::Workspaces;

/// What every actor may use; cheap to clone.
pub struct Ctx {
    pub config: Config,
    pub workspaces: Workspaces,
    pub runtimes: Runtimes,
    pub registry: RegistryHandle,
    /// Every project's running execs, kept outside the project actors.
    pub execs: project::ExecTable,
    /// The cap on exec output held in memory, across all connections.
    pub budget: std::sync::Arc<crate::runtime::Budget>,
    /// Debug hooks (`debug.*` methods) are served only when this is set.
    pub debug_hooks: bool,
    /// `<state_dir>/snapshots`.
    pub snapshots: crate::snapshot::SnapshotDirs,
    /// Snapshots a fork is copying from right now.
    pub snapshot_locks: std::sync::Arc<crate::snapshot::SnapshotLocks>,
}

impl Ctx {
    /// Bound on a lifecycle call that may pull an image.
    pub fn lifecycle_timeout(&self) -> Duration {
        self.config.docker.pull_timeout.0 + self.config.docker.api_timeout.0 * 6 + self.config.docker.stop_timeout.0
    }

    /// Bound on a call that only talks to the engine a few times.
    pub fn short_timeout(&self) -> Duration {
        self.config.docker.api_timeout.0 * 4 + self.config.docker.stop_timeout.0
    }
}

/// The current registry actor. The supervisor swaps in a new one if it ever restarts,
/// so holders always reach the live one.
#[derive(Clone, Default)]
pub struct RegistryHandle(Arc<RwLock<Option<ActorRef<registry::RegistryMsg>>>>);

impl RegistryHandle {
    pub fn set(&self, r: ActorRef<registry::RegistryMsg>) {
        if let Ok(mut g) = self.0.write() {
            *g = Some(r);
        }
    }

    pub fn get(&self) -> Result<ActorRef<registry::RegistryMsg>, Error> {
        self.0
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "the registry is restarting; retry"))
    }
}

/// Calls an actor and waits at most `timeout`; a dead actor or a lapsed timeout is an
/// error for the caller, never a hang.
pub async fn ask<M, R>(
    actor: &ActorRef<M>,
    what: &str,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<R>) -> M,
) -> Result<R, Error>
where
    M: ractor::Message,
    R: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(r)) => Ok(r),
        Ok(CallResult::Timeout) => Err(Error::new(
            ErrorKind::Timeout,
            format!("{what} did not answer within {}", humantime::format_duration(timeout)),
        )),
        Ok(CallResult::SenderError) => Err(Error::internal(format!("{what} failed while handling the request"))),
        Err(e) => Err(Error::internal(format!("{what} is not running: {e}"))),
    }
}
