//! The SQLite registry: the durable record of every project.
//!
//! Only this module touches SQLite. The database runs in WAL mode, so a crash at any
//! point leaves either the old or the new row, never a torn file; the schema is versioned
//! with `PRAGMA user_version` and migrated forward in one transaction. A row that no
//! longer parses is moved to the `quarantine` table at load, never a reason to refuse to
//! start. The connection is owned by one OS thread (`thread.rs`), never by an async
//! worker; this type is not shared.

mod activity;
mod snapshots;
mod thread;

pub use thread::StoreThread;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
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
    #[error("project {0} has no registry row")]
    Missing(String),
    #[error("the registry database thread: {0}")]
    Thread(String),
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
    // Rows that did not parse at load, kept as they were (untyped columns hold the raw
    // values) with the reason, for an operator to repair or drop.
    r#"
    CREATE TABLE quarantine (
        id             INTEGER PRIMARY KEY,
        name, description, image, created_ms, last_used_ms, status, env, ports, pending, limits,
        reason         TEXT NOT NULL,
        quarantined_ms INTEGER NOT NULL
    );
"#,
    r#"
    CREATE TABLE activity (
        id          INTEGER PRIMARY KEY,
        project     TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        uid         INTEGER NOT NULL,
        command     TEXT NOT NULL,
        exit_code   INTEGER,
        duration_ms INTEGER NOT NULL,
        runtime     TEXT NOT NULL,
        timed_out   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX activity_by_project ON activity (project, id);
"#,
    // Snapshots: the row is written (as `taking`) before anything is made, and deleted
    // after everything it named is gone.
    r#"
    CREATE TABLE snapshots (
        id              TEXT PRIMARY KEY NOT NULL,
        project         TEXT NOT NULL,
        label           TEXT NOT NULL,
        created_ms      INTEGER NOT NULL,
        image           TEXT NOT NULL,
        workspace_bytes INTEGER NOT NULL,
        state           TEXT NOT NULL,
        settings        TEXT NOT NULL
    ) STRICT;
    CREATE INDEX snapshots_by_project ON snapshots (project, created_ms);
"#,
];

/// What `Store::load` found: the rows that parse, and those it quarantined just now.
#[derive(Debug, Default)]
pub struct Loaded {
    pub projects: Vec<Project>,
    pub quarantined: Vec<Quarantined>,
}

/// A row moved to the `quarantine` table, named as it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub name: String,
    pub reason: String,
}

pub struct Store {
    conn: Connection,
    projects_dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/berth.db` and migrates it.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("berth.db");
        let connect = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            // WAL: readers never see a half-written commit and a crash loses at most the
            // last un-synced transaction, never the file. NORMAL is durable across process
            // crashes (what kill -9 is); only a power loss can drop the newest commit.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(conn)
        };
        let conn = connect().map_err(|source| StoreError::Open { path: path.clone(), source })?;
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

    /// Every row that parses. A row that does not (bad name, JSON, status, ...) is moved
    /// to `quarantine` with the reason and reported, so one bad row never keeps the rest
    /// from being served.
    pub fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let mut bad = Vec::new();
        {
            let mut stmt = self.conn.prepare(&format!("SELECT rowid, {COLUMNS} FROM projects ORDER BY name"))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let rowid: i64 = r.get(0)?;
                let parsed = Row::read_from(r, 1)
                    .map_err(|e| e.to_string())
                    .and_then(|row| row.into_project(&self.projects_dir).map_err(|e| e.to_string()));
                match parsed {
                    Ok(p) => loaded.projects.push(p),
                    Err(reason) => bad.push((rowid, Quarantined { name: raw_text(r.get_ref(1)?), reason })),
                }
            }
        }
        if !bad.is_empty() {
            let now = ms(OffsetDateTime::now_utc());
            let tx = self.conn.transaction()?;
            for (rowid, q) in &bad {
                tx.execute(
                    &format!(
                        "INSERT INTO quarantine ({COLUMNS}, reason, quarantined_ms)
                         SELECT {COLUMNS}, ?2, ?3 FROM projects WHERE rowid = ?1"
                    ),
                    params![rowid, q.reason, now],
                )?;
                tx.execute("DELETE FROM projects WHERE rowid = ?1", [rowid])?;
            }
            tx.commit()?;
            loaded.quarantined = bad.into_iter().map(|(_, q)| q).collect();
        }
        Ok(loaded)
    }

    /// The names of every quarantined row, oldest first.
    pub fn quarantined(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT name FROM quarantine ORDER BY id")?;
        let names = stmt.query_map([], |r| Ok(raw_text(r.get_ref(0)?)))?;
        Ok(names.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, name: &ProjectName) -> Result<Option<Project>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {COLUMNS} FROM projects WHERE name = ?1"))?;
        let row = stmt.query_row([name.as_str()], |r| Row::read_from(r, 0)).optional()?;
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
                p.pending.as_ref().map(Pending::encode),
                serde_json::to_string(&p.limits).unwrap_or_else(|_| "{}".into()),
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(p.name.to_string()));
        }
        Ok(())
    }

    /// Writes the row's mutable fields (everything but name and created: a restore puts
    /// back a snapshot's settings); `Missing` if there is no row to write.
    pub fn update(&self, p: &Project) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE projects SET status = ?2, last_used_ms = ?3, image = ?4, pending = ?5, description = ?6,
             env = ?7, ports = ?8, limits = ?9 WHERE name = ?1",
            params![
                p.name.as_str(),
                p.status.as_str(),
                ms(p.last_used),
                p.image.as_str(),
                p.pending.as_ref().map(Pending::encode),
                p.description,
                json(p.env.as_map()),
                json(&p.ports.to_wire()),
                serde_json::to_string(&p.limits).unwrap_or_else(|_| "{}".into()),
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Missing(p.name.to_string()));
        }
        Ok(())
    }

    /// Deletes the row and its activity log, together.
    pub fn delete(&mut self, name: &ProjectName) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM projects WHERE name = ?1", [name.as_str()])?;
        tx.execute("DELETE FROM activity WHERE project = ?1", [name.as_str()])?;
        tx.commit()?;
        Ok(n > 0)
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

/// The projects columns, in the order `Row::read_from` reads them.
const COLUMNS: &str = "name, description, image, created_ms, last_used_ms, status, env, ports, pending, limits";

/// A stored value as text for a log line, whatever its type.
fn raw_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Blob(b) => format!("<{} byte blob>", b.len()),
    }
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
    /// Reads `COLUMNS` starting at column `at`.
    fn read_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
        Ok(Row {
            name: r.get(at)?,
            description: r.get(at + 1)?,
            image: r.get(at + 2)?,
            created_ms: r.get(at + 3)?,
            last_used_ms: r.get(at + 4)?,
            status: r.get(at + 5)?,
            env: r.get(at + 6)?,
            ports: r.get(at + 7)?,
            pending: r.get(at + 8)?,
            limits: r.get(at + 9)?,
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
    use crate::model::Activity;

    fn project(name: &str) -> Project {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        Project {
            description: "d".into(),
            env: EnvMap::parse_pairs(["A=1"]).unwrap(),
            ports: PortMap::parse_pairs(["8080:80"]).unwrap(),
            limits: crate::model::Limits { offline: Some(true), ..Default::default() },
            ..Project::sample(name, Status::Creating, now)
        }
    }

    #[test]
    fn round_trip_and_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut p = project("alpha");
        store.insert(&p).unwrap();
        assert!(matches!(store.insert(&p), Err(StoreError::Exists(n)) if n == "alpha"));
        p.status = Status::Running;
        p.last_used += time::Duration::seconds(5);
        p.pending = Some(Pending::Purge { keep_snapshots: true });
        store.update(&p).unwrap();
        let got = store.get(&p.name).unwrap().unwrap();
        assert_eq!(got.status, Status::Running);
        assert_eq!(got.pending, Some(Pending::Purge { keep_snapshots: true }));
        assert_eq!(got.limits.offline, Some(true));
        assert_eq!(got.last_used, p.last_used);
        assert_eq!(got.env, p.env);
        assert_eq!(got.path, dir.path().join("projects/alpha"));
        assert_eq!(store.load().unwrap().projects.len(), 1);
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
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let p = store.load().unwrap().projects.pop().unwrap();
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
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(store.load().unwrap().projects[0].name.as_str(), "beta");
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn an_update_that_touches_no_row_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let e = store.update(&project("ghost")).unwrap_err();
        assert!(matches!(&e, StoreError::Missing(n) if n == "ghost"), "{e:?}");
        assert!(e.to_string().contains("ghost"), "{e}");
        assert!(store.get(&ProjectName::parse("ghost").unwrap()).unwrap().is_none(), "nothing written");
    }

    /// One row per way a row can rot: each is quarantined with a reason, the good row is
    /// served, and the raw values survive for repair.
    #[test]
    fn corrupt_rows_are_quarantined_and_the_rest_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.insert(&project("good")).unwrap();
        let bad = [
            ("Bad Name", "name", "'Bad Name'"),
            ("badenv", "env", "'not json'"),
            ("badports", "ports", "'{\"80\":\"0\"}'"),
            ("badstatus", "status", "'sleeping'"),
            ("badpending", "pending", "'sideways'"),
            ("badlimits", "limits", "'{\"nope\":1}'"),
            ("badimage", "image", "'-x'"),
            ("badtime", "created_ms", "9223372036854775807"),
        ];
        for (name, column, value) in bad {
            let valid = if name == "Bad Name" { "tmp" } else { name };
            store.insert(&project(valid)).unwrap();
            store.conn.execute(&format!("UPDATE projects SET {column} = {value} WHERE name = ?1"), [valid]).unwrap();
        }
        let loaded = store.load().unwrap();
        let names: Vec<&str> = loaded.projects.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        let mut got: Vec<&str> = loaded.quarantined.iter().map(|q| q.name.as_str()).collect();
        got.sort();
        let mut want: Vec<&str> = bad.iter().map(|b| b.0).collect();
        want.sort();
        assert_eq!(got, want);
        let env = loaded.quarantined.iter().find(|q| q.name == "badenv").unwrap();
        assert!(env.reason.contains("expected"), "the reason says why: {}", env.reason);
        let status = loaded.quarantined.iter().find(|q| q.name == "badstatus").unwrap();
        assert!(status.reason.contains("sleeping"), "{}", status.reason);

        let (raw_env, reason): (String, String) = store
            .conn
            .query_row("SELECT env, reason FROM quarantine WHERE name = 'badenv'", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((raw_env.as_str(), reason.as_str()), ("not json", env.reason.as_str()));
        let left: i64 = store.conn.query_row("SELECT count(*) FROM projects", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 1, "quarantined rows left projects");
        drop(store);

        // The next start has nothing new to quarantine and still reports the old ones.
        let mut store = Store::open(dir.path()).unwrap();
        let again = store.load().unwrap();
        assert_eq!(again.projects.len(), 1);
        assert!(again.quarantined.is_empty());
        let mut names = store.quarantined().unwrap();
        names.sort();
        assert_eq!(names, want);
    }

    fn exec(name: &str, i: u64) -> Activity {
        Activity {
            project: ProjectName::parse(name).unwrap(),
            at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + i as i64).unwrap(),
            uid: 1000,
            command: vec!["echo".into(), format!("{i}")],
            exit_code: i.is_multiple_of(2).then_some(i as i64),
            duration_ms: i,
            runtime: "docker".into(),
            timed_out: i.is_multiple_of(3),
        }
    }

    #[test]
    fn activity_keeps_the_newest_per_project_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.insert(&project("a")).unwrap();
        store.insert(&project("b")).unwrap();
        let total = activity::KEEP as u64 + 25;
        for i in 0..total {
            assert!(store.record(&exec("a", i)).unwrap());
        }
        store.record(&exec("b", 7)).unwrap();
        let a = ProjectName::parse("a").unwrap();
        let all = store.activity(&a, 10_000).unwrap();
        assert_eq!(all.len(), activity::KEEP, "pruned on insert");
        assert_eq!(all.first().unwrap(), &exec("a", total - activity::KEEP as u64), "oldest kept first");
        assert_eq!(all.last().unwrap(), &exec("a", total - 1), "newest last, every field as written");
        let last3: Vec<u64> = store.activity(&a, 3).unwrap().iter().map(|e| e.duration_ms).collect();
        assert_eq!(last3, [total - 3, total - 2, total - 1]);
        assert_eq!(store.activity(&ProjectName::parse("b").unwrap(), 10).unwrap(), [exec("b", 7)]);

        // Deleting the row deletes its log, and only its log.
        assert!(store.delete(&a).unwrap());
        assert!(store.activity(&a, 10).unwrap().is_empty());
        assert_eq!(store.activity(&ProjectName::parse("b").unwrap(), 10).unwrap().len(), 1);
        // A project without a row gets no log (an exec that raced its delete).
        assert!(!store.record(&exec("a", 1)).unwrap());
        assert!(store.activity(&a, 10).unwrap().is_empty());
    }

    #[test]
    fn activity_serializes_as_the_wire_says() {
        let mut e = exec("a", 4);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({
                "at": "2023-11-14T22:13:24Z",
                "command": ["echo", "4"],
                "exit_code": 4,
                "duration_ms": 4,
                "uid": 1000,
                "runtime": "docker",
                "timed_out": false,
            })
        );
        e.exit_code = None;
        assert_eq!(serde_json::to_value(&e).unwrap()["exit_code"], serde_json::Value::Null);
    }
}
