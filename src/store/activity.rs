//! The activity log: one row per exec, for `berth logs`.
//!
//! Bounded per project (the newest `KEEP` rows; older ones are pruned in the insert's own
//! transaction) and deleted with the project's row. An entry for a project that has no
//! row is not written, so the log never outlives its project. A log row that no longer
//! parses is skipped with a warning: it is history, never a reason to fail a read.

use rusqlite::params;
use time::OffsetDateTime;

use super::{ms, Store, StoreError};
use crate::model::{Activity, ProjectName};

/// Entries kept per project.
pub const KEEP: usize = 200;

impl Store {
    /// Appends one entry and prunes the project's oldest beyond `KEEP`. Returns whether it
    /// was written (false: the project has no row).
    pub fn record(&mut self, a: &Activity) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO activity (project, at_ms, uid, command, exit_code, duration_ms, runtime, timed_out)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM projects WHERE name = ?1)",
            params![
                a.project.as_str(),
                ms(a.at),
                a.uid,
                serde_json::to_string(&a.command).unwrap_or_else(|_| "[]".into()),
                a.exit_code,
                i64::try_from(a.duration_ms).unwrap_or(i64::MAX),
                a.runtime,
                a.timed_out,
            ],
        )?;
        if n > 0 {
            tx.execute(
                "DELETE FROM activity WHERE project = ?1 AND id NOT IN
                 (SELECT id FROM activity WHERE project = ?1 ORDER BY id DESC LIMIT ?2)",
                params![a.project.as_str(), KEEP as i64],
            )?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// The newest `limit` entries of a project, oldest first. Insertion order (not the
    /// clock, which may step back) decides what is newest.
    pub fn activity(&self, name: &ProjectName, limit: usize) -> Result<Vec<Activity>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at_ms, uid, command, exit_code, duration_ms, runtime, timed_out
             FROM activity WHERE project = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![name.as_str(), limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at_ms, uid, command, exit_code, duration_ms, runtime, timed_out) = row?;
            let parsed = (|| {
                let at = OffsetDateTime::from_unix_timestamp_nanos(at_ms as i128 * 1_000_000).ok()?;
                let command = serde_json::from_str(&command).ok()?;
                Some(Activity {
                    project: name.clone(),
                    at,
                    uid: u32::try_from(uid).ok()?,
                    command,
                    exit_code,
                    duration_ms: u64::try_from(duration_ms).ok()?,
                    runtime,
                    timed_out,
                })
            })();
            match parsed {
                Some(a) => out.push(a),
                None => tracing::warn!(project = %name, id, "activity entry does not parse; skipped"),
            }
        }
        out.reverse();
        Ok(out)
    }
}
