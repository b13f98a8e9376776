//! Finding a process's descendants by walking the parent links in `/proc/*/stat`. Used by
//! the shim to freeze, kill and signal a command's whole tree; it reads `/proc` and
//! nothing else, and never signals anything itself.

use std::collections::{HashMap, HashSet};
use std::fs;

use crate::sys::pid_t;

/// One process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: pid_t,
    pub state: u8,
    pub ppid: pid_t,
}

/// Parses a `/proc/<pid>/stat` line. The command name sits in parentheses and may itself
/// contain spaces and parentheses, so the fields are found after its last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let mut rest = line.get(close + 1..)?.split_ascii_whitespace();
    let state = *rest.next()?.as_bytes().first()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Stat { pid, state, ppid })
}

fn all_processes() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter(|e| e.file_name().as_encoded_bytes().iter().all(u8::is_ascii_digit))
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|l| parse_stat(&l))
        .collect()
}

/// The live (not zombie) descendants of `root`, not including `root`.
pub fn descendants(root: pid_t) -> Vec<pid_t> {
    descendants_in(root, &all_processes())
}

pub fn descendants_in(root: pid_t, procs: &[Stat]) -> Vec<pid_t> {
    let mut children: HashMap<pid_t, Vec<&Stat>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if c.pid != root && seen.insert(c.pid) {
                todo.push(c.pid);
                if c.state != b'Z' && c.state != b'X' {
                    out.push(c.pid);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        let cases = [
            ("12 (sh) S 1 12 12 0 -1", Some(Stat { pid: 12, state: b'S', ppid: 1 })),
            ("7 (a b) c) (d) R 3 7 7", Some(Stat { pid: 7, state: b'R', ppid: 3 })),
            ("9 ()) Z 4 0", Some(Stat { pid: 9, state: b'Z', ppid: 4 })),
            ("9 (x)", None),
            ("garbage", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_stat(line), want, "{line:?}");
        }
    }

    #[test]
    fn descendants_follow_parent_links_and_skip_zombies() {
        let s = |pid, ppid, state| Stat { pid, state, ppid };
        let procs = [s(1, 0, b'S'), s(10, 1, b'S'), s(11, 10, b'S'), s(12, 11, b'Z'), s(13, 12, b'S'), s(20, 1, b'S')];
        let mut d = descendants_in(10, &procs);
        d.sort();
        assert_eq!(d, vec![11, 13]);
        assert!(descendants_in(13, &procs).is_empty());
    }

    #[test]
    fn this_process_is_a_descendant_of_its_parent() {
        let me = std::process::id() as pid_t;
        let parent = std::os::unix::process::parent_id() as pid_t;
        assert!(descendants(parent).contains(&me));
    }
}
