//! The listening socket: replaces a stale socket file (and nothing else) at the path,
//! binds with mode 0666, and accepts connections forever, one thread each.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::command::BaseEnv;
use crate::conn;
use crate::sys;

/// Binds the agent's socket at `path`. The socket is bound and listening under a
/// neighbouring name first and then renamed into place, so that once `path` exists a
/// connection to it succeeds.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    remove_stale_socket(path)?;
    remove_stale_socket(&tmp)?;
    // Open to every uid: on the host only berthd can reach the directory (berthd keeps
    // `run/` to itself), and berthd need not be the container's user (a non-root berthd,
    // a root container). Inside the container, any process could reach the agent anyway.
    let old = sys::umask(0o111);
    let bound = UnixListener::bind(&tmp);
    sys::umask(old);
    let listener = bound.map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", tmp.display())))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666))?;
    fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Removes a socket file at `path`; anything else there is an error, and left alone.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => fs::remove_file(path),
        Ok(_) => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists and is not a socket", path.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Accepts connections forever.
pub fn serve(listener: UnixListener, env: BaseEnv) -> ! {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let env = env.clone();
                // Without a thread the connection is dropped: berthd sees it close.
                let _ = thread::Builder::new().name("conn".into()).spawn(move || conn::serve(stream, env));
            }
            // Out of descriptors or memory: back off a little instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}
