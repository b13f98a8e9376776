//! What `berth cp SRC DST` means, without doing anything: which side is which, container
//! paths, and where the copy lands (the Docker CLI's `docker cp` rules). Pure, so every
//! case is unit-tested.

use std::path::PathBuf;

/// One side of a copy, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// `NAME:PATH`; `path` as written (may be relative, or empty).
    Container { name: String, path: String },
    /// A path on this machine.
    Host(PathBuf),
    /// `-`: a tar stream on stdin (as SRC) or stdout (as DST).
    Stdio,
}

/// Splits an argument the way `docker cp` does: an absolute path or one starting with
/// `.` is local; otherwise `NAME:PATH` when there is a colon; `-` is the tar stream.
pub fn parse_side(arg: &str) -> Side {
    if arg == "-" {
        return Side::Stdio;
    }
    if arg.starts_with('/') || arg.starts_with('.') {
        return Side::Host(PathBuf::from(arg));
    }
    match arg.split_once(':') {
        Some((name, path)) => Side::Container { name: name.to_string(), path: path.to_string() },
        None => Side::Host(PathBuf::from(arg)),
    }
}

/// Which way a copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Host path into the container.
    In { src: PathBuf, name: String, dst: String },
    /// A tar stream on stdin, extracted into a container directory.
    TarIn { name: String, dst: String },
    /// Container path to the host.
    Out { name: String, src: String, dst: PathBuf },
    /// Container path as a tar stream on stdout.
    TarOut { name: String, src: String },
}

/// The direction, or a usage error.
pub fn direction(src: &str, dst: &str) -> Result<Direction, String> {
    match (parse_side(src), parse_side(dst)) {
        (Side::Container { .. }, Side::Container { .. }) => {
            Err("copying between projects is not supported: one of SRC and DST must be a host path or -".into())
        }
        (Side::Host(src), Side::Container { name, path }) => Ok(Direction::In { src, name, dst: path }),
        (Side::Stdio, Side::Container { name, path }) => Ok(Direction::TarIn { name, dst: path }),
        (Side::Container { name, path }, Side::Host(dst)) => Ok(Direction::Out { name, src: path, dst }),
        (Side::Container { name, path }, Side::Stdio) => Ok(Direction::TarOut { name, src: path }),
        _ => Err(format!("one of SRC and DST must be NAME:PATH (a project's path), got {src:?} and {dst:?}")),
    }
}

/// Where relative container paths start.
pub const WORKSPACE: &str = "/workspace";

/// A container path as the daemon will take it: absolute (relative ones from
/// `/workspace`; empty is `/workspace`), `//` and `/./` collapsed. A trailing `/` or `/.`
/// is kept: it means something (see `trailing`).
pub fn container_abs(path: &str) -> String {
    let full = if path.is_empty() {
        WORKSPACE.to_string()
    } else if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{WORKSPACE}/{path}")
    };
    let ends_dot = full == "/." || full.ends_with("/.");
    let ends_slash = full.ends_with('/') && full != "/";
    let parts: Vec<&str> = full.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let mut out = format!("/{}", parts.join("/"));
    if ends_dot {
        out.push_str(if out == "/" { "." } else { "/." });
    } else if ends_slash && out != "/" {
        out.push('/');
    }
    out
}

/// How a path ends, which `docker cp` gives meaning to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailing {
    None,
    /// `dir/`: must be a directory.
    Slash,
    /// `dir/.`: a directory's contents rather than the directory.
    Dot,
}

pub fn trailing(path: &str) -> Trailing {
    if path == "." || path.ends_with("/.") {
        Trailing::Dot
    } else if path.ends_with('/') {
        Trailing::Slash
    } else {
        Trailing::None
    }
}

/// The path without its trailing `/` or `/.` (`/` stays `/`).
pub fn strip_trailing(path: &str) -> &str {
    let p = path.strip_suffix("/.").unwrap_or(path);
    let p = if p == "." { "" } else { p };
    let p = p.trim_end_matches('/');
    if p.is_empty() && path.starts_with('/') {
        "/"
    } else {
        p
    }
}

/// The last component of a container path (after `strip_trailing`); empty for `/`.
pub fn base_name(path: &str) -> &str {
    let p = strip_trailing(path);
    p.rsplit('/').next().unwrap_or("")
}

/// The directory holding a container path (`/` for a top-level one).
pub fn parent(path: &str) -> String {
    let p = strip_trailing(path);
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => p[..i].to_string(),
    }
}

/// `dir` + `/` + `name` for container paths.
pub fn join(dir: &str, name: &str) -> String {
    let dir = strip_trailing(dir);
    if name.is_empty() {
        dir.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// What a destination path is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DstState {
    Dir,
    /// A file, or anything else that is not a directory.
    File,
    /// Missing; `parent_dir` says whether its parent is an existing directory.
    Missing {
        parent_dir: bool,
    },
}

/// Where the copy lands, relative to DST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// At DST itself (created, overwritten, or — a directory onto a directory — merged).
    At,
    /// Inside the directory DST, as this name; what is there must be looked up
    /// (`check_inside`).
    Inside(String),
}

/// `docker cp`'s rules. `src_dir`: the source is a directory; `src_trailing`: how SRC
/// ended; `src_base`: its last component (empty for `/`); `dst`, as written, names the
/// destination in messages.
pub fn landing(
    src_dir: bool,
    src_trailing: Trailing,
    src_base: &str,
    dst: &str,
    dst_trailing: Trailing,
    state: DstState,
) -> Result<Landing, String> {
    if !src_dir && src_trailing != Trailing::None {
        // `file/` or `file/.`: the source was asserted to be a directory.
        return Err("not a directory".into());
    }
    match state {
        DstState::Dir => {
            if src_dir && (src_trailing == Trailing::Dot || src_base.is_empty()) {
                Ok(Landing::At)
            } else {
                Ok(Landing::Inside(src_base.to_string()))
            }
        }
        DstState::File if src_dir => Err(format!("cannot copy a directory to {dst}: it is a file")),
        DstState::File if dst_trailing != Trailing::None => Err(format!("{dst}: not a directory")),
        DstState::File => Ok(Landing::At),
        DstState::Missing { parent_dir: false } => {
            Err(format!("{dst}: no such directory (the destination's parent must exist)"))
        }
        DstState::Missing { .. } if !src_dir && dst_trailing != Trailing::None => {
            Err(format!("{dst}: no such directory (a destination ending in / must be an existing directory)"))
        }
        DstState::Missing { .. } => Ok(Landing::At),
    }
}

/// Whether `Landing::Inside`'s target (in `state`, `shown` in messages) can take the
/// source: a directory merges into a directory, a file replaces a file.
pub fn check_inside(src_dir: bool, shown: &str, state: DstState) -> Result<(), String> {
    match (src_dir, state) {
        (true, DstState::File) => Err(format!("cannot overwrite non-directory {shown} with a directory")),
        (false, DstState::Dir) => Err(format!("cannot overwrite directory {shown} with a non-directory")),
        _ => Ok(()),
    }
}

/// A tar entry's path made safe to extract below the destination: relative, without
/// `.` components, never `..`. `None` for a path that would leave the destination;
/// `Some("")` for the destination itself (`./`).
pub fn safe_rel(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// An octal mode as the protocol writes it (`"0755"`).
pub fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

pub fn format_mode(m: u32) -> String {
    format!("{:04o}", m & 0o7777)
}

/// The largest raw chunk whose base64 fits in a request line of `max_line` bytes when
/// the rest of the line takes `overhead` bytes; `None` when nothing fits.
pub fn write_chunk(max_line: usize, overhead: usize) -> Option<usize> {
    let room = max_line.checked_sub(overhead)?;
    let raw = room / 4 * 3;
    (raw > 0).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_split_like_docker_cp() {
        let c = |n: &str, p: &str| Side::Container { name: n.into(), path: p.into() };
        assert_eq!(parse_side("web:/etc/hosts"), c("web", "/etc/hosts"));
        assert_eq!(parse_side("web:src"), c("web", "src"));
        assert_eq!(parse_side("web:"), c("web", ""));
        assert_eq!(parse_side("web:a:b"), c("web", "a:b"));
        assert_eq!(parse_side("-"), Side::Stdio);
        for local in ["/tmp/a:b", "./web:x", "../web:x", "plain", "dir/file"] {
            assert_eq!(parse_side(local), Side::Host(local.into()), "{local}");
        }
    }

    #[test]
    fn exactly_one_side_is_a_project() {
        assert_eq!(
            direction("a.txt", "web:/tmp").unwrap(),
            Direction::In { src: "a.txt".into(), name: "web".into(), dst: "/tmp".into() }
        );
        assert_eq!(direction("-", "web:d").unwrap(), Direction::TarIn { name: "web".into(), dst: "d".into() });
        assert_eq!(
            direction("web:d", "out").unwrap(),
            Direction::Out { name: "web".into(), src: "d".into(), dst: "out".into() }
        );
        assert_eq!(direction("web:d", "-").unwrap(), Direction::TarOut { name: "web".into(), src: "d".into() });
        for (s, d) in [("a", "b"), ("-", "-"), ("-", "b"), ("a", "-"), ("x:a", "y:b")] {
            assert!(direction(s, d).is_err(), "{s} {d}");
        }
    }

    #[test]
    fn container_paths_are_absolute_and_keep_their_trailing_meaning() {
        for (given, want) in [
            ("", "/workspace"),
            (".", "/workspace/."),
            ("src", "/workspace/src"),
            ("src/", "/workspace/src/"),
            ("src/.", "/workspace/src/."),
            ("./src//a/./b", "/workspace/src/a/b"),
            ("/", "/"),
            ("/.", "/."),
            ("//etc//", "/etc/"),
            ("/a/../b", "/a/../b"),
        ] {
            assert_eq!(container_abs(given), want, "{given:?}");
        }
        assert_eq!(trailing("/a/."), Trailing::Dot);
        assert_eq!(trailing("."), Trailing::Dot);
        assert_eq!(trailing("/a/"), Trailing::Slash);
        assert_eq!(trailing("/a"), Trailing::None);
        assert_eq!(trailing("/a/.."), Trailing::None);
        for (p, stripped, base, par) in [
            ("/workspace/src/.", "/workspace/src", "src", "/workspace"),
            ("/workspace/src/", "/workspace/src", "src", "/workspace"),
            ("/etc", "/etc", "etc", "/"),
            ("/", "/", "", "/"),
            ("/.", "/", "", "/"),
        ] {
            assert_eq!((strip_trailing(p), base_name(p), parent(p).as_str()), (stripped, base, par), "{p}");
        }
        assert_eq!(join("/workspace/d/", "x"), "/workspace/d/x");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a/.", "x"), "/a/x");
        assert_eq!(join("/a", ""), "/a");
    }

    #[test]
    fn landings_follow_docker_cp() {
        use DstState::*;
        use Trailing as T;
        let missing = Missing { parent_dir: true };
        // A file.
        assert_eq!(landing(false, T::None, "f", "d", T::None, Dir), Ok(Landing::Inside("f".into())));
        assert_eq!(landing(false, T::None, "f", "d/", T::Slash, Dir), Ok(Landing::Inside("f".into())));
        assert_eq!(landing(false, T::None, "f", "g", T::None, File), Ok(Landing::At));
        assert_eq!(landing(false, T::None, "f", "g", T::None, missing), Ok(Landing::At));
        let e = landing(false, T::None, "f", "x/", T::Slash, missing).unwrap_err();
        assert!(e.contains("x/") && e.contains("no such directory"), "{e}");
        let e = landing(false, T::None, "f", "g/", T::Slash, File).unwrap_err();
        assert!(e.contains("g/") && e.contains("not a directory"), "{e}");
        let e = landing(false, T::None, "f", "a/b", T::None, Missing { parent_dir: false }).unwrap_err();
        assert!(e.contains("a/b"), "{e}");
        assert!(landing(false, T::Slash, "f", "d", T::None, Dir).is_err(), "f/ asserts a directory");
        assert!(landing(false, T::Dot, "f", "d", T::None, Dir).is_err(), "f/. too");
        // A directory.
        assert_eq!(landing(true, T::None, "s", "d", T::None, Dir), Ok(Landing::Inside("s".into())));
        assert_eq!(landing(true, T::Slash, "s", "d", T::None, Dir), Ok(Landing::Inside("s".into())));
        assert_eq!(landing(true, T::Dot, "s", "d", T::None, Dir), Ok(Landing::At), "s/. copies the contents");
        assert_eq!(landing(true, T::None, "", "d", T::None, Dir), Ok(Landing::At), "/ copies the contents");
        assert_eq!(landing(true, T::None, "s", "n", T::None, missing), Ok(Landing::At), "onto a missing path");
        assert_eq!(landing(true, T::None, "s", "n/", T::Slash, missing), Ok(Landing::At), "docker makes n/ too");
        assert_eq!(landing(true, T::Dot, "s", "n", T::None, missing), Ok(Landing::At));
        let e = landing(true, T::None, "s", "f", T::None, File).unwrap_err();
        assert!(e.contains("cannot copy a directory") && e.contains('f'), "{e}");
        // What is already inside.
        assert!(check_inside(true, "d/s", Dir).is_ok());
        assert!(check_inside(false, "d/f", File).is_ok());
        assert!(check_inside(false, "d/f", missing).is_ok());
        assert!(check_inside(true, "d/s", File).unwrap_err().contains("d/s"));
        assert!(check_inside(false, "d/f", Dir).unwrap_err().contains("d/f"));
    }

    #[test]
    fn tar_paths_stay_below_the_destination() {
        assert_eq!(safe_rel("./a/b").as_deref(), Some("a/b"));
        assert_eq!(safe_rel("a//b/").as_deref(), Some("a/b"));
        assert_eq!(safe_rel("/etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(safe_rel("./").as_deref(), Some(""));
        assert_eq!(safe_rel("a/../../x"), None);
        assert_eq!(safe_rel(".."), None);
    }

    #[test]
    fn modes_and_chunks() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("rwx"), None);
        assert_eq!(format_mode(0o600), "0600");
        assert_eq!(format_mode(0o100644), "0644");
        // 1 MiB lines with 200 bytes of JSON around the data: 786,282 raw bytes, whose
        // base64 (1,048,376 bytes) fits.
        let c = write_chunk(1 << 20, 200).unwrap();
        assert_eq!(c, 786_282);
        assert!(c.div_ceil(3) * 4 + 200 <= 1 << 20);
        assert_eq!(write_chunk(100, 200), None);
        assert_eq!(write_chunk(202, 200), None);
    }
}
