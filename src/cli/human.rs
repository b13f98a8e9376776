//! Human output: each function turns one method's result (JSON, as the protocol returns
//! it) into the text `berth` prints. Pure functions from `Value` to `String`, so every
//! format is unit-tested without a daemon. Fields a result lacks are skipped, never
//! guessed, so an older daemon's answers still print.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Size;

/// A scalar as text; `-` for null or missing.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time at one precision, `YYYY-MM-DDTHH:MM:SSZ` in UTC; anything else as
/// it came.
pub fn time(v: &Value) -> String {
    let Some(text) = v.as_str() else { return s(v) };
    let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) else { return text.to_string() };
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Bytes in binary units (`4GiB`); 0 is `none`, as in the config.
fn bytes(v: &Value) -> String {
    match v.as_u64() {
        Some(0) => "none".into(),
        Some(n) => Size(n).to_string(),
        None => s(v),
    }
}

/// A size for people: `512B`, `20.0MiB`, `1.3GiB`.
fn approx_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let (mut v, mut unit) = (n as f64 / 1024.0, UNITS[0]);
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1}{unit}")
}

/// A limit where 0 means none.
fn zero_none(v: &Value) -> String {
    match v.as_f64() {
        Some(0.0) => "none".into(),
        _ => s(v),
    }
}

/// One argument as a shell would need it: bare when safe, else single-quoted.
fn shell_word(a: &str) -> String {
    let safe = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn command_line(v: &Value) -> String {
    match v.as_array() {
        Some(args) => args.iter().map(|a| shell_word(&s(a))).collect::<Vec<_>>().join(" "),
        None => s(v),
    }
}

/// A duration in milliseconds: `12ms`, `1.5s`, `2m05s`.
fn millis(v: &Value) -> String {
    let Some(ms) = v.as_u64() else { return s(v) };
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
    }
}

/// Rows as columns, each as wide as its widest cell; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|x| x.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

pub fn info(r: &Value) -> String {
    let d = &r["docker"];
    let docker = if d["available"].as_bool() == Some(true) {
        let engine = d["engine"].as_str().map(|e| format!("{e} ")).unwrap_or_default();
        format!("available ({engine}{})", s(&d["version"]))
    } else {
        "unavailable".into()
    };
    format!(
        "version   {}\nruntime   {}\ndocker    {docker}\nprojects  {}\n",
        s(&r["version"]),
        s(&r["runtime"]),
        s(&r["projects"])
    )
}

/// The `limits` line's value: what the project carries, e.g.
/// `profile=default network=default memory=4GiB pids=1024 cpus=none`.
fn limits(l: &Value) -> Option<String> {
    let l = l.as_object()?;
    let mut parts = Vec::new();
    if let Some(p) = l.get("profile") {
        parts.push(format!("profile={}", s(p)));
    }
    if let Some(o) = l.get("offline") {
        parts.push(format!("network={}", if o.as_bool() == Some(true) { "none" } else { "default" }));
    }
    if let Some(m) = l.get("memory") {
        parts.push(format!("memory={}", bytes(m)));
    }
    if let Some(p) = l.get("pids_limit") {
        parts.push(format!("pids={}", zero_none(p)));
    }
    if let Some(c) = l.get("cpus") {
        parts.push(format!("cpus={}", zero_none(c)));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

pub fn project(p: &Value) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{}\n", format!("{key:<12} {value}").trim_end()));
    for key in ["name", "description", "image", "status"] {
        line(key, s(&p[key]));
    }
    line("created", time(&p["created"]));
    line("last_used", time(&p["last_used"]));
    line("path", s(&p["path"]));
    for key in ["env", "ports"] {
        if let Some(m) = p[key].as_object().filter(|m| !m.is_empty()) {
            line(key, m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(" "));
        }
    }
    if let Some(l) = limits(&p["limits"]) {
        line("limits", l);
    }
    out
}

pub fn list(r: &Value) -> String {
    let mut rows = vec![["NAME", "STATUS", "IMAGE", "CREATED", "LAST-USED"].map(String::from).to_vec()];
    for p in r.as_array().into_iter().flatten() {
        rows.push(vec![s(&p["name"]), s(&p["status"]), s(&p["image"]), time(&p["created"]), time(&p["last_used"])]);
    }
    table(&rows)
}

pub fn status(r: &Value) -> String {
    let mut out = String::new();
    for key in ["container_id", "running", "image", "created", "agent"] {
        if key == "agent" && r.get(key).is_none() {
            continue;
        }
        let value = if key == "created" { time(&r[key]) } else { s(&r[key]) };
        out.push_str(&format!("{key:<13} {value}\n"));
    }
    out
}

/// `rm`: where the workspace went.
pub fn removed(name: &str, r: &Value) -> String {
    if let Some(path) = r["archived"].as_str() {
        format!("removed {name}; workspace archived to {path}\n")
    } else if r["purged"].as_bool() == Some(true) {
        format!("removed {name}; workspace deleted\n")
    } else {
        format!("removed {name}\n")
    }
}

/// The container log, then the project's recent execs if the daemon sent any.
pub fn logs(r: &Value) -> String {
    let mut out = r["logs"].as_str().unwrap_or("").to_string();
    let activity = r["activity"].as_array().filter(|a| !a.is_empty());
    if let Some(entries) = activity {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("recent activity:\n");
        for e in entries {
            let exit = if e["timed_out"].as_bool() == Some(true) { "timeout".to_string() } else { s(&e["exit_code"]) };
            out.push_str(&format!(
                "{} uid={} exit={exit} {} {}  {}\n",
                time(&e["at"]),
                s(&e["uid"]),
                millis(&e["duration_ms"]),
                s(&e["runtime"]),
                command_line(&e["command"])
            ));
        }
    }
    out
}

pub fn reconcile(r: &Value) -> String {
    let changed = r["changed"].as_array().filter(|c| !c.is_empty());
    let Some(changed) = changed else { return "nothing changed\n".into() };
    changed
        .iter()
        .map(|c| format!("{}: {} -> {} ({})\n", s(&c["name"]), s(&c["from"]), s(&c["to"]), s(&c["reason"])))
        .collect()
}

pub fn archive_stale(r: &Value) -> String {
    match r["archived"].as_array().filter(|a| !a.is_empty()) {
        Some(names) => names.iter().map(|n| format!("{}\n", s(n))).collect(),
        None => match r["stale_after"].as_str() {
            Some(d) => format!("nothing to archive: no project idle longer than {d}\n"),
            None => "nothing to archive\n".into(),
        },
    }
}

/// What `berth exec` says on stderr after the command's output (never in `--json`
/// mode): the project it made, why the command could not start, that output was lost,
/// that it timed out. Each line without its `berth: ` prefix.
pub fn exec_notes(name: &str, r: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(made) = r.get("auto_created").filter(|v| v.is_object()) {
        notes.push(format!("created project {name} (image {})", s(&made["image"])));
    }
    if let Some(e) = r["exec_error"].as_str() {
        notes.push(e.to_string());
    }
    if r["truncated"].as_bool() == Some(true) {
        notes.push(match r["max_output"].as_u64() {
            Some(n) => format!("output truncated: output past {} per stream was dropped", Size(n)),
            None => "output truncated: output past the daemon's exec.max_output per stream was dropped".into(),
        });
    }
    if r["timed_out"].as_bool() == Some(true) {
        notes.push("command timed out and was killed".into());
    }
    notes
}

/// A background process's STATUS: `running`, `exited`, or `killed(SIG)`.
fn process_status(p: &Value) -> String {
    if p["running"].as_bool() == Some(true) {
        "running".into()
    } else if let Some(sig) = p["signal"].as_str() {
        format!("killed({sig})")
    } else {
        "exited".into()
    }
}

fn process_row(p: &Value) -> Vec<String> {
    vec![s(&p["id"]), process_status(p), s(&p["exit_code"]), time(&p["started"]), command_line(&p["command"])]
}

/// `ps`: ID STATUS EXIT STARTED COMMAND.
pub fn processes(r: &Value) -> String {
    let mut rows = vec![["ID", "STATUS", "EXIT", "STARTED", "COMMAND"].map(String::from).to_vec()];
    rows.extend(r.as_array().into_iter().flatten().map(process_row));
    table(&rows)
}

/// `snapshot ls`: ID PROJECT LABEL CREATED SIZE (the workspace copy's).
pub fn snapshots(r: &Value) -> String {
    let mut rows = vec![["ID", "PROJECT", "LABEL", "CREATED", "SIZE"].map(String::from).to_vec()];
    for x in r.as_array().into_iter().flatten() {
        let label = x["label"].as_str().filter(|l| !l.is_empty()).unwrap_or("-").to_string();
        let size = x["workspace_bytes"].as_u64().map(approx_bytes).unwrap_or_else(|| s(&x["workspace_bytes"]));
        rows.push(vec![s(&x["id"]), s(&x["project"]), label, time(&x["created"]), size]);
    }
    table(&rows)
}

/// `kill`: the process's line, as `ps` shows it, without the header.
pub fn process_line(p: &Value) -> String {
    table(&[process_row(p)])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn project_json() -> Value {
        json!({
            "name": "web", "description": "", "image": "node:20-slim", "status": "running",
            "created": "2026-11-27T18:29:07.123456789Z", "last_used": "2026-11-27T19:00:00Z",
            "env": {}, "ports": {"80/tcp": "8080"}, "path": "/var/lib/berth/projects/web",
            "limits": {"profile": "default", "offline": false, "memory": 4_294_967_296u64, "pids_limit": 1024, "cpus": 0.0}
        })
    }

    #[test]
    fn times_have_one_precision() {
        for (given, shown) in [
            ("2026-11-27T18:29:07.123456789Z", "2026-11-27T18:29:07Z"),
            ("2026-11-27T18:29:07Z", "2026-11-27T18:29:07Z"),
            ("2026-11-27T19:29:07.5+01:00", "2026-11-27T18:29:07Z"),
            ("not a time", "not a time"),
        ] {
            assert_eq!(time(&json!(given)), shown);
        }
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn a_project_shows_its_limits_and_whole_second_times() {
        let out = project(&project_json());
        assert!(
            out.contains("limits       profile=default network=default memory=4GiB pids=1024 cpus=none\n"),
            "{out}"
        );
        assert!(out.contains("created      2026-11-27T18:29:07Z\n"), "{out}");
        assert!(out.contains("ports        80/tcp=8080\n"), "{out}");
        assert!(!out.contains("env "), "empty env is not shown:\n{out}");
        assert!(out.contains("\ndescription\n"), "empty description, no trailing blank:\n{out}");
    }

    #[test]
    fn limits_show_what_is_present() {
        let table = [
            (json!({"memory": 536_870_912u64}), Some("memory=512MiB")),
            (json!({"offline": true, "cpus": 1.5}), Some("network=none cpus=1.5")),
            (json!({"memory": 0, "pids_limit": 0}), Some("memory=none pids=none")),
            (json!({"profile": "strict"}), Some("profile=strict")),
            (json!({}), None),
            (Value::Null, None),
        ];
        for (l, want) in table {
            assert_eq!(limits(&l).as_deref(), want, "{l}");
        }
    }

    #[test]
    fn ls_columns_line_up_whatever_the_widths() {
        let mut long = project_json();
        long["name"] = json!("a-much-longer-project-name-than-24-chars");
        long["image"] = json!("registry.example.com/team/image:1.2.3");
        let out = list(&json!([project_json(), long]));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        for col in ["STATUS", "IMAGE", "CREATED", "LAST-USED"] {
            let at = lines[0].find(col).unwrap();
            for row in &lines[1..] {
                assert_eq!(&row[at - 2..at], "  ", "{col} lines up in:\n{out}");
                assert_ne!(row.as_bytes()[at], b' ', "{col} lines up in:\n{out}");
            }
        }
        assert!(lines[1].contains("  2026-11-27T18:29:07Z  2026-11-27T19:00:00Z"), "{out}");
        assert!(!out.lines().any(|l| l.ends_with(' ')), "no trailing blanks:\n{out}");
    }

    #[test]
    fn ls_of_nothing_is_the_header() {
        assert_eq!(list(&json!([])), "NAME  STATUS  IMAGE  CREATED  LAST-USED\n");
    }

    #[test]
    fn rm_says_where_the_workspace_went() {
        let table = [
            (
                json!({"archived": "/var/lib/berth/archive/web-20261127T182907Z"}),
                "removed web; workspace archived to /var/lib/berth/archive/web-20261127T182907Z\n",
            ),
            (json!({"purged": true}), "removed web; workspace deleted\n"),
            (json!({}), "removed web\n"),
        ];
        for (r, want) in table {
            assert_eq!(removed("web", &r), want);
        }
    }

    #[test]
    fn archive_stale_says_when_nothing_was_archived() {
        assert_eq!(archive_stale(&json!({"archived": ["a", "b"], "stale_after": "30days"})), "a\nb\n");
        assert_eq!(
            archive_stale(&json!({"archived": [], "stale_after": "30days"})),
            "nothing to archive: no project idle longer than 30days\n"
        );
        assert_eq!(archive_stale(&json!({"archived": []})), "nothing to archive\n");
    }

    #[test]
    fn reconcile_prints_changes_or_nothing_changed() {
        assert_eq!(reconcile(&json!({"changed": []})), "nothing changed\n");
        let r = json!({"changed": [{"name": "web", "from": "running", "to": "stopped", "reason": "container exited"},
                                   {"name": "new", "from": null, "to": "running", "reason": "adopted"}]});
        assert_eq!(reconcile(&r), "web: running -> stopped (container exited)\nnew: - -> running (adopted)\n");
    }

    #[test]
    fn logs_print_the_log_then_recent_activity() {
        let r = json!({"logs": "booted", "activity": [
            {"at": "2026-11-27T18:29:07.5Z", "command": ["echo", "hi"], "exit_code": 0, "duration_ms": 12,
             "uid": 0, "runtime": "docker", "timed_out": false},
            {"at": "2026-11-27T18:30:00Z", "command": ["sh", "-c", "echo it's here"], "exit_code": null,
             "duration_ms": 1500, "uid": 1000, "runtime": "local", "timed_out": false},
            {"at": "2026-11-27T18:31:00Z", "command": ["sleep", "99"], "exit_code": 124, "duration_ms": 125_000,
             "uid": 0, "runtime": "docker", "timed_out": true}
        ]});
        assert_eq!(
            logs(&r),
            "booted\nrecent activity:\n\
             2026-11-27T18:29:07Z uid=0 exit=0 12ms docker  echo hi\n\
             2026-11-27T18:30:00Z uid=1000 exit=- 1.5s local  sh -c 'echo it'\\''s here'\n\
             2026-11-27T18:31:00Z uid=0 exit=timeout 2m05s docker  sleep 99\n"
        );
        assert_eq!(logs(&json!({"logs": "a\n", "activity": []})), "a\n");
        assert_eq!(logs(&json!({"logs": "a\n"})), "a\n");
    }

    #[test]
    fn exec_notes_say_what_the_output_cannot() {
        assert!(exec_notes("web", &json!({"exit_code": 0, "truncated": false, "timed_out": false})).is_empty());
        let r = json!({"exit_code": 0, "truncated": true, "auto_created": {"image": "node:20-slim"}});
        assert_eq!(
            exec_notes("web", &r),
            [
                "created project web (image node:20-slim)",
                "output truncated: output past the daemon's exec.max_output per stream was dropped"
            ]
        );
        let r = json!({"exit_code": 0, "truncated": true, "max_output": 16_777_216});
        assert_eq!(exec_notes("web", &r), ["output truncated: output past 16MiB per stream was dropped"]);
        let r = json!({"exit_code": 127, "exec_error": "command not found: \"nosuch\""});
        assert_eq!(exec_notes("web", &r), ["command not found: \"nosuch\""]);
        let r = json!({"exit_code": 124, "timed_out": true});
        assert_eq!(exec_notes("web", &r), ["command timed out and was killed"]);
    }

    #[test]
    fn ps_shows_running_exited_and_killed_processes() {
        let r = json!([
            {"id": 1, "project": "web", "command": ["sh", "-c", "while :; do echo tick; sleep 0.2; done"],
             "running": true, "exit_code": null, "started": "2026-11-27T18:29:07.5Z", "ended": null, "pid": 12, "signal": null},
            {"id": 2, "project": "web", "command": ["true"], "running": false, "exit_code": 0,
             "started": "2026-11-27T18:30:00Z", "ended": "2026-11-27T18:30:00Z", "pid": 13, "signal": null},
            {"id": 10, "project": "web", "command": ["sleep", "99"], "running": false, "exit_code": 143,
             "started": "2026-11-27T18:31:00Z", "ended": "2026-11-27T18:32:00Z", "pid": 14, "signal": "TERM"}
        ]);
        assert_eq!(
            processes(&r),
            "ID  STATUS        EXIT  STARTED               COMMAND\n\
             1   running       -     2026-11-27T18:29:07Z  sh -c 'while :; do echo tick; sleep 0.2; done'\n\
             2   exited        0     2026-11-27T18:30:00Z  true\n\
             10  killed(TERM)  143   2026-11-27T18:31:00Z  sleep 99\n"
        );
        assert_eq!(processes(&json!([])), "ID  STATUS  EXIT  STARTED  COMMAND\n");
        assert_eq!(process_line(&r[2]), "10  killed(TERM)  143  2026-11-27T18:31:00Z  sleep 99\n");
    }

    #[test]
    fn info_names_the_engine_when_known() {
        let r = json!({"version": "0.1.0", "runtime": "docker",
                       "docker": {"available": true, "version": "20.10.24", "engine": "docker"}, "projects": 2});
        assert_eq!(info(&r), "version   0.1.0\nruntime   docker\ndocker    available (docker 20.10.24)\nprojects  2\n");
    }
}
