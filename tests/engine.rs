//! The engine berth drives, as a user sees it: `berth info` names it (and whether it is
//! rootless), and a file that root writes in a container belongs on the host to the user
//! berthd runs as. Run against Docker as root and against rootless Podman as a plain user
//! (CI sets `BERTH_TEST_ENGINE` and `BERTH_TEST_ROOTLESS` for each run).

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;
use serde_json::json;

#[test]
fn info_names_the_engine_and_whether_it_is_rootless() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let info = d.ok("daemon.info", json!({}));
    assert_eq!(info["docker"]["available"], true, "{info}");
    assert_eq!(info["docker"]["engine"], engine(), "{info}");
    let rootless = std::env::var("BERTH_TEST_ROOTLESS").as_deref() == Ok("1");
    assert_eq!(info["docker"]["rootless"], rootless, "{info}");
    let version = info["docker"]["version"].as_str().unwrap();
    let engine_says = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert_eq!(version, engine_says, "{info}");
    let shown = d.berth_ok(&["info"]);
    assert!(shown.contains(&format!("{} {version}", engine())), "{shown}");
    assert!(d.log_text().contains(&format!("engine={}", engine())), "the daemon logs the engine at start-up");
}

#[test]
fn a_file_root_writes_in_the_container_belongs_to_berthds_user_on_the_host() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("owner");
    d.ok("project.create", json!({"name": name}));
    let r = d.ok(
        "project.exec",
        json!({"name": name, "command": ["sh", "-c", "id -u; echo x > /workspace/by-root; mkdir /workspace/dir"]}),
    );
    assert_eq!(r["stdout"], "0\n", "the command ran as root in the container: {r}");
    let ws = std::path::PathBuf::from(d.ok("project.path", json!({"name": name}))["path"].as_str().unwrap());
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for f in ["by-root", "dir"] {
        let m = std::fs::metadata(ws.join(f)).unwrap();
        assert_eq!(m.uid(), me, "{f} is owned on the host by berthd's user ({me})");
    }
    // ...so that user can delete the whole workspace without root.
    d.ok("project.delete", json!({"name": name, "purge": true}));
    assert!(!ws.exists());
}
