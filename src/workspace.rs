//! Project workspaces on the host: `<state_dir>/projects/<name>` and `<state_dir>/archive/`.
//!
//! Every path this module builds is the state dir joined with a validated `ProjectName`,
//! so it cannot leave the state dir by name. It also refuses to work through a symlink
//! planted at `projects/`, `archive/` or a workspace: such a link is an error, never
//! followed. It does not know about containers or the registry.
//!
//! Nothing here is reachable by other local users: the state dir and `projects/` are
//! 0711 (traversable, not listable), `archive/` is 0700, and every workspace is 0700
//! (0750 for `socket_group`), owned by the user that runs commands there. So a file a
//! container plants in a workspace (a setuid binary, say) is out of everyone else's reach.

use std::io;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::model::ProjectName;

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is a symlink or not a directory; refusing to use it")]
    NotADir(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io { path: path.to_path_buf(), source }
}

/// Who owns each workspace and with what mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl Access {
    /// berthd's own user, 0700: what an unprivileged daemon can do.
    pub fn own() -> Access {
        // SAFETY: geteuid/getegid cannot fail.
        unsafe { Access { uid: libc::geteuid(), gid: libc::getegid(), mode: 0o700 } }
    }
}

#[derive(Debug, Clone)]
pub struct Workspaces {
    projects: PathBuf,
    archive: PathBuf,
    access: Access,
}

impl Workspaces {
    /// Makes the state dir layout if missing, checks none of it is a symlink, and makes
    /// it unlistable by other users.
    pub fn open(state_dir: &Path, access: Access) -> Result<Workspaces, WorkspaceError> {
        std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let ws = Workspaces { projects: state_dir.join("projects"), archive: state_dir.join("archive"), access };
        for (dir, mode) in [(state_dir, 0o711), (&ws.projects, 0o711), (&ws.archive, 0o700)] {
            ensure_real_dir(dir)?;
            set_mode(dir, mode)?;
        }
        Ok(ws)
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn path(&self, name: &ProjectName) -> PathBuf {
        self.projects.join(name.as_str())
    }

    pub fn archive_dir(&self) -> &Path {
        &self.archive
    }

    /// Makes the workspace; returns whether it was made now (false: it already existed).
    pub fn ensure(&self, name: &ProjectName) -> Result<bool, WorkspaceError> {
        ensure_real_dir(&self.projects)?;
        let path = self.path(name);
        let made = match std::fs::create_dir(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                check_real_dir(&path)?;
                false
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        // Also for a workspace made before: ownership and mode follow the config.
        let a = self.access;
        std::os::unix::fs::lchown(&path, Some(a.uid), Some(a.gid)).map_err(io_err(&path))?;
        set_mode(&path, a.mode)?;
        Ok(made)
    }

    pub fn exists(&self, name: &ProjectName) -> bool {
        std::fs::symlink_metadata(self.path(name)).is_ok()
    }

    /// Moves the workspace to `archive/<name>-<UTC timestamp>[-N]`, never overwriting an
    /// earlier archive. `None` when there was no workspace to move.
    pub fn archive(&self, name: &ProjectName, now: OffsetDateTime) -> Result<Option<PathBuf>, WorkspaceError> {
        check_real_dir(&self.projects)?;
        let src = self.path(name);
        if std::fs::symlink_metadata(&src).is_err() {
            return Ok(None);
        }
        check_real_dir(&src)?;
        ensure_real_dir(&self.archive)?;
        let utc = now.to_offset(time::UtcOffset::UTC);
        let stamp = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            utc.year(),
            utc.month() as u8,
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second()
        );
        for n in 0..1000 {
            let base = if n == 0 { format!("{name}-{stamp}") } else { format!("{name}-{stamp}-{n}") };
            let dst = self.archive.join(base);
            // Claim the target name first so that a concurrent archive cannot take it,
            // then rename over the empty directory we just made (rename(2) replaces an
            // empty directory atomically).
            match std::fs::create_dir(&dst) {
                Ok(()) => {
                    std::fs::rename(&src, &dst).map_err(|e| {
                        let _ = std::fs::remove_dir(&dst);
                        io_err(&src)(e)
                    })?;
                    return Ok(Some(dst));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&dst)(e)),
            }
        }
        Err(WorkspaceError::Io { path: self.archive.clone(), source: io::Error::other("no free archive name") })
    }

    /// Deletes the workspace and everything in it. Symlinks inside are removed, not
    /// followed (std's `remove_dir_all` does not follow them).
    pub fn purge(&self, name: &ProjectName) -> Result<(), WorkspaceError> {
        check_real_dir(&self.projects)?;
        let path = self.path(name);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(());
        }
        check_real_dir(&path)?;
        std::fs::remove_dir_all(&path).map_err(io_err(&path))
    }
}

pub(crate) fn ensure_real_dir(dir: &Path) -> Result<(), WorkspaceError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_real_dir(dir),
        Err(e) => Err(io_err(dir)(e)),
    }
}

pub(crate) fn set_mode(dir: &Path, mode: u32) -> Result<(), WorkspaceError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io_err(dir))
}

fn check_real_dir(dir: &Path) -> Result<(), WorkspaceError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(WorkspaceError::NotADir(dir.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ProjectName {
        ProjectName::parse(s).unwrap()
    }

    #[test]
    fn ensure_archive_purge() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspaces::open(dir.path(), Access::own()).unwrap();
        let n = name("p1");
        assert!(ws.ensure(&n).unwrap());
        assert!(!ws.ensure(&n).unwrap());
        std::fs::write(ws.path(&n).join("f"), "x").unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a1 = ws.archive(&n, now).unwrap().unwrap();
        assert!(a1.ends_with("p1-20231114T221320Z"), "{}", a1.display());
        assert_eq!(std::fs::read_to_string(a1.join("f")).unwrap(), "x");
        // A second archive in the same second gets its own name.
        ws.ensure(&n).unwrap();
        let a2 = ws.archive(&n, now).unwrap().unwrap();
        assert_ne!(a1, a2);
        assert!(ws.archive(&n, now).unwrap().is_none());
        ws.ensure(&n).unwrap();
        ws.purge(&n).unwrap();
        assert!(!ws.exists(&n));
    }

    #[test]
    fn nothing_is_listable_or_readable_by_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ws = Workspaces::open(&state, Access::own()).unwrap();
        let n = name("p1");
        ws.ensure(&n).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&state), 0o711);
        assert_eq!(mode(&state.join("projects")), 0o711);
        assert_eq!(mode(&state.join("archive")), 0o700);
        assert_eq!(mode(&ws.path(&n)), 0o700);
        // A workspace made before with a looser mode is tightened when next used.
        set_mode(&ws.path(&n), 0o777).unwrap();
        ws.ensure(&n).unwrap();
        assert_eq!(mode(&ws.path(&n)), 0o700);
        let archived = ws.archive(&n, OffsetDateTime::now_utc()).unwrap().unwrap();
        assert_eq!(mode(&archived), 0o700, "archived workspaces keep their mode");
    }

    #[test]
    fn planted_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let ws = Workspaces::open(dir.path(), Access::own()).unwrap();
        let n = name("evil");
        std::os::unix::fs::symlink(outside.path(), ws.path(&n)).unwrap();
        assert!(matches!(ws.ensure(&n), Err(WorkspaceError::NotADir(_))));
        assert!(matches!(ws.purge(&n), Err(WorkspaceError::NotADir(_))));
        assert!(matches!(ws.archive(&n, OffsetDateTime::now_utc()), Err(WorkspaceError::NotADir(_))));
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn a_symlinked_projects_dir_is_refused_for_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("evil");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "x").unwrap();
        let ws = Workspaces::open(dir.path(), Access::own()).unwrap();
        std::fs::remove_dir(dir.path().join("projects")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("projects")).unwrap();
        let n = name("evil");
        assert!(matches!(ws.ensure(&n), Err(WorkspaceError::NotADir(_))));
        assert!(matches!(ws.purge(&n), Err(WorkspaceError::NotADir(_))));
        assert!(matches!(ws.archive(&n, OffsetDateTime::now_utc()), Err(WorkspaceError::NotADir(_))));
        assert!(victim.join("keep").exists(), "nothing outside the state dir was touched");
        // And a symlinked archive dir.
        std::fs::remove_file(dir.path().join("projects")).unwrap();
        std::fs::create_dir(dir.path().join("projects")).unwrap();
        ws.ensure(&n).unwrap();
        std::fs::remove_dir(dir.path().join("archive")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("archive")).unwrap();
        assert!(matches!(ws.archive(&n, OffsetDateTime::now_utc()), Err(WorkspaceError::NotADir(_))));
        assert!(ws.path(&n).is_dir(), "workspace stays where it was");
    }
}
