//! The local runtime: plain processes in the project's workspace on the host.
//!
//! Only used where the operator enabled it (`[local] enabled`): when no engine answers
//! for a project that never had a container, when a request says `local: true`, or when
//! routing sends a tool here. Each command runs in its own process group with a clean
//! environment (`PATH`, `HOME` = the workspace, then the project's and the request's
//! env), with `no_new_privs` set (a setuid file planted in the workspace gains nothing),
//! and, when berthd is root, as `[local] user`, never as root. A timeout or cancel kills
//! the whole group. A workdir must resolve inside the workspace. There are no containers
//! here: lifecycle calls succeed without doing anything.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::{
    until, Capture, ContainerInfo, ContainerSpec, ExecOutcome, ExecSpec, Interrupt, Runtime, RuntimeError, RuntimeKind,
    StreamKind, NOT_EXECUTABLE_EXIT, NOT_FOUND_EXIT,
};
use crate::model::{ProjectName, Workdir};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Default)]
pub struct LocalRuntime {
    /// The uid and gid commands run as; `None` runs them as berthd's own user (which is
    /// then not root).
    pub run_as: Option<(u32, u32)>,
}

impl LocalRuntime {
    /// Maps a workdir to a host directory inside the workspace: `/workspace/...` means
    /// the workspace (as in a container); any other path must already be inside it.
    pub fn resolve_workdir(workspace: &Path, workdir: Option<&Workdir>) -> Result<PathBuf, RuntimeError> {
        let root = workspace
            .canonicalize()
            .map_err(|e| RuntimeError::Io(format!("workspace {}: {e}", workspace.display())))?;
        let Some(w) = workdir else { return Ok(root) };
        let raw = w.as_str();
        let candidate = match raw.strip_prefix("/workspace") {
            Some("") => root.clone(),
            Some(rest) if rest.starts_with('/') => root.join(rest.trim_start_matches('/')),
            _ => PathBuf::from(raw),
        };
        let resolved = candidate
            .canonicalize()
            .map_err(|e| RuntimeError::InvalidWorkdir(format!("invalid workdir {raw:?}: {e}")))?;
        if !resolved.starts_with(&root) {
            return Err(RuntimeError::InvalidWorkdir(format!(
                "invalid workdir {raw:?}: resolves to {} outside the workspace {}",
                resolved.display(),
                root.display()
            )));
        }
        Ok(resolved)
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Local
    }

    async fn fs(
        &self,
        _project: &ProjectName,
        workspace: &Path,
        call: crate::files::FsCall,
        _within: std::time::Duration,
        hold: &mut super::Reservation,
    ) -> Result<crate::files::FsReply, crate::error::Error> {
        let (workspace, user) = (workspace.to_path_buf(), self.run_as);
        let path = call.path().clone();
        let reply = tokio::task::spawn_blocking(move || crate::files::local::call(&workspace, user, call))
            .await
            .map_err(|e| crate::error::Error::internal(format!("file call on the host: {e}")))??;
        // Data read is held until written, like exec output (a host read is one piece).
        if let crate::files::FsReply::Data { data, .. } = &reply {
            if !hold.grow(data.len()) {
                return Err(crate::files::budget_full(&path));
            }
        }
        Ok(reply)
    }

    async fn ping(&self) -> Result<super::EngineInfo, RuntimeError> {
        Ok(super::EngineInfo { engine: "local".into(), version: env!("CARGO_PKG_VERSION").into(), rootless: false })
    }

    async fn ensure_running(&self, _spec: &ContainerSpec<'_>) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(None)
    }

    async fn stop(&self, _project: &ProjectName) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn remove(&self, _project: &ProjectName) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn inspect(&self, _project: &ProjectName) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(None)
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn logs(&self, project: &ProjectName, _tail: Option<u64>) -> Result<String, RuntimeError> {
        Err(RuntimeError::Unavailable(format!("project {project} has no container log: no container engine is in use")))
    }

    async fn exec(
        &self,
        _project: &ProjectName,
        workspace: &Path,
        spec: ExecSpec,
        mut capture: Capture,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, RuntimeError> {
        let dir = Self::resolve_workdir(workspace, spec.workdir.as_ref())?;
        let (program, args) = spec.argv.split_first().ok_or_else(|| RuntimeError::Io("empty command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()))
            .env("HOME", workspace)
            .envs(spec.env.iter())
            .process_group(0)
            .stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.run_as {
            // std drops supplementary groups when a root parent sets uid.
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let why = format!("command {program:?} not found on the host (not on $PATH, or no such file)");
                return Ok(capture.failed_to_start(NOT_FOUND_EXIT, why));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let why = format!("command {program:?} is not executable on the host (permission denied)");
                return Ok(capture.failed_to_start(NOT_EXECUTABLE_EXIT, why));
            }
            Err(e) => return Err(RuntimeError::Io(format!("cannot run {program:?} in {}: {e}", dir.display()))),
        };
        let pgid = child.id().map(|p| p as i32);
        if let (Some(data), Some(mut stdin)) = (spec.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                let _ = stdin.write_all(&data).await;
                let _ = stdin.shutdown().await;
            });
        }
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let deadline = tokio::time::Instant::now() + spec.timeout;
        let mut stopped = None;
        while out.is_some() || err.is_some() {
            let next = async {
                tokio::select! {
                    chunk = read_some(&mut out) => (StreamKind::Stdout, chunk),
                    chunk = read_some(&mut err) => (StreamKind::Stderr, chunk),
                }
            };
            let (stream, chunk) = match until(next, deadline, &cancel).await {
                Ok(v) => v,
                Err(why) => {
                    stopped = Some(why);
                    break;
                }
            };
            match chunk {
                // Forwarding to a client that does not read must not outlast the deadline.
                Some(b) => {
                    if let Err(why) = until(capture.push(stream, b), deadline, &cancel).await {
                        stopped = Some(why);
                        break;
                    }
                }
                None if stream == StreamKind::Stdout => out = None,
                None => err = None,
            }
        }
        if stopped.is_some() {
            if let Some(pg) = pgid {
                // SAFETY: kill(2) on our own child's process group; no memory involved.
                unsafe { libc::kill(-pg, libc::SIGKILL) };
            }
        }
        let status = child.wait().await.map_err(|e| RuntimeError::Io(format!("waiting for {program:?}: {e}")))?;
        let code = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
            (Some(c), _) => c as i64,
            (None, Some(sig)) => 128 + sig as i64,
            (None, None) => -1,
        };
        let timed_out = stopped == Some(Interrupt::Timeout);
        Ok(capture.finish(code, timed_out, stopped == Some(Interrupt::Cancel)))
    }
}

/// Reads the next chunk from a pipe; `None` at EOF. Pends forever on a closed slot so a
/// finished stream drops out of the `select!`.
async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>) -> Option<Bytes> {
    let Some(r) = pipe.as_mut() else {
        return std::future::pending().await;
    };
    let mut buf = BytesMut::with_capacity(32 * 1024);
    match r.read_buf(&mut buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(buf.freeze()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EnvMap;
    use std::time::Duration;

    fn spec(argv: &[&str]) -> ExecSpec {
        ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            workdir: None,
            env: EnvMap::parse_pairs(["GREETING=hi"]).unwrap(),
            timeout: Duration::from_secs(10),
            stdin: None,
            engine_exec: false,
        }
    }

    fn capture() -> Capture {
        Capture::new(1 << 20, None, crate::runtime::Budget::new(usize::MAX))
    }

    fn name() -> ProjectName {
        ProjectName::parse("t").unwrap()
    }

    #[tokio::test]
    async fn runs_in_workspace_with_env_and_separate_streams() {
        let ws = tempfile::tempdir().unwrap();
        let o = LocalRuntime::default()
            .exec(
                &name(),
                ws.path(),
                spec(&["sh", "-c", "pwd; echo $GREETING; echo oops >&2; exit 3"]),
                capture(),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        let root = ws.path().canonicalize().unwrap();
        assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("{}\nhi\n", root.display()));
        assert_eq!(o.stderr, b"oops\n");
        assert_eq!(o.exit_code, 3);
    }

    #[tokio::test]
    async fn timeout_kills_the_group() {
        let ws = tempfile::tempdir().unwrap();
        let mut s = spec(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
        s.timeout = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let o = LocalRuntime::default().exec(&name(), ws.path(), s, capture(), CancellationToken::new()).await.unwrap();
        assert!(o.timed_out);
        assert_eq!(o.exit_code, 124);
        assert!(start.elapsed() < Duration::from_secs(10), "returned after {:?}", start.elapsed());
    }

    #[tokio::test]
    async fn missing_and_unexecutable_commands_exit_127_and_126_with_a_reason() {
        let ws = tempfile::tempdir().unwrap();
        let plain = ws.path().join("plain");
        std::fs::write(&plain, "not a program").unwrap();
        let rt = LocalRuntime::default();
        let n = name();
        let run = |argv: Vec<String>| {
            let mut s = spec(&[]);
            s.argv = argv;
            rt.exec(&n, ws.path(), s, capture(), CancellationToken::new())
        };
        let o = run(vec!["no-such-command-xyz".into()]).await.unwrap();
        assert_eq!(o.exit_code, 127);
        assert!(o.exec_error.as_deref().unwrap().contains("\"no-such-command-xyz\" not found"), "{o:?}");
        let o = run(vec![plain.display().to_string()]).await.unwrap();
        assert_eq!(o.exit_code, 126);
        assert!(o.exec_error.as_deref().unwrap().contains("not executable"), "{o:?}");
        assert!(o.stdout.is_empty() && o.stderr.is_empty());
    }

    #[tokio::test]
    async fn a_timeout_fires_while_output_is_stuck_on_a_client_that_does_not_read() {
        let ws = tempfile::tempdir().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let c = Capture::new(usize::MAX, Some(tx), crate::runtime::Budget::new(usize::MAX));
        let mut s = spec(&["yes"]);
        s.timeout = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let o = LocalRuntime::default().exec(&name(), ws.path(), s, c, CancellationToken::new()).await.unwrap();
        assert!(o.timed_out, "{o:?}");
        assert!(start.elapsed() < Duration::from_secs(10), "returned after {:?}", start.elapsed());
    }

    #[tokio::test]
    async fn workdir_must_stay_inside() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.path().join("link")).unwrap();
        let root = ws.path().canonicalize().unwrap();
        let ok = |w: &str| LocalRuntime::resolve_workdir(ws.path(), Some(&Workdir::parse(w).unwrap()));
        assert_eq!(ok("/workspace").unwrap(), root);
        assert_eq!(ok("/workspace/sub").unwrap(), root.join("sub"));
        for bad in ["/etc", "/workspace/../", "/workspace/link", "/workspace/missing"] {
            let e = ok(bad).unwrap_err();
            assert!(matches!(e, RuntimeError::InvalidWorkdir(_)), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
