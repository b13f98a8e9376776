//! Snapshots: what one is (`Snapshot`, its `SnapshotId`, the `Settings` it keeps), where
//! its files live (`SnapshotDirs`), and which are in use by a running fork
//! (`SnapshotLocks`).
//!
//! A snapshot is three things: an image committed from the project's container (tagged
//! `berth-snapshot:<id>`, labelled), a copy of its workspace in
//! `<state_dir>/snapshots/<id>`, and a registry row holding the project's settings. The
//! steps that make, restore, fork and delete them run in the project actors
//! (`actors/project/snapshots.rs`); this module does no engine or registry work.

pub mod copy;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;

use crate::model::{rfc3339, EnvMap, ImageRef, Limits, ModelError, PortMap, Project, ProjectName};

/// The repository every snapshot image is tagged in; the tag is the snapshot's id.
pub const IMAGE_REPO: &str = "berth-snapshot";
/// The image label carrying the snapshot id.
pub const SNAPSHOT_LABEL: &str = "berth.snapshot";
/// The image label naming the state dir of the berthd that made it, so that daemons
/// sharing an engine never remove each other's images.
pub const STATE_LABEL: &str = "berth.state-dir";
/// The longest label a snapshot may carry.
pub const MAX_LABEL: usize = 200;

/// `snap-` and 12 lowercase hex digits. `parse` and `new` are the only constructors, so a
/// held id is safe in a path and in an image tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn new() -> Self {
        SnapshotId(format!("snap-{}", &crate::runtime::token()[..12]))
    }

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let ok = s.len() == 17
            && s.starts_with("snap-")
            && s[5..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(ModelError::Param(format!("invalid snapshot id {s:?}: expected snap- and 12 hex digits")));
        }
        Ok(SnapshotId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The image reference of this id: `berth-snapshot:<id>`.
    pub fn image(&self) -> String {
        format!("{IMAGE_REPO}:{}", self.0)
    }
}

impl Default for SnapshotId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SnapshotId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Checks a snapshot label: at most `MAX_LABEL` bytes, no control characters.
pub fn check_label(label: &str) -> Result<(), ModelError> {
    if label.len() > MAX_LABEL || label.chars().any(char::is_control) {
        return Err(ModelError::Param(format!(
            "invalid snapshot label {label:?}: at most {MAX_LABEL} bytes, no control characters"
        )));
    }
    Ok(())
}

/// Where a snapshot is in its life; only `Ready` ones are listed or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// Journaled before anything is made; a crash leaves it for the next reconcile to
    /// discard, with whatever it had made.
    Taking,
    Ready,
    /// Journaled before anything is removed; finished by the next reconcile.
    Deleting,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Taking => "taking",
            SnapshotState::Ready => "ready",
            SnapshotState::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "taking" => SnapshotState::Taking,
            "ready" => SnapshotState::Ready,
            "deleting" => SnapshotState::Deleting,
            _ => return None,
        })
    }
}

/// The project's settings at the snapshot, stored as JSON with the row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub description: String,
    /// The image the project ran when the snapshot was taken.
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub ports: BTreeMap<String, String>,
    pub limits: Limits,
}

impl Settings {
    pub fn of(p: &Project) -> Settings {
        Settings {
            description: p.description.clone(),
            image: p.image.to_string(),
            env: p.env.as_map().clone(),
            ports: p.ports.to_wire(),
            limits: p.limits.clone(),
        }
    }

    /// Puts these settings on `p`, running `image` (the snapshot's).
    pub fn apply(&self, p: &mut Project, image: &str) -> Result<(), ModelError> {
        p.image = ImageRef::parse(image)?;
        p.env = EnvMap::parse(self.env.clone())?;
        p.ports = PortMap::parse(self.ports.clone())?;
        p.limits = self.limits.clone();
        p.description = self.description.clone();
        Ok(())
    }
}

/// One snapshot's registry row.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub project: ProjectName,
    pub label: String,
    pub created: OffsetDateTime,
    /// The committed image: `berth-snapshot:<id>`.
    pub image: String,
    pub workspace_bytes: u64,
    pub state: SnapshotState,
    pub settings: Settings,
}

impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a str,
            project: &'a str,
            label: &'a str,
            created: String,
            image: &'a str,
            workspace_bytes: u64,
            /// Extension: the image the project ran when the snapshot was taken.
            base_image: &'a str,
        }
        Wire {
            id: self.id.as_str(),
            project: self.project.as_str(),
            label: &self.label,
            created: rfc3339(self.created),
            image: &self.image,
            workspace_bytes: self.workspace_bytes,
            base_image: &self.settings.image,
        }
        .serialize(s)
    }
}

/// `<state_dir>/snapshots`: one directory per snapshot, and the scratch space of copies
/// in progress (names starting with `.`, which no id or project name does).
#[derive(Debug, Clone)]
pub struct SnapshotDirs {
    root: PathBuf,
}

impl SnapshotDirs {
    /// Makes `<state_dir>/snapshots` (0700) if missing; refuses a symlink there.
    pub fn open(state_dir: &Path) -> Result<SnapshotDirs, crate::workspace::WorkspaceError> {
        let root = state_dir.join("snapshots");
        crate::workspace::ensure_real_dir(&root)?;
        crate::workspace::set_mode(&root, 0o700)?;
        Ok(SnapshotDirs { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A finished snapshot's workspace copy.
    pub fn dir(&self, id: &SnapshotId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// A snapshot's workspace copy while it is being made.
    pub fn partial(&self, id: &SnapshotId) -> PathBuf {
        self.root.join(format!(".partial-{id}"))
    }

    /// A restore's new workspace while it is being copied, and once it is complete.
    pub fn restore_partial(&self, name: &ProjectName) -> PathBuf {
        self.root.join(format!(".restore-{name}.partial"))
    }

    pub fn restore_ready(&self, name: &ProjectName) -> PathBuf {
        self.root.join(format!(".restore-{name}.ready"))
    }

    /// A fork's new workspace while it is being copied from a snapshot.
    pub fn fork_staging(&self, name: &ProjectName) -> PathBuf {
        self.root.join(format!(".fork-{name}.partial"))
    }

    /// Where a restore moves the workspace it replaces; once the restore is done it is
    /// renamed `.gone-<token>` and removed in the background.
    pub fn trash(&self, name: &ProjectName) -> PathBuf {
        self.root.join(format!(".trash-{name}"))
    }
}

/// Snapshots that a fork is copying from right now: deleting or pruning one waits until
/// the fork is done (`busy`). Held outside the actors: a fork runs in the new project's
/// actor, a delete in the snapshot's project's. Also the replaced workspaces that
/// restores are removing in the background, which reconcile leaves alone.
#[derive(Default)]
pub struct SnapshotLocks(Mutex<HashMap<SnapshotId, usize>>, Mutex<std::collections::HashSet<PathBuf>>);

impl SnapshotLocks {
    pub fn hold(self: &Arc<Self>, id: &SnapshotId) -> SnapshotHold {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(id.clone()).or_default() += 1;
        SnapshotHold(self.clone(), id.clone())
    }

    pub fn held(&self, id: &SnapshotId) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }

    /// Marks `path` as being removed until the returned guard drops.
    pub fn begin_removal(self: &Arc<Self>, path: &Path) -> Removal {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf());
        Removal(self.clone(), path.to_path_buf())
    }

    pub fn removing(&self, path: &Path) -> bool {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).contains(path)
    }
}

pub struct Removal(Arc<SnapshotLocks>, PathBuf);

impl Drop for Removal {
    fn drop(&mut self) {
        self.0 .1.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

pub struct SnapshotHold(Arc<SnapshotLocks>, SnapshotId);

impl Drop for SnapshotHold {
    fn drop(&mut self) {
        let mut m = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["snap-0123456789ab", "snap-ffffffffffff"] {
            assert_eq!(SnapshotId::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "snap-", "snap-0123456789AB", "snap-0123456789abc", "snap-../../etc", "x-0123456789ab"] {
            let e = SnapshotId::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let id = SnapshotId::new();
        assert_eq!(SnapshotId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.image(), format!("berth-snapshot:{id}"));
    }

    #[test]
    fn labels_are_checked() {
        check_label("before the migration").unwrap();
        assert!(check_label("a\nb").is_err());
        assert!(check_label(&"x".repeat(MAX_LABEL + 1)).is_err());
    }

    #[test]
    fn holds_count_and_release() {
        let locks = Arc::new(SnapshotLocks::default());
        let id = SnapshotId::new();
        let a = locks.hold(&id);
        let b = locks.hold(&id);
        drop(a);
        assert!(locks.held(&id));
        drop(b);
        assert!(!locks.held(&id));
    }
}
