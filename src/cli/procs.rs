//! `berth logs NAME --process ID [-f]`: a background process's output, raw, stdout to
//! stdout and stderr to stderr. Without `-f` it pages through what the daemon keeps;
//! with `-f` it then follows (`process.output` with `follow: true`) until the process
//! ends. Output the daemon no longer kept is said on stderr, with how much.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use super::conn::decode_data;
use super::mux::{parse_result, CallError, Event, Mux};
use super::{error_exit_code_of, fail, fail_with};

/// What `logs --process` says when output was dropped.
pub fn dropped_note(n: u64) -> String {
    format!("... {n} bytes dropped: output the daemon no longer kept (past exec.max_output per stream) ...")
}

fn write_out(stdout: &[u8], stderr: &[u8]) -> std::io::Result<()> {
    if !stdout.is_empty() {
        let mut o = std::io::stdout().lock();
        o.write_all(stdout)?;
        o.flush()?;
    }
    if !stderr.is_empty() {
        let mut e = std::io::stderr().lock();
        e.write_all(stderr)?;
        e.flush()?;
    }
    Ok(())
}

/// A `process.output` result's bytes: each stream is text, or base64 where its
/// `stdout_encoding` / `stderr_encoding` says so.
fn streams(r: &Value) -> (Vec<u8>, Vec<u8>) {
    (decode_data(r, "stdout", "stdout_encoding"), decode_data(r, "stderr", "stderr_encoding"))
}

fn note_dropped(r: &Value) {
    if let Some(n) = r["dropped"].as_u64().filter(|n| *n > 0) {
        eprintln!("berth: {}", dropped_note(n));
    }
}

fn call_failed(e: CallError) -> ExitCode {
    match &e {
        CallError::Rpc { kind, .. } => fail_with(error_exit_code_of(kind), &e.message()),
        CallError::Conn(_) => fail(&e.message()),
    }
}

pub async fn logs(socket: &Path, name: &str, id: u64, follow: bool, json_out: bool) -> ExitCode {
    if json_out && follow {
        return fail_with(2, "--json cannot be used with --follow: the output streams as it comes");
    }
    let mux = match Mux::open(socket, 4).await {
        Ok(m) => m,
        Err(e) => return fail(&format!("cannot connect to berthd at {}: {e}", socket.display())),
    };
    let (mut so, mut se) = (0u64, 0u64);
    loop {
        let p = json!({"name": name, "id": id, "stdout_offset": so, "stderr_offset": se});
        let r: Value = match mux.call("process.output", &p).await {
            Ok(r) => r,
            Err(e) => return call_failed(e),
        };
        if json_out {
            println!("{r}");
            return ExitCode::SUCCESS;
        }
        note_dropped(&r);
        let (out, err) = streams(&r);
        if write_out(&out, &err).is_err() {
            return ExitCode::SUCCESS;
        }
        let (nso, nse) = (r["stdout_offset"].as_u64().unwrap_or(so), r["stderr_offset"].as_u64().unwrap_or(se));
        let moved = (nso, nse) != (so, se);
        (so, se) = (nso, nse);
        if !moved || (out.is_empty() && err.is_empty()) {
            if !follow || r["running"].as_bool() != Some(true) {
                return ExitCode::SUCCESS;
            }
            break;
        }
    }
    let p = json!({"name": name, "id": id, "stdout_offset": so, "stderr_offset": se, "follow": true});
    let mut events = match mux.call_streaming("process.output", &p).await {
        Ok(rx) => rx,
        Err(e) => return call_failed(e),
    };
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Note(line) => {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                let p = &v["params"];
                let data = decode_data(p, "data", "encoding");
                let done = match p["stream"].as_str() {
                    Some("stderr") => write_out(&[], &data),
                    _ => write_out(&data, &[]),
                };
                if done.is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Event::Done(Ok(line)) => {
                let r: Value = match parse_result(&line) {
                    Ok(r) => r,
                    Err(e) => return call_failed(e),
                };
                note_dropped(&r);
                let (out, err) = streams(&r);
                let _ = write_out(&out, &err);
                return ExitCode::SUCCESS;
            }
            Event::Done(Err(e)) => return call_failed(e),
        }
    }
    fail("connection to berthd failed: berthd closed the connection")
}
