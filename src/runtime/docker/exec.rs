//! Exec in a project's container, with a timeout and a cancel that kill.
//!
//! Docker has no API to kill an exec, so every exec carries a random marker in its
//! environment (`BERTH_EXEC_ID`); at a timeout or cancel a second exec kills every
//! process in the container whose environment holds that marker — the whole tree the
//! command started, whatever process groups it made. A kill that could not run is
//! reported, never claimed done.
//!
//! The engine reports a command it could not start (not found, not executable, a
//! missing workdir) only as text on the exec's stdout with exit code 126; `start_failure`
//! is the one place that reads that text, and turns it into typed outcomes: exit 127 or
//! 126 with an `exec_error`, or an invalid workdir.

use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::DockerRuntime;
use crate::model::ProjectName;
use crate::runtime::{
    until, Capture, ExecOutcome, ExecSpec, Interrupt, RuntimeError, StreamKind, NOT_EXECUTABLE_EXIT, NOT_FOUND_EXIT,
};

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
/// How long one piece of output may wait for the client while the command is killed.
const PUSH_WHILE_KILLING: Duration = Duration::from_millis(100);

/// How long the engine may take to record an exit code after the output stream ended.
/// An exec still running past it lost its stream (a cut connection ends it quietly).
const EXIT_AFTER_EOF: Duration = Duration::from_secs(2);

/// What the engine prints (on the exec's stdout) when it could not start the command.
const ENGINE_START_FAILURE: &[u8] = b"OCI runtime exec failed";

pub(super) async fn run(
    rt: &DockerRuntime,
    project: &ProjectName,
    spec: ExecSpec,
    mut capture: Capture,
    cancel: CancellationToken,
) -> Result<ExecOutcome, RuntimeError> {
    let docker = rt.client().await?;
    let container = DockerRuntime::container_name(project);
    let marker = crate::runtime::token();
    let mut env = spec.env.to_docker();
    env.push(format!("BERTH_EXEC_ID={marker}"));
    let workdir = spec.workdir.as_ref().map(|w| w.as_str().to_string()).unwrap_or_else(|| "/workspace".into());
    let opts = CreateExecOptions {
        attach_stdin: Some(spec.stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        env: Some(env),
        cmd: Some(spec.argv.clone()),
        working_dir: Some(workdir.clone()),
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

    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut stopped: Option<Interrupt> = None;
    let mut stream_error = None;
    // The first stdout chunk is held back while it may be the engine's own start failure,
    // so that text never reaches the client as the command's output.
    let mut first: Option<Option<Bytes>> = None;
    loop {
        let item = match until(output.next(), deadline, &cancel).await {
            Ok(item) => item,
            Err(why) => {
                stopped = Some(why);
                break;
            }
        };
        let out = match item {
            Some(Ok(out)) => out,
            Some(Err(e)) => {
                stream_error = Some(e.to_string());
                break;
            }
            None => break,
        };
        let out = match (first.is_none(), out) {
            (true, LogOutput::StdOut { message }) if message.starts_with(ENGINE_START_FAILURE) => {
                first = Some(Some(message));
                continue;
            }
            (_, out) => out,
        };
        let held = first.replace(None).flatten();
        let push = async {
            if let Some(h) = held {
                capture.push(StreamKind::Stdout, h).await;
            }
            keep(&mut capture, out).await;
        };
        if let Err(why) = until(push, deadline, &cancel).await {
            stopped = Some(why);
            break;
        }
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    let mut code = None;
    if stopped.is_none() && stream_error.is_none() {
        code = exit_code(rt, &docker, &created.id, EXIT_AFTER_EOF).await?;
        if code.is_none() {
            stream_error = Some("it ended while the command still ran".into());
        }
    }
    if let Some(e) = stream_error {
        let fate = match kill_tree(rt, &docker, &container, &marker).await {
            Ok(()) => "it was killed".to_string(),
            Err(why) => format!("it could not be killed ({why}) and may still run"),
        };
        return Err(RuntimeError::Engine(format!("the output stream of {:?} failed ({e}); {fate}", spec.argv[0])));
    }
    if let Some(why) = stopped {
        // The output is read while the kill runs: an exec whose output nobody reads
        // stalls in the engine, and the kill with it. What cannot be kept at once (a
        // client that does not read) is dropped; the command is being killed anyway.
        let kill = kill_tree(rt, &docker, &container, &marker);
        tokio::pin!(kill);
        let mut killed = None;
        let mut drain_until = tokio::time::Instant::now() + rt.settings.api_timeout + DRAIN_AFTER_KILL;
        if let Some(Some(held)) = first.take() {
            let _ = tokio::time::timeout(PUSH_WHILE_KILLING, capture.push(StreamKind::Stdout, held)).await;
        }
        loop {
            tokio::select! {
                r = &mut kill, if killed.is_none() => {
                    killed = Some(r);
                    drain_until = tokio::time::Instant::now() + DRAIN_AFTER_KILL;
                }
                item = output.next() => match item {
                    Some(Ok(out)) => {
                        let _ = tokio::time::timeout(PUSH_WHILE_KILLING, keep(&mut capture, out)).await;
                    }
                    _ => break,
                },
                _ = tokio::time::sleep_until(drain_until) => break,
            }
        }
        let killed = match killed {
            Some(k) => k,
            None => kill.await,
        };
        let timed_out = why == Interrupt::Timeout;
        let mut o = capture.finish(-1, timed_out, !timed_out);
        o.kill_error = killed.err();
        return Ok(o);
    }
    let code = code.unwrap_or(-1);
    if let Some(Some(text)) = first {
        match start_failure(code, &text) {
            Some(StartFailure::Workdir) => {
                return Err(RuntimeError::InvalidWorkdir(format!(
                    "invalid workdir {workdir:?}: no such directory in the container"
                )))
            }
            Some(StartFailure::NotFound) => {
                let why =
                    format!("command {:?} not found in the container (not on $PATH, or no such file)", spec.argv[0]);
                return Ok(capture.failed_to_start(NOT_FOUND_EXIT, why));
            }
            Some(StartFailure::NotExecutable) => {
                let why = format!("command {:?} is not executable in the container (permission denied)", spec.argv[0]);
                return Ok(capture.failed_to_start(NOT_EXECUTABLE_EXIT, why));
            }
            // The command itself printed it: it is output like any other.
            None => capture.push(StreamKind::Stdout, text).await,
        }
    }
    Ok(capture.finish(code, false, false))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartFailure {
    NotFound,
    NotExecutable,
    Workdir,
}

/// Reads the engine's start-failure text (runc's words, the only signal Docker gives),
/// given the exit code it reported for the exec.
fn start_failure(code: i64, text: &[u8]) -> Option<StartFailure> {
    if code != NOT_EXECUTABLE_EXIT && code != NOT_FOUND_EXIT {
        return None;
    }
    let t = String::from_utf8_lossy(text);
    if !t.starts_with("OCI runtime exec failed") || t.lines().count() > 1 {
        return None;
    }
    if t.contains("chdir to cwd") {
        Some(StartFailure::Workdir)
    } else if t.contains("executable file not found") || t.contains("no such file or directory") {
        Some(StartFailure::NotFound)
    } else if t.contains("permission denied") || t.contains("exec format error") {
        Some(StartFailure::NotExecutable)
    } else {
        None
    }
}

async fn keep(capture: &mut Capture, out: LogOutput) {
    match out {
        LogOutput::StdOut { message } => capture.push(StreamKind::Stdout, message).await,
        LogOutput::StdErr { message } => capture.push(StreamKind::Stderr, message).await,
        LogOutput::StdIn { .. } | LogOutput::Console { .. } => {}
    }
}

/// Kills the tree of one exec from inside the container (as the container's default
/// user, which is the user the exec ran as). `Err` says why it could not be done.
async fn kill_tree(rt: &DockerRuntime, docker: &Docker, container: &str, marker: &str) -> Result<(), String> {
    let opts = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(vec!["/bin/sh".to_string(), "-c".into(), KILL_TREE.into(), "berth-kill".into(), marker.into()]),
        ..Default::default()
    };
    let run = async {
        let created = rt.bounded("creating the kill exec", docker.create_exec(container, opts)).await?;
        let mut said = Vec::new();
        if let StartExecResults::Attached { mut output, .. } =
            rt.bounded("starting the kill exec", docker.start_exec(&created.id, None)).await?
        {
            while let Some(Ok(out)) = output.next().await {
                said.extend_from_slice(&out.into_bytes());
            }
        }
        let code = exit_code(rt, docker, &created.id, rt.settings.api_timeout).await?;
        Ok::<_, RuntimeError>((code.unwrap_or(-1), said))
    };
    let res = match tokio::time::timeout(rt.settings.api_timeout, run).await {
        Ok(Ok((0, _))) => return Ok(()),
        // The container stopped (a stop or delete is what cancelled the exec): its
        // processes went with it.
        _ if !container_runs(rt, docker, container).await => return Ok(()),
        Ok(Ok((code, said))) => match start_failure(code, &said) {
            Some(_) => "the image has no /bin/sh to run the kill with".to_string(),
            None => format!("the kill exited {code}: {}", String::from_utf8_lossy(&said).trim()),
        },
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("the kill did not finish within {:?}", rt.settings.api_timeout),
    };
    tracing::warn!(%container, error = %res, "could not kill an exec's processes");
    Err(res)
}

async fn container_runs(rt: &DockerRuntime, docker: &Docker, container: &str) -> bool {
    let inspect = tokio::time::timeout(rt.settings.api_timeout, docker.inspect_container(container, None)).await;
    match inspect {
        Ok(Ok(c)) => c.state.and_then(|s| s.running).unwrap_or(false),
        // Gone: nothing of it runs. Unknown (the engine did not say): assume it runs.
        Ok(Err(e)) => !DockerRuntime::is_not_found(&e),
        Err(_) => true,
    }
}

/// The exec's exit code once the engine has it; `None` if it still runs after `grace`
/// (the attach stream can end a moment before the engine records the exit).
async fn exit_code(
    rt: &DockerRuntime,
    docker: &Docker,
    exec_id: &str,
    grace: Duration,
) -> Result<Option<i64>, RuntimeError> {
    let mut delay = Duration::from_millis(1);
    let deadline = Instant::now() + grace;
    loop {
        let info = rt.bounded("inspecting exec", docker.inspect_exec(exec_id)).await?;
        if info.running != Some(true) {
            if let Some(code) = info.exit_code {
                return Ok(Some(code));
            }
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_start_failures_table() {
        let rows: &[(i64, &str, Option<StartFailure>)] = &[
            (
                126,
                r#"OCI runtime exec failed: exec failed: unable to start container process: exec: "nope": executable file not found in $PATH: unknown"#,
                Some(StartFailure::NotFound),
            ),
            (
                126,
                r#"OCI runtime exec failed: exec failed: unable to start container process: exec: "/x/y": stat /x/y: no such file or directory: unknown"#,
                Some(StartFailure::NotFound),
            ),
            (
                126,
                r#"OCI runtime exec failed: exec failed: unable to start container process: exec: "/etc/passwd": permission denied: unknown"#,
                Some(StartFailure::NotExecutable),
            ),
            (
                126,
                r#"OCI runtime exec failed: exec failed: unable to start container process: chdir to cwd ("/nope") set in config.json failed: no such file or directory: unknown"#,
                Some(StartFailure::Workdir),
            ),
            // A command that prints the same words but exits otherwise is just output.
            (0, r#"OCI runtime exec failed: exec failed: executable file not found"#, None),
            (126, "OCI runtime exec failed: executable file not found\nmore output", None),
            (126, "some other text", None),
        ];
        for (code, text, want) in rows {
            assert_eq!(start_failure(*code, text.as_bytes()), *want, "{code} {text}");
        }
    }
}
