//! The store's own OS thread: it alone owns the SQLite connection.
//!
//! SQLite calls block (disk, fsync, a busy lock for up to its timeout), so they never run
//! on an async worker. Callers send a closure over a channel and await its result through
//! a oneshot; the thread runs the closures one at a time, in the order sent. It ends when
//! the last handle is dropped, after the work already queued.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Store, StoreError};

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A handle to the store thread; cheap to clone.
#[derive(Clone)]
pub struct StoreThread {
    jobs: mpsc::Sender<Job>,
}

impl StoreThread {
    /// Starts the thread and opens (and migrates) `<state_dir>/berth.db` on it.
    pub async fn open(state_dir: PathBuf) -> Result<StoreThread, StoreError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (opened, open_result) = oneshot::channel();
        std::thread::Builder::new()
            .name("berth-store".into())
            .spawn(move || {
                let mut store = match Store::open(&state_dir) {
                    Ok(s) => {
                        let _ = opened.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                for job in queue {
                    // A panicking job drops its reply port (its caller gets an error) and
                    // its open transaction (rolled back); the thread serves the next one.
                    if catch_unwind(AssertUnwindSafe(|| job(&mut store))).is_err() {
                        tracing::error!("a registry database call panicked; its transaction was rolled back");
                    }
                }
            })
            .map_err(|e| StoreError::Thread(format!("cannot start: {e}")))?;
        open_result.await.map_err(|_| StoreError::Thread("ended while opening the database".into()))??;
        Ok(StoreThread { jobs })
    }

    /// Runs `f` on the store thread and waits for its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |s: &mut Store| {
                let _ = reply.send(f(s));
            }))
            .map_err(|_| StoreError::Thread("not running".into()))?;
        result.await.map_err(|_| StoreError::Thread("the call failed without an answer".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls run on the store's own thread, never on the caller's (an async worker).
    #[tokio::test(flavor = "current_thread")]
    async fn calls_run_on_the_store_thread_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let st = StoreThread::open(dir.path().to_path_buf()).await.unwrap();
        let caller = std::thread::current().id();
        let (name, id) = st
            .call(|_| Ok((std::thread::current().name().map(String::from), std::thread::current().id())))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("berth-store"));
        assert_ne!(id, caller);
        assert_eq!(st.call(|s| s.schema_version()).await.unwrap(), super::super::MIGRATIONS.len() as i64);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_call_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let st = StoreThread::open(dir.path().to_path_buf()).await.unwrap();
        let r: Result<(), _> = st.call(|_| panic!("boom")).await;
        assert!(matches!(r, Err(StoreError::Thread(_))), "{r:?}");
        assert!(st.call(|s| s.schema_version()).await.is_ok(), "the thread still serves");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unopenable_database_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("berth.db")).unwrap();
        let e = StoreThread::open(dir.path().to_path_buf()).await.err().unwrap();
        assert!(e.to_string().contains("berth.db"), "{e}");
    }
}
