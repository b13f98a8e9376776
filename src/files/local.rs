//! File calls for projects that run on the host (no engine, `[local] enabled`): every
//! call is confined to the project's workspace. (Being written: see the files issue.)

use std::path::Path;

use super::{FsCall, FsReply};
use crate::error::{Error, ErrorKind};

/// Carries out `call` in `workspace` as `user` (uid, gid; `None`: berthd's own user).
/// Blocking: run it off the async workers.
pub fn call(workspace: &Path, user: Option<(u32, u32)>, call: FsCall) -> Result<FsReply, Error> {
    let _ = (workspace, user);
    Err(Error::new(
        ErrorKind::RuntimeUnavailable,
        format!("files of projects that run on the host are not available yet ({})", call.path()),
    ))
}
