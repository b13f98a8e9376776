//! Exec in a project's container, with a timeout and a cancel that kill.
//!
//! Docker has no API to kill an exec, so every exec carries a random marker in its
//! environment (`BERTH_EXEC_ID`); at a timeout or cancel a second exec kills every
//! process in the container whose environment holds that marker — the whole tree the
//! command started, whatever process groups it made.

use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::DockerRuntime;
use crate::model::ProjectName;
use crate::runtime::{Capture, ExecOutcome, ExecSpec, LiveTx, RuntimeError, StreamKind};

/// Kills every process whose environment carries `BERTH_EXEC_ID=$1`: each is stopped as
/// soon as it is found and all are killed after the scan, repeating while any remain.
const KILL_TREE: &str = r#"m="BERTH_EXEC_ID=$1"; n=0
while [ $n -lt 50 ]; do
  pids=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    # environ is NUL-separated; busybox grep stops at a NUL, so split it first.
    if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$m"; then
      # Freeze at once so nothing in the tree runs on while the scan goes on.
      kill -STOP "$p" 2>/dev/null && pids="$pids $p"
    fi
  done
  [ -z "$pids" ] && exit 0
  kill -KILL $pids 2>/dev/null
  n=$((n+1))
done
exit 1"#;

/// How long output is still read after the command's tree was killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

pub(super) async fn run(
    rt: &DockerRuntime,
    project: &ProjectName,
    spec: ExecSpec,
    live: Option<LiveTx>,
    cancel: CancellationToken,
) -> Result<ExecOutcome, RuntimeError> {
    let docker = rt.client().await?;
    let container = DockerRuntime::container_name(project);
    let marker = crate::runtime::token();
    let mut env = spec.env.to_docker();
    env.push(format!("BERTH_EXEC_ID={marker}"));
    let opts = CreateExecOptions {
        attach_stdin: Some(spec.stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        env: Some(env),
        cmd: Some(spec.argv.clone()),
        working_dir: Some(spec.workdir.as_ref().map(|w| w.as_str().to_string()).unwrap_or_else(|| "/workspace".into())),
        ..Default::default()
    };
    let created = rt.bounded("creating exec", docker.create_exec(&container, opts)).await?;
    let start = StartExecOptions { detach: false, tty: false, output_capacity: None };
    let started = rt.bounded("starting exec", docker.start_exec(&created.id, Some(start))).await?;
    let StartExecResults::Attached { mut output, mut input } = started else {
        return Err(RuntimeError::Engine("exec started detached".into()));
    };
    let stdin_task = spec.stdin.clone().map(|data| {
        tokio::spawn(async move {
            let _ = input.write_all(&data).await;
            let _ = input.shutdown().await;
        })
    });

    let mut capture = Capture::new(spec.max_output, live);
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let (mut timed_out, mut cancelled) = (false, false);
    loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(out)) => keep(&mut capture, out).await,
                Some(Err(e)) => {
                    tracing::warn!(%container, error = %e, "exec output stream failed");
                    break;
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => { timed_out = true; break; }
            _ = cancel.cancelled() => { cancelled = true; break; }
        }
    }
    if timed_out || cancelled {
        kill_tree(rt, &docker, &container, &marker).await;
        // Keep what the command printed up to its death.
        let drain = async {
            while let Some(Ok(out)) = output.next().await {
                keep(&mut capture, out).await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_AFTER_KILL, drain).await;
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    let code = if timed_out || cancelled { -1 } else { exit_code(rt, &docker, &created.id).await? };
    Ok(capture.finish(code, timed_out, cancelled))
}

async fn keep(capture: &mut Capture, out: LogOutput) {
    match out {
        LogOutput::StdOut { message } => capture.push(StreamKind::Stdout, message).await,
        LogOutput::StdErr { message } => capture.push(StreamKind::Stderr, message).await,
        LogOutput::StdIn { .. } | LogOutput::Console { .. } => {}
    }
}

/// Kills the tree of one exec from inside the container (as the container's default
/// user, which is the user the exec ran as).
async fn kill_tree(rt: &DockerRuntime, docker: &Docker, container: &str, marker: &str) {
    let opts = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(vec!["/bin/sh".to_string(), "-c".into(), KILL_TREE.into(), "berth-kill".into(), marker.into()]),
        ..Default::default()
    };
    let run = async {
        let created = docker.create_exec(container, opts).await?;
        if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&created.id, None).await? {
            while output.next().await.is_some() {}
        }
        Ok::<(), BollardError>(())
    };
    match tokio::time::timeout(rt.settings.api_timeout, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%container, error = %e, "could not kill exec tree"),
        Err(_) => tracing::warn!(%container, "killing exec tree timed out"),
    }
}

async fn exit_code(rt: &DockerRuntime, docker: &Docker, exec_id: &str) -> Result<i64, RuntimeError> {
    // The attach stream can end a moment before the engine records the exit code.
    let mut delay = Duration::from_millis(1);
    let deadline = Instant::now() + rt.settings.api_timeout;
    loop {
        let info = rt.bounded("inspecting exec", docker.inspect_exec(exec_id)).await?;
        if info.running != Some(true) {
            if let Some(code) = info.exit_code {
                return Ok(code);
            }
        }
        if Instant::now() > deadline {
            return Err(RuntimeError::Engine(format!("exec {exec_id} never reported an exit code")));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}
