//! End to end through the `berth` CLI against a real `berthd` and a real Docker engine.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn create_ls_get_status_labels_network_and_path() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("web");
    let p = json_of(&d.berth_ok(&[
        "create",
        &name,
        "--image",
        IMAGE,
        "--description",
        "demo",
        "--env",
        "A=1",
        "--port",
        "18931:80",
        "--json",
    ]));
    assert_eq!(p["name"], name.as_str());
    assert_eq!(p["status"], "running");
    assert_eq!(p["image"], IMAGE);
    assert_eq!(p["description"], "demo");
    assert_eq!(p["env"]["A"], "1");
    assert_eq!(p["ports"]["80/tcp"], "18931");
    let path = PathBuf::from(p["path"].as_str().unwrap());
    assert_eq!(path, d.state.join("projects").join(&name));
    assert!(path.is_dir(), "workspace made");

    // What the engine says.
    let container = format!("berth-{name}");
    assert_eq!(docker_inspect(&container, "{{index .Config.Labels \"vega.project\"}}").unwrap(), name);
    assert_eq!(docker_inspect(&container, "{{index .Config.Labels \"vega.managed-by\"}}").unwrap(), "berth");
    assert_eq!(docker_inspect(&container, "{{.HostConfig.NetworkMode}}").unwrap(), "vega-network");
    // berth-agent is PID 1: no Docker init, no shell keep-alive.
    assert_eq!(docker_inspect(&container, "{{.HostConfig.Init}}").unwrap(), "false");
    assert_eq!(docker_inspect(&container, "{{.Path}}").unwrap(), "/.berth/berth-agent");
    assert_eq!(docker_inspect(&container, "{{index .Config.Labels \"berth.agent\"}}").unwrap(), "1");
    assert_eq!(docker_inspect(&container, "{{.State.Running}}").unwrap(), "true");
    assert_eq!(
        docker_inspect(&container, "{{(index (index .HostConfig.PortBindings \"80/tcp\") 0).HostPort}}").unwrap(),
        "18931"
    );
    // The workspace, and berth's own mounts under /.berth/ (the agent read-only); nothing else.
    let mounts = docker_inspect(&container, "{{range .Mounts}}{{.Source}}->{{.Destination}} {{.RW}};{{end}}").unwrap();
    let mut mounts: Vec<&str> = mounts.split(';').filter(|m| !m.is_empty()).collect();
    mounts.sort();
    let agent_bin = std::fs::read_dir(d.state.join("agent")).unwrap().next().unwrap().unwrap().path();
    assert!(agent_bin.file_name().unwrap().to_str().unwrap().starts_with("berth-agent-"), "{}", agent_bin.display());
    let mut want = vec![
        format!("{}->/.berth/berth-agent false", agent_bin.display()),
        format!("{}->/.berth/run true", d.state.join("run").join(&name).display()),
        format!("{}->/workspace true", path.display()),
    ];
    want.sort();
    assert_eq!(mounts, want);
    let net_label = docker_inspect("vega-network", "{{index .Labels \"vega.managed-by\"}}").unwrap();
    assert_eq!(net_label, "berth");

    // ls and get.
    let ls = d.berth_ok(&["ls"]);
    let header = ls.lines().next().unwrap();
    for col in ["NAME", "STATUS", "IMAGE", "CREATED", "LAST-USED"] {
        assert!(header.contains(col), "{header}");
    }
    let row = ls.lines().find(|l| l.starts_with(&name)).expect("project in ls");
    assert!(row.contains("running") && row.contains(IMAGE), "{row}");
    let ls_json = json_of(&d.berth_ok(&["ls", "--json"]));
    assert_eq!(ls_json.as_array().unwrap().len(), 1);
    let got = json_of(&d.berth_ok(&["get", &name, "--json"]));
    assert_eq!(got["created"], p["created"]);

    // Live status agrees with the engine.
    let st = json_of(&d.berth_ok(&["status", &name, "--json"]));
    assert_eq!(st["running"], true);
    assert_eq!(st["container_id"], docker_inspect(&container, "{{.Id}}").unwrap().as_str());
    assert_eq!(st["image"], IMAGE);

    // path prints the bare path.
    assert_eq!(d.berth_ok(&["path", &name]), format!("{}\n", path.display()));

    // A second create of the name is refused, naming it.
    let again = d.berth(&["create", &name, "--image", IMAGE]);
    assert_eq!(again.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(msg.starts_with("berth: ") && msg.contains(&name) && msg.contains("already exists"), "{msg}");
}

fn exec_passes_exit_code_streams_env_workdir_and_mount(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("ex");
    d.berth_ok(&["create", &name, "--env", "A=project", "--env", "B=project"]);

    let o = d.berth(&[
        "exec",
        "--env",
        "B=exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; echo A=$A B=$B; pwd; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "exit code passes through");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\nA=project B=exec\n/workspace\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");

    let o = d.berth(&["exec", "--workdir", "/tmp", &name, "--", "pwd"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/tmp\n");
    assert_eq!(o.status.code(), Some(0));

    // A file written in the container appears in the host workspace.
    d.berth_ok(&["exec", &name, "--", "sh", "-c", "echo from-container > made.txt"]);
    let host = d.state.join("projects").join(&name).join("made.txt");
    assert_eq!(std::fs::read_to_string(host).unwrap(), "from-container\n");

    // --json prints the ExecResult as the one document on stdout, output inside it.
    let o = d.berth(&["exec", "--json", &name, "--", "sh", "-c", "echo hi; echo ho >&2; exit 5"]);
    assert_eq!(o.status.code(), Some(5));
    let r = json_of(&String::from_utf8_lossy(&o.stdout));
    assert_eq!((r["stdout"].as_str(), r["stderr"].as_str()), (Some("hi\n"), Some("ho\n")));
    assert!(o.stderr.is_empty());
    let r = json_of(&d.berth_ok(&["exec", "--json", &name, "--", "true"]));
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["runtime"], "docker");
    assert_eq!(r["timed_out"], false);

    // A missing program: non-zero, and berth says so through the command's stderr/exit.
    let o = d.berth(&["exec", &name, "--", "/no/such/program"]);
    assert_ne!(o.status.code(), Some(0));
}

fn exec_timeout_exits_124_and_kills_the_tree(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("to");
    d.berth_ok(&["create", &name]);
    let o = d.berth(&[
        "exec",
        "--timeout",
        "1s",
        &name,
        "--",
        "sh",
        "-c",
        "echo started; sleep 300 & sleep 301; echo never",
    ]);
    assert_eq!(o.status.code(), Some(124));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "started\n", "output so far is kept, nothing after the kill");
    let ps = d.berth_ok(&["exec", &name, "--", "ps"]);
    assert!(!ps.contains("sleep 30"), "the command's processes are gone:\n{ps}");
}

#[test]
fn stop_start_and_exec_restarts_or_recreates_with_the_project_image() {
    if !docker_available() {
        return;
    }
    // The default image is deliberately one that does not exist: re-creation must use the
    // project's own image, never the default.
    let d = Daemon::start("[docker]\ndefault_image = \"berth-test/does-not-exist:1\"\n");
    let name = d.name("re");
    let container = format!("berth-{name}");
    d.berth_ok(&["create", &name, "--image", IMAGE]);

    d.berth_ok(&["stop", &name]);
    assert_eq!(docker_inspect(&container, "{{.State.Running}}").unwrap(), "false");
    assert_eq!(json_of(&d.berth_ok(&["get", &name, "--json"]))["status"], "stopped");
    d.berth_ok(&["start", &name]);
    assert_eq!(docker_inspect(&container, "{{.State.Running}}").unwrap(), "true");

    // Stopped through berth: exec starts it first.
    d.berth_ok(&["stop", &name]);
    assert_eq!(d.berth_ok(&["exec", &name, "--", "echo", "hi"]), "hi\n");
    assert_eq!(docker_inspect(&container, "{{.State.Running}}").unwrap(), "true");

    // Stopped behind berth's back: exec still works.
    docker(&["stop", "-t", "1", &container]);
    assert_eq!(d.berth_ok(&["exec", &name, "--", "echo", "again"]), "again\n");

    // Removed behind berth's back: exec re-creates it with the project's image.
    let old_id = docker_inspect(&container, "{{.Id}}").unwrap();
    docker(&["rm", "-f", &container]);
    assert_eq!(d.berth_ok(&["exec", &name, "--", "echo", "back"]), "back\n");
    assert_ne!(docker_inspect(&container, "{{.Id}}").unwrap(), old_id);
    assert_eq!(docker_inspect(&container, "{{.Config.Image}}").unwrap(), IMAGE);
}

#[test]
fn exec_auto_creates_unknown_projects_with_the_default_image() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("auto");
    assert_eq!(d.berth_ok(&["exec", &name, "--", "echo", "made"]), "made\n");
    let p = json_of(&d.berth_ok(&["get", &name, "--json"]));
    assert_eq!(p["image"], IMAGE, "auto-create uses the configured default image");
    assert_eq!(p["status"], "running");
    assert_eq!(docker_inspect(&format!("berth-{name}"), "{{.Config.Image}}").unwrap(), IMAGE);
}

#[test]
fn exec_without_auto_create_is_not_found() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[exec]\nauto_create = false\n");
    let name = d.name("none");
    let o = d.berth(&["exec", &name, "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains(&name) && msg.contains("not found"), "{msg}");
    assert!(docker_inspect(&format!("berth-{name}"), "{{.Id}}").is_none(), "nothing created");
}

#[test]
fn rm_archives_the_workspace_and_purge_deletes_it() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let keep = d.name("keep");
    let gone = d.name("gone");
    for n in [&keep, &gone] {
        d.berth_ok(&["create", n]);
        d.berth_ok(&["exec", n, "--", "sh", "-c", "echo data > file"]);
    }
    d.berth_ok(&["rm", &keep]);
    assert!(docker_inspect(&format!("berth-{keep}"), "{{.Id}}").is_none(), "container removed");
    assert!(!d.state.join("projects").join(&keep).exists());
    let archived: Vec<_> = std::fs::read_dir(d.state.join("archive"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{keep}-")))
        .collect();
    assert_eq!(archived.len(), 1, "one archive for {keep}");
    assert_eq!(std::fs::read_to_string(archived[0].join("file")).unwrap(), "data\n");
    let o = d.berth(&["get", &keep]);
    assert_eq!(o.status.code(), Some(1), "row removed");

    d.berth_ok(&["rm", "--purge", &gone]);
    assert!(docker_inspect(&format!("berth-{gone}"), "{{.Id}}").is_none());
    assert!(!d.state.join("projects").join(&gone).exists());
    let any = std::fs::read_dir(d.state.join("archive"))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(&gone));
    assert!(!any, "purge archives nothing");
    assert_eq!(d.berth_ok(&["ls", "--json"]).trim(), "[]");
}

#[test]
fn logs_show_the_container_log() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("logs");
    d.berth_ok(&["create", &name]);
    // PID 1's stdout is the container log.
    d.berth_ok(&["exec", &name, "--", "sh", "-c", "echo line-one > /proc/1/fd/1; echo line-two > /proc/1/fd/1"]);
    let all = d.berth_ok(&["logs", &name]);
    assert!(all.contains("line-one") && all.contains("line-two"), "{all}");
    let tail = d.berth_ok(&["logs", &name, "--tail", "1"]);
    let mut lines = tail.lines();
    assert_eq!(lines.next(), Some("line-two"), "{tail}");
    assert_eq!(lines.next(), Some("recent activity:"), "{tail}");
    assert!(lines.next().is_some_and(|l| l.contains("exit=0") && l.contains("echo line-one")), "{tail}");
    assert_eq!(lines.next(), None, "--tail 1 keeps one line of each: {tail}");
}

#[test]
fn sigterm_exits_zero_removes_the_socket_and_leaves_containers_running() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("");
    let name = d.name("survive");
    d.berth_ok(&["create", &name]);
    assert_eq!(d.terminate(), 0, "clean exit on SIGTERM; log:\n{}", d.log_text());
    assert!(!d.socket.exists(), "socket file removed");
    // A clean shutdown is not a failure: nothing is restarted, nothing logged as an error.
    let log = d.log_text();
    assert!(!log.contains("restarting it") && !log.contains("ERROR"), "log:\n{log}");
    assert_eq!(docker_inspect(&format!("berth-{name}"), "{{.State.Running}}").unwrap(), "true");
    // A new daemon finds the project as it was.
    d.spawn();
    let p = json_of(&d.berth_ok(&["get", &name, "--json"]));
    assert_eq!(p["status"], "running");
    assert_eq!(d.berth_ok(&["exec", &name, "--", "echo", "still"]), "still\n");
}

#[test]
fn usage_errors_exit_2_whoever_finds_them_and_daemon_errors_exit_1() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let x = d.name("x");
    // Found by clap or the client.
    assert_eq!(d.berth(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(d.berth(&["exec", &x]).status.code(), Some(2), "exec without a command");
    let o = d.berth(&["create", &x, "--env", "NOEQUALS"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"NOEQUALS\""));
    // Found by the daemon (invalid_name, invalid_params): still usage errors, still named.
    for (args, bad) in [
        (vec!["get", "../etc"], "\"../etc\""),
        (vec!["create", &x, "--memory", "lots"], "\"lots\""),
        (vec!["exec", "--timeout", "soon", &x, "--", "true"], "\"soon\""),
    ] {
        let o = d.berth(&args);
        let msg = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {msg}");
        assert!(msg.starts_with("berth: ") && msg.contains(bad), "{args:?}: {msg}");
    }
    assert!(docker_inspect(&format!("berth-{x}"), "{{.Id}}").is_none(), "nothing was created");
    // Anything else the daemon refuses exits 1.
    let missing = d.name("missing");
    let o = d.berth(&["get", &missing]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&missing));
    let info = json_of(&d.berth_ok(&["info", "--json"]));
    assert_eq!(info["runtime"], "docker");
    assert_eq!(info["docker"]["available"], true);
    assert!(info["docker"]["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(info["projects"], 0);
}

/// `YYYY-MM-DDTHH:MM:SSZ`, nothing more.
fn is_whole_second_utc(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn human_output_aligns_ls_shows_limits_and_whole_second_times() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let short = d.name("a");
    let long = d.name("a-rather-long-project-name-for-ls");
    d.berth_ok(&["create", &short, "--memory", "1GiB", "--pids-limit", "256", "--network", "none"]);
    d.berth_ok(&["create", &long]);

    let get = d.berth_ok(&["get", &short]);
    let limits = get.lines().find(|l| l.starts_with("limits ")).unwrap_or_else(|| panic!("no limits line:\n{get}"));
    for part in ["network=none", "memory=1GiB", "pids=256"] {
        assert!(limits.split_whitespace().any(|w| w == part), "{part} in {limits}");
    }
    for key in ["created", "last_used"] {
        let line = get.lines().find(|l| l.starts_with(key)).unwrap();
        let t = line.split_whitespace().nth(1).unwrap();
        assert!(is_whole_second_utc(t), "{key} {t:?}");
    }

    let ls = d.berth_ok(&["ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    for col in ["STATUS", "IMAGE", "CREATED", "LAST-USED"] {
        let at = lines[0].find(col).unwrap();
        for row in &lines[1..] {
            assert!(row[..at].ends_with("  ") && !row[at..].starts_with(' '), "{col} lines up:\n{ls}");
        }
    }
    for row in &lines[1..] {
        let times: Vec<&str> = row.split_whitespace().skip(3).collect();
        assert!(times.len() == 2 && times.iter().all(|t| is_whole_second_utc(t)), "{row}");
    }

    assert_eq!(d.berth_ok(&["reconcile"]), "nothing changed\n");
    let stale = d.berth_ok(&["archive-stale"]);
    assert!(stale.starts_with("nothing to archive"), "{stale}");
}

#[test]
fn get_shows_the_effective_limits() {
    // needs daemon: effective limits (Project.limits filled with the daemon's values)
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("eff");
    let created = d.berth_ok(&["create", &name]);
    assert!(
        created.contains("limits       profile=default network=default memory=4GiB pids=1024 cpus=none\n"),
        "{created}"
    );
    let get = d.berth_ok(&["get", &name]);
    assert!(get.contains("memory=4GiB pids=1024"), "{get}");
}

#[test]
fn rm_says_where_the_workspace_went() {
    // needs daemon: project.delete result {"archived": path} / {"purged": true}
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let keep = d.name("kept");
    let gone = d.name("purged");
    d.berth_ok(&["create", &keep]);
    d.berth_ok(&["create", &gone]);
    let out = d.berth_ok(&["rm", &keep]);
    let prefix = format!("removed {keep}; workspace archived to ");
    let path = out.trim_end().strip_prefix(&prefix).unwrap_or_else(|| panic!("{out}"));
    assert!(PathBuf::from(path).is_dir() && path.starts_with(d.state.join("archive").to_str().unwrap()), "{out}");
    assert_eq!(d.berth_ok(&["rm", "--purge", &gone]), format!("removed {gone}; workspace deleted\n"));
}

#[test]
fn exec_says_when_it_created_the_project() {
    // needs daemon: ExecResult.auto_created
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("made");
    let o = d.berth(&["exec", &name, "--", "echo", "hi"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), format!("berth: created project {name} (image {IMAGE})\n"));
    // The second exec finds it: nothing to say.
    let o = d.berth(&["exec", &name, "--", "true"]);
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn exec_of_a_command_that_cannot_start_says_why() {
    // needs daemon: ExecResult.exec_error (127 missing, 126 not executable)
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("cant");
    d.berth_ok(&["create", &name]);
    let o = d.berth(&["exec", &name, "--", "/no/such/program"]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(127), "{msg}");
    assert!(msg.starts_with("berth: ") && msg.contains("/no/such/program"), "{msg}");

    std::fs::write(d.state.join("projects").join(&name).join("script"), "#!/bin/sh\necho never\n").unwrap();
    let o = d.berth(&["exec", &name, "--", "/workspace/script"]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(126), "{msg}");
    assert!(msg.starts_with("berth: ") && msg.contains("/workspace/script"), "{msg}");
    assert!(o.stdout.is_empty());
}

#[test]
fn exec_says_when_output_was_truncated() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[exec]\nmax_output = \"1KiB\"\n");
    let name = d.name("trunc");
    d.berth_ok(&["create", &name]);
    let cmd = ["exec", &name, "--", "sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a"];
    let o = d.berth(&cmd);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout.len(), 1024, "the daemon keeps max_output per stream");
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.starts_with("berth: output truncated") && msg.lines().count() == 1, "{msg}");
    // Machine output carries it in the document instead.
    let o = d.berth(&[&["--json"][..], &cmd[..]].concat());
    assert!(o.stderr.is_empty());
    assert_eq!(json_of(&String::from_utf8_lossy(&o.stdout))["truncated"], true);
}

#[test]
fn logs_show_recent_activity() {
    // needs daemon: project.logs result "activity"
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("act");
    d.berth_ok(&["create", &name]);
    d.berth_ok(&["exec", &name, "--", "echo", "two words"]);
    let logs = d.berth_ok(&["logs", &name]);
    let (_, activity) = logs.split_once("recent activity:\n").unwrap_or_else(|| panic!("{logs}"));
    let line = activity.lines().last().unwrap();
    assert!(is_whole_second_utc(line.split_whitespace().next().unwrap()), "{line}");
    assert!(line.contains(" exit=0 ") && line.ends_with("docker  echo 'two words'"), "{line}");
    let j = json_of(&d.berth_ok(&["logs", &name, "--json"]));
    assert!(j["activity"].as_array().is_some_and(|a| !a.is_empty()), "{j}");
}

#[test]
fn completions_for_each_shell_need_no_daemon() {
    for shell in ["bash", "zsh", "fish"] {
        let o = std::process::Command::new(berth_bin())
            .args(["--socket", "/nonexistent/berth.sock", "completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}: {}", String::from_utf8_lossy(&o.stderr));
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(script.contains("berth") && script.contains("exec") && script.contains("archive-stale"), "{shell}");
    }
    let o = std::process::Command::new(berth_bin()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// Runs `berthd` with `config` (text, or a path that does not exist when `None`) and
/// returns its exit code and stderr; for start-up failures only.
fn berthd_failing(config: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    if let Some(text) = config {
        std::fs::write(&path, text).unwrap();
    }
    let o = std::process::Command::new(berthd_bin())
        .arg("--config")
        .arg(&path)
        .arg("--socket")
        .arg(dir.path().join("run/berth.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).replace(&path.display().to_string(), "CONFIG");
    (o.status.code(), err)
}

#[test]
fn berthd_says_a_missing_config_once() {
    let (code, err) = berthd_failing(None);
    assert_ne!(code, Some(0));
    assert_eq!(err.matches("CONFIG").count(), 1, "said once:\n{err}");
    assert!(err.starts_with("berthd: cannot read config CONFIG"), "{err}");
}

#[test]
fn berthd_names_the_key_of_a_bad_value() {
    for (text, want) in [
        (
            "[exec]\ndefault_timeout = \"soon\"\n",
            "exec.default_timeout: invalid duration \"soon\" (expected e.g. \"30s\"",
        ),
        ("[container]\nmemory = \"4 gigs\"\n", "container.memory: invalid size \"4 gigs\""),
    ] {
        let (code, err) = berthd_failing(Some(text));
        assert_ne!(code, Some(0));
        assert!(err.starts_with(&format!("berthd: invalid config CONFIG: {want}")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

on_both_paths!(exec_passes_exit_code_streams_env_workdir_and_mount, exec_timeout_exits_124_and_kills_the_tree,);
