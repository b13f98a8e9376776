//! One exec over the agent: the same semantics as the engine's exec path (argv, env,
//! workdir, stdin then EOF, live and separate streams, caps, exact exit codes, 127/126
//! for commands that cannot start), with the agent's own kill of the whole tree at a
//! timeout or cancel. Output is acknowledged as it is consumed, so a slow client holds
//! the command back instead of filling memory.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use berth_wire::{FailReason, Frame, Start, Stream, MAX_CHUNK, MAX_FRAME};
use tokio_util::sync::CancellationToken;

use super::{AgentConn, AgentError, Event};
use crate::runtime::{
    until, Capture, ExecOutcome, ExecSpec, Interrupt, StreamKind, NOT_EXECUTABLE_EXIT, NOT_FOUND_EXIT,
};

/// How long the agent gets to report a killed command's end.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long one piece of output may wait for the client while the command is killed.
const PUSH_WHILE_KILLING: Duration = Duration::from_millis(100);

/// What an agent exec can end in besides an outcome.
pub enum AgentExecError {
    Agent(AgentError),
    /// The workdir does not exist in the container.
    Workdir(String),
    /// The agent could not start the command for another reason.
    Start(String),
}

impl From<AgentError> for AgentExecError {
    fn from(e: AgentError) -> Self {
        AgentExecError::Agent(e)
    }
}

/// Whether the command fits one `Start` frame (argv and env are not limited otherwise:
/// a request up to `server.max_line` can take more). Larger ones take the exec path.
pub fn fits(spec: &ExecSpec) -> bool {
    let workdir = spec.workdir.as_ref().map(|w| w.as_str().len()).unwrap_or("/workspace".len());
    let argv: usize = spec.argv.iter().map(|a| 4 + a.len()).sum();
    let env: usize = spec.env.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    // kind + id, the two list counts, the workdir and the stdin flag.
    let len = 5 + 4 + argv + 4 + env + 4 + workdir + 1;
    len <= MAX_FRAME
}

impl AgentConn {
    pub async fn exec(
        self: &Arc<Self>,
        spec: ExecSpec,
        mut capture: Capture,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, AgentExecError> {
        let (id, mut events, unacked) = self.register();
        let ack = |n: u32| {
            unacked.fetch_sub(u64::from(n), Ordering::AcqRel);
            self.send(Frame::Ack { id, bytes: n })
        };
        let _done = Unregister(self.clone(), id);
        let workdir = spec.workdir.as_ref().map(|w| w.as_str().to_string()).unwrap_or_else(|| "/workspace".into());
        let start = Start {
            id,
            argv: spec.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: spec.env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            workdir: workdir.as_bytes().to_vec(),
            stdin: spec.stdin.is_some(),
        };
        self.send(Frame::Start(start))?;
        if let Some(data) = &spec.stdin {
            for chunk in data.chunks(MAX_CHUNK) {
                self.send(Frame::Stdin { id, data: chunk.to_vec() })?;
            }
            self.send(Frame::StdinEnd { id })?;
        }
        let deadline = tokio::time::Instant::now() + spec.timeout;
        let lost = || {
            AgentExecError::Agent(AgentError::Lost(format!(
                "the agent of project {} went away while {:?} ran",
                self.project, spec.argv[0]
            )))
        };
        let mut stopped = None;
        let end = loop {
            let ev = match until(events.recv(), deadline, &cancel).await {
                Ok(Some(Event::Frame(f))) => f,
                // Closed by berthd stopping the project: the cancel is what counts.
                Ok(None) if cancel.is_cancelled() => {
                    stopped = Some(Interrupt::Cancel);
                    break None;
                }
                Ok(None) => return Err(lost()),
                Err(why) => {
                    stopped = Some(why);
                    break None;
                }
            };
            match ev {
                Frame::Output { stream, data, .. } => {
                    let n = data.len() as u32;
                    if let Err(why) = until(capture.push(stream_kind(stream), data.into()), deadline, &cancel).await {
                        stopped = Some(why);
                        break None;
                    }
                    ack(n)?;
                }
                f @ (Frame::Exited { .. } | Frame::Failed { .. }) => break Some(f),
                _ => {}
            }
        };
        let end = match (end, stopped) {
            (Some(f), _) => f,
            (None, why) => {
                // Kill the whole tree; keep reading (and acknowledging) so the agent can
                // drain, and wait for it to say the command ended.
                // On a closed connection there is no one to tell: the agent kills every
                // command of a connection that closes.
                let _ = self.send(Frame::Kill { id });
                let wait = async {
                    while let Some(Event::Frame(f)) = events.recv().await {
                        match f {
                            Frame::Output { stream, data, .. } => {
                                let n = data.len() as u32;
                                let push = capture.push(stream_kind(stream), data.into());
                                let _ = tokio::time::timeout(PUSH_WHILE_KILLING, push).await;
                                let _ = ack(n);
                            }
                            Frame::Exited { .. } | Frame::Failed { .. } => return Ok(()),
                            _ => {}
                        }
                    }
                    // The connection closed (berthd stopping the project closes it): the agent
                    // kills every command of a closed connection, and a dead agent takes
                    // its container's processes with it.
                    Ok(())
                };
                let killed = match tokio::time::timeout(KILL_WAIT, wait).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("the agent did not confirm the kill within {KILL_WAIT:?}")),
                };
                let timed_out = why == Some(Interrupt::Timeout);
                let mut o = capture.finish(-1, timed_out, !timed_out);
                o.kill_error = killed.err();
                o.path = "agent";
                return Ok(o);
            }
        };
        let mut o = match end {
            Frame::Exited { code, signal, .. } => {
                let code = if signal > 0 { 128 + i64::from(signal) } else { i64::from(code) };
                capture.finish(code, false, false)
            }
            Frame::Failed { reason, message, .. } => match reason {
                FailReason::NotFound => capture.failed_to_start(
                    NOT_FOUND_EXIT,
                    format!("command {:?} not found in the container (not on $PATH, or no such file)", spec.argv[0]),
                ),
                FailReason::NotExecutable => capture.failed_to_start(
                    NOT_EXECUTABLE_EXIT,
                    format!("command {:?} is not executable in the container ({message})", spec.argv[0]),
                ),
                FailReason::BadWorkdir => {
                    return Err(AgentExecError::Workdir(format!(
                        "invalid workdir {workdir:?}: no such directory in the container"
                    )))
                }
                FailReason::Other => {
                    return Err(AgentExecError::Start(format!("cannot run {:?}: {message}", spec.argv[0])))
                }
            },
            _ => unreachable!("the loop ends only on Exited or Failed"),
        };
        o.path = "agent";
        Ok(o)
    }
}

fn stream_kind(s: Stream) -> StreamKind {
    match s {
        Stream::Stdout => StreamKind::Stdout,
        Stream::Stderr => StreamKind::Stderr,
    }
}

/// Forgets a command's event channel however its exec ends.
struct Unregister(Arc<AgentConn>, u32);

impl Drop for Unregister {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}
