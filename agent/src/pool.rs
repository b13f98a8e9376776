//! A connection's call workers: up to `MAX_WORKERS` threads, started as calls come and
//! ended when idle, that run the calls which may block on the file system, so that the
//! connection's reader thread never waits for a disk. Calls on the same path run one at a
//! time in the order they came (a truncating first chunk is never overtaken by the next
//! chunk); calls on different paths may run side by side. The queue is bounded in calls and
//! bytes: past the bound a call is refused at once (`Busy`) rather than queued. When the
//! connection ends, calls not yet begun are dropped: nobody is left to hear their answers.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

pub const MAX_WORKERS: usize = 4;
/// Calls queued and not yet begun, and the bytes they carry, at most.
const MAX_QUEUED: usize = 256;
const MAX_QUEUED_BYTES: usize = 32 << 20;
/// How long a worker with nothing to do waits before it ends.
const IDLE: Duration = Duration::from_secs(10);

struct Job {
    /// What orders the job: the path it is about.
    key: Vec<u8>,
    bytes: usize,
    run: Box<dyn FnOnce() + Send>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    bytes: usize,
    /// Keys of the jobs running now.
    busy: Vec<Vec<u8>>,
    workers: usize,
    idle: usize,
    closed: bool,
}

impl Queue {
    /// The first job that may run now: its key is not running, and no job before it has
    /// the same key.
    fn take(&mut self) -> Option<Job> {
        let i = (0..self.jobs.len()).find(|&i| {
            let key = &self.jobs[i].key;
            !self.busy.contains(key) && !self.jobs.iter().take(i).any(|j| j.key == *key)
        })?;
        let job = self.jobs.remove(i)?;
        self.bytes -= job.bytes;
        self.busy.push(job.key.clone());
        Some(job)
    }
}

#[derive(Default)]
struct Shared {
    q: Mutex<Queue>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Queues `run` (about path `key`, carrying `bytes`), or says why it cannot be.
    pub fn submit(&self, key: Vec<u8>, bytes: usize, run: Box<dyn FnOnce() + Send>) -> Result<(), String> {
        let mut q = self.shared.lock();
        if q.closed {
            return Err("the connection is closing".into());
        }
        if q.jobs.len() >= MAX_QUEUED || q.bytes + bytes > MAX_QUEUED_BYTES {
            return Err(format!(
                "too many file calls in progress on this connection ({} waiting, {} bytes; at most {MAX_QUEUED} and {MAX_QUEUED_BYTES})",
                q.jobs.len(),
                q.bytes
            ));
        }
        q.jobs.push_back(Job { key, bytes, run });
        q.bytes += bytes;
        if q.jobs.len() > q.idle && q.workers < MAX_WORKERS {
            let shared = self.shared.clone();
            if thread::Builder::new().name("calls".into()).spawn(move || work(&shared)).is_ok() {
                q.workers += 1;
            } else if q.workers == 0 {
                let job = q.jobs.pop_back();
                q.bytes -= bytes;
                drop((q, job));
                return Err("cannot start a thread for the call".into());
            }
        }
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Drops the calls not yet begun; the workers end once their current call is done.
    pub fn close(&self) {
        let jobs = {
            let mut q = self.shared.lock();
            q.closed = true;
            q.bytes = 0;
            std::mem::take(&mut q.jobs)
        };
        self.shared.cv.notify_all();
        drop(jobs);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

fn work(shared: &Shared) {
    let mut q = shared.lock();
    loop {
        if q.closed {
            break;
        }
        if let Some(job) = q.take() {
            drop(q);
            (job.run)();
            q = shared.lock();
            if let Some(i) = q.busy.iter().position(|k| *k == job.key) {
                q.busy.swap_remove(i);
            }
            // A job held back behind this one's key may run now.
            shared.cv.notify_all();
            continue;
        }
        q.idle += 1;
        let (g, timeout) = shared.cv.wait_timeout(q, IDLE).unwrap_or_else(|e| e.into_inner());
        q = g;
        q.idle -= 1;
        if timeout.timed_out() && q.jobs.is_empty() {
            break;
        }
    }
    q.workers -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn same_key_runs_in_order_and_other_keys_are_not_held_up() {
        let pool = Pool::default();
        let (tx, rx) = mpsc::channel();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        // The first "a" job blocks until let go; the second "a" waits for it, "b" does not.
        let t = tx.clone();
        pool.submit(
            b"a".to_vec(),
            0,
            Box::new(move || {
                gate_rx.recv().unwrap();
                t.send("a1").unwrap();
            }),
        )
        .unwrap();
        let t = tx.clone();
        pool.submit(b"a".to_vec(), 0, Box::new(move || t.send("a2").unwrap())).unwrap();
        let t = tx.clone();
        pool.submit(b"b".to_vec(), 0, Box::new(move || t.send("b").unwrap())).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("b"));
        gate_tx.send(()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("a1"));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("a2"));
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_pool_drops() {
        let pool = Pool::default();
        assert!(pool.submit(b"x".to_vec(), MAX_QUEUED_BYTES + 1, Box::new(|| {})).is_err());
        pool.close();
        assert!(pool.submit(b"x".to_vec(), 0, Box::new(|| {})).is_err());
    }
}
