//! Snapshot rows: one per snapshot, with its state (`taking`, `ready`, `deleting`) as the
//! journal of the steps that make or remove it. A row that no longer parses is skipped
//! with a warning at load (its files are then swept as orphans by reconcile).

use rusqlite::params;

use super::{from_ms, ms, Store, StoreError};
use crate::model::ProjectName;
use crate::snapshot::{Settings, Snapshot, SnapshotId, SnapshotState};

const COLUMNS: &str = "id, project, label, created_ms, image, workspace_bytes, state, settings";

impl Store {
    /// Every snapshot row that parses, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {COLUMNS} FROM snapshots ORDER BY created_ms, id"))?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            let parsed = (|| -> Result<Snapshot, String> {
                let settings: String = r.get(7).map_err(|e| e.to_string())?;
                let state: String = r.get(6).map_err(|e| e.to_string())?;
                Ok(Snapshot {
                    id: SnapshotId::parse(&id).map_err(|e| e.to_string())?,
                    project: ProjectName::parse(&r.get::<_, String>(1).map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?,
                    label: r.get(2).map_err(|e| e.to_string())?,
                    created: from_ms(&id, r.get(3).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?,
                    image: r.get(4).map_err(|e| e.to_string())?,
                    workspace_bytes: r.get::<_, i64>(5).map_err(|e| e.to_string())?.max(0) as u64,
                    state: SnapshotState::parse(&state).ok_or_else(|| format!("state {state:?}"))?,
                    settings: serde_json::from_str::<Settings>(&settings).map_err(|e| format!("settings: {e}"))?,
                })
            })();
            match parsed {
                Ok(s) => out.push(s),
                Err(why) => tracing::warn!(snapshot = %id, %why, "snapshot row does not parse; skipped"),
            }
        }
        Ok(out)
    }

    /// Inserts or replaces a snapshot's row.
    pub fn put_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        self.conn.execute(
            &format!("INSERT OR REPLACE INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
            params![
                s.id.as_str(),
                s.project.as_str(),
                s.label,
                ms(s.created),
                s.image,
                i64::try_from(s.workspace_bytes).unwrap_or(i64::MAX),
                s.state.as_str(),
                serde_json::to_string(&s.settings).unwrap_or_else(|_| "{}".into()),
            ],
        )?;
        Ok(())
    }

    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM snapshots WHERE id = ?1", [id.as_str()])? > 0)
    }
}
