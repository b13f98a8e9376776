//! The SQLite registry: the durable record of every project.
//!
//! Only this module touches SQLite. The database runs in WAL mode, so a crash at any
//! point leaves either the old or the new row, never a torn file; the schema is versioned
//! with `PRAGMA user_version` and migrated forward in one transaction. The connection is
//! owned by the registry actor; this type is not shared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use crate::model::{EnvMap, ImageRef, Pending, PortMap, Project, ProjectName, Status};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("registry database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("project {0} already exists")]
    Exists(String),
    #[error("registry row for {name} is corrupt: {why}")]
    Corrupt { name: String, why: String },
    #[error("registry database schema version {0} is newer than this berth understands")]
    TooNew(i64),
}

/// Schema migrations, in order; entry `i` moves `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE projects (
        name         TEXT PRIMARY KEY NOT NULL,
        description  TEXT NOT NULL,
        image        TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        last_used_ms INTEGER NOT NULL,
        status       TEXT NOT NULL,
        env          TEXT NOT NULL,
        ports        TEXT NOT NULL
    ) STRICT;
"#,
    r#"
    ALTER TABLE projects ADD COLUMN pending TEXT;
"#,
    r#"
    ALTER TABLE projects ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
"#,
];

pub struct Store {
    conn: Connection,
    projects_dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/berth.db` and migrates it.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("berth.db");
        let conn = Connection::open(&path).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: readers never see a half-written commit and a crash loses at most the
        // last un-synced transaction, never the file. NORMAL is durable across process
        // crashes (what kill -9 is); only a power loss can drop the newest commit.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let mut store = Store { conn, projects_dir: state_dir.join("projects") };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew(version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn list(&self) -> Result<Vec<Project>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, description, image, created_ms, last_used_ms, status, env, ports, pending, limits
             FROM projects ORDER BY name",
        )?;
        let rows = stmt.query_map([], Row::read)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?.into_project(&self.projects_dir)?);
        }
        Ok(out)
    }

    pub fn get(&self, name: &ProjectName) -> Result<Option<Project>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, description, image, created_ms, last_used_ms, status, env, ports, pending, limits
             FROM projects WHERE name = ?1",
        )?;
        let row = stmt.query_row([name.as_str()], Row::read).optional()?;
        row.map(|r| r.into_project(&self.projects_dir)).transpose()
    }

    /// Inserts a new row; `Exists` if the name is taken.
    pub fn insert(&self, p: &Project) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "INSERT INTO projects (name, description, image, created_ms, last_used_ms, status, env, ports, pending, limits)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(name) DO NOTHING",
            params![
                p.name.as_str(),
                p.description,
                p.image.as_str(),
                ms(p.created),
                ms(p.last_used),
                p.status.as_str(),
                json(p.env.as_map()),
                json(&p.ports.to_wire()),
                p.pending.map(Pending::as_str),
                serde_json::to_string(&p.limits).unwrap_or_else(|_| "{}".into()),
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(p.name.to_string()));
        }
        Ok(())
    }

    /// Writes the row's mutable fields (status, last_used, image, pending).
    pub fn update(&self, p: &Project) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE projects SET status = ?2, last_used_ms = ?3, image = ?4, pending = ?5 WHERE name = ?1",
            params![
                p.name.as_str(),
                p.status.as_str(),
                ms(p.last_used),
                p.image.as_str(),
                p.pending.map(Pending::as_str)
            ],
        )?;
        Ok(())
    }

    pub fn delete(&self, name: &ProjectName) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM projects WHERE name = ?1", [name.as_str()])? > 0)
    }

    /// Folds the WAL back into the main file; called on clean shutdown.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
        Ok(())
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(name: &str, v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(v as i128 * 1_000_000)
        .map_err(|e| StoreError::Corrupt { name: name.into(), why: e.to_string() })
}

fn json(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".into())
}

struct Row {
    name: String,
    description: String,
    image: String,
    created_ms: i64,
    last_used_ms: i64,
    status: String,
    env: String,
    ports: String,
    pending: Option<String>,
    limits: String,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            name: r.get(0)?,
            description: r.get(1)?,
            image: r.get(2)?,
            created_ms: r.get(3)?,
            last_used_ms: r.get(4)?,
            status: r.get(5)?,
            env: r.get(6)?,
            ports: r.get(7)?,
            pending: r.get(8)?,
            limits: r.get(9)?,
        })
    }

    fn into_project(self, projects_dir: &Path) -> Result<Project, StoreError> {
        let corrupt = |why: String| StoreError::Corrupt { name: self.name.clone(), why };
        let name = ProjectName::parse(&self.name).map_err(|e| corrupt(e.to_string()))?;
        let env: BTreeMap<String, String> = serde_json::from_str(&self.env).map_err(|e| corrupt(e.to_string()))?;
        let ports: BTreeMap<String, String> = serde_json::from_str(&self.ports).map_err(|e| corrupt(e.to_string()))?;
        Ok(Project {
            path: projects_dir.join(name.as_str()),
            image: ImageRef::parse(&self.image).map_err(|e| corrupt(e.to_string()))?,
            created: from_ms(&self.name, self.created_ms)?,
            last_used: from_ms(&self.name, self.last_used_ms)?,
            status: Status::parse(&self.status).ok_or_else(|| corrupt(format!("status {:?}", self.status)))?,
            env: EnvMap::parse(env).map_err(|e| corrupt(e.to_string()))?,
            ports: PortMap::parse(ports).map_err(|e| corrupt(e.to_string()))?,
            limits: serde_json::from_str(&self.limits).map_err(|e| corrupt(format!("limits: {e}")))?,
            pending: match self.pending.as_deref() {
                None => None,
                Some(s) => Some(Pending::parse(s).ok_or_else(|| corrupt(format!("pending {s:?}")))?),
            },
            description: self.description,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(name: &str) -> Project {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        Project {
            name: ProjectName::parse(name).unwrap(),
            description: "d".into(),
            image: ImageRef::parse("busybox").unwrap(),
            created: now,
            last_used: now,
            status: Status::Creating,
            env: EnvMap::parse_pairs(["A=1"]).unwrap(),
            ports: PortMap::parse_pairs(["8080:80"]).unwrap(),
            path: PathBuf::new(),
            pending: None,
            limits: crate::model::Limits { offline: Some(true), ..Default::default() },
        }
    }

    #[test]
    fn round_trip_and_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut p = project("alpha");
        store.insert(&p).unwrap();
        assert!(matches!(store.insert(&p), Err(StoreError::Exists(n)) if n == "alpha"));
        p.status = Status::Running;
        p.last_used += time::Duration::seconds(5);
        p.pending = Some(Pending::Purge);
        store.update(&p).unwrap();
        let got = store.get(&p.name).unwrap().unwrap();
        assert_eq!(got.status, Status::Running);
        assert_eq!(got.pending, Some(Pending::Purge));
        assert_eq!(got.limits.offline, Some(true));
        assert_eq!(got.last_used, p.last_used);
        assert_eq!(got.env, p.env);
        assert_eq!(got.path, dir.path().join("projects/alpha"));
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.delete(&p.name).unwrap());
        assert!(store.get(&p.name).unwrap().is_none());
    }

    #[test]
    fn an_old_database_is_migrated_forward() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("berth.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute("INSERT INTO projects VALUES ('old', '', 'busybox', 0, 0, 'stopped', '{}', '{}')", [])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let p = store.list().unwrap().pop().unwrap();
        assert_eq!((p.name.as_str(), p.status, p.pending), ("old", Status::Stopped, None));
        assert_eq!(p.limits, crate::model::Limits::default());
    }

    #[test]
    fn reopen_keeps_rows_and_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.insert(&project("beta")).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.list().unwrap()[0].name.as_str(), "beta");
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }
}
