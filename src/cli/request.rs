//! A command's one request: the method and its params, built from the parsed arguments.
//! Only shapes are checked here (`K=V`, `HOST:CONTAINER`); values are the daemon's to
//! validate, so its error is the one shown.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};

use base64::Engine as _;
use serde_json::{json, Value};

use super::{Command, SnapshotCommand};

fn pairs(list: &[String], sep: char, what: &str) -> Result<BTreeMap<String, String>, String> {
    list.iter()
        .map(|p| {
            p.split_once(sep)
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("invalid {what} {p:?}"))
        })
        .collect()
}

/// Sets `key` when the value is there.
fn put(p: &mut Value, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        p[key] = v;
    }
}

/// The method and params for `cmd`; `Err` is a usage error. `None` for a command that
/// needs no daemon.
pub fn request_for(cmd: &Command) -> Result<Option<(&'static str, Value)>, String> {
    Ok(Some(match cmd {
        Command::Info => ("daemon.info", json!({})),
        Command::Create { name, image, description, env, port, profile, network, memory, pids_limit, cpus } => {
            let mut p = json!({"name": name});
            put(&mut p, "image", image.as_ref().map(|v| json!(v)));
            put(&mut p, "description", description.as_ref().map(|v| json!(v)));
            put(&mut p, "profile", profile.as_ref().map(|v| json!(v)));
            put(&mut p, "network", network.as_ref().map(|v| json!(v)));
            put(&mut p, "memory", memory.as_ref().map(|v| json!(v)));
            put(&mut p, "pids_limit", pids_limit.map(|v| json!(v)));
            put(&mut p, "cpus", cpus.map(|v| json!(v)));
            if !env.is_empty() {
                p["env"] = json!(pairs(env, '=', "env (want K=V)")?);
            }
            if !port.is_empty() {
                let hc = pairs(port, ':', "port (want HOST:CONTAINER)")?;
                let cont_to_host: BTreeMap<String, String> = hc.into_iter().map(|(h, c)| (c, h)).collect();
                p["ports"] = json!(cont_to_host);
            }
            ("project.create", p)
        }
        Command::Ls => ("project.list", json!({})),
        Command::Get { name } => ("project.get", json!({"name": name})),
        Command::Status { name } => ("project.status", json!({"name": name})),
        Command::Start { name } => ("project.start", json!({"name": name})),
        Command::Stop { name } => ("project.stop", json!({"name": name})),
        Command::Rm { name, purge, keep_snapshots } => {
            let mut p = json!({"name": name, "purge": purge});
            put(&mut p, "keep_snapshots", keep_snapshots.then(|| json!(true)));
            ("project.delete", p)
        }
        Command::Snapshot(s) => match s {
            SnapshotCommand::Create { name, label } => {
                let mut p = json!({"name": name});
                put(&mut p, "label", label.as_ref().map(|v| json!(v)));
                ("snapshot.create", p)
            }
            SnapshotCommand::Ls { name } => {
                let mut p = json!({});
                put(&mut p, "name", name.as_ref().map(|v| json!(v)));
                ("snapshot.list", p)
            }
            SnapshotCommand::Restore { name, id } => ("snapshot.restore", json!({"name": name, "id": id})),
            SnapshotCommand::Rm { id } => ("snapshot.delete", json!({"id": id})),
        },
        Command::Fork { src, dst, snapshot } => {
            let mut p = json!({"from": src, "name": dst});
            put(&mut p, "snapshot", snapshot.as_ref().map(|v| json!(v)));
            ("project.fork", p)
        }
        Command::Logs { name, tail, .. } => {
            let mut p = json!({"name": name});
            put(&mut p, "tail", tail.map(|t| json!(t)));
            ("project.logs", p)
        }
        Command::Path { name } => ("project.path", json!({"name": name})),
        Command::Reconcile => ("janitor.reconcile", json!({})),
        Command::ArchiveStale => ("janitor.archive_stale", json!({})),
        Command::Exec { detach: true, workdir, env, name, command, .. } => {
            let mut p = json!({"name": name, "command": command});
            put(&mut p, "workdir", workdir.as_ref().map(|v| json!(v)));
            if !env.is_empty() {
                p["env"] = json!(pairs(env, '=', "env (want K=V)")?);
            }
            ("process.spawn", p)
        }
        Command::Ps { name } => ("process.list", json!({"name": name})),
        Command::Kill { name, id, signal, grace } => {
            let mut p = json!({"name": name, "id": id});
            put(&mut p, "signal", signal.as_ref().map(|v| json!(v)));
            put(&mut p, "grace", grace.as_ref().map(|v| json!(v)));
            ("process.kill", p)
        }
        Command::Exec { detach: false, workdir, env, timeout, local, tool, no_stdin, name, command } => {
            let mut p = json!({"name": name, "command": command, "stream": true});
            put(&mut p, "workdir", workdir.as_ref().map(|v| json!(v)));
            if !env.is_empty() {
                p["env"] = json!(pairs(env, '=', "env (want K=V)")?);
            }
            put(&mut p, "timeout", timeout.as_ref().map(|v| json!(v)));
            put(&mut p, "local", local.then(|| json!(true)));
            put(&mut p, "tool", tool.as_ref().map(|v| json!(v)));
            if !no_stdin && !std::io::stdin().is_terminal() {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("reading stdin: {e}"))?;
                if !buf.is_empty() {
                    match String::from_utf8(buf) {
                        Ok(s) => p["stdin"] = json!(s),
                        Err(e) => {
                            p["stdin_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))
                        }
                    }
                }
            }
            ("project.exec", p)
        }
        // Several requests each: run by their own modules.
        Command::Completions { .. } | Command::Cp { .. } | Command::Mcp => return Ok(None),
    }))
}
