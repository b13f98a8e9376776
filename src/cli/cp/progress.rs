//! Progress of a copy on stderr: only when stderr is a terminal, not `-q`, and the
//! transfer is over `THRESHOLD` (as soon as the total is known to be, or once that much
//! has moved when it is not known). One line, redrawn at most 5 times a second.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const THRESHOLD: u64 = 4 << 20;
const EVERY: Duration = Duration::from_millis(200);

pub struct Progress {
    enabled: bool,
    total: AtomicU64,
    known: AtomicBool,
    done: AtomicU64,
    start: Instant,
    last: Mutex<Option<Instant>>,
    drawn: AtomicBool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
            total: AtomicU64::new(0),
            known: AtomicBool::new(false),
            done: AtomicU64::new(0),
            start: Instant::now(),
            last: Mutex::new(None),
            drawn: AtomicBool::new(false),
        }
    }

    /// The transfer's size, when it is known before it starts.
    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if !self.enabled {
            return;
        }
        let known = self.known.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        if (known && total <= THRESHOLD) || (!known && done <= THRESHOLD) {
            return;
        }
        let mut last = self.last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.draw(done, known.then_some(total));
    }

    fn draw(&self, done: u64, total: Option<u64>) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = human((done as f64 / secs) as u64);
        let line = match total {
            Some(t) if t > 0 => {
                format!("copied {} of {} ({}%), {rate}/s", human(done), human(t), done.min(t) * 100 / t)
            }
            _ => format!("copied {}, {rate}/s", human(done)),
        };
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[Kberth: {line}");
        let _ = e.flush();
        self.drawn.store(true, Ordering::Relaxed);
    }

    /// Clears the line before something else is said on stderr.
    pub fn interrupt(&self) {
        if self.drawn.swap(false, Ordering::Relaxed) {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }

    /// The last line, kept, when any was drawn.
    pub fn finish(&self) {
        if self.drawn.load(Ordering::Relaxed) {
            let done = self.done.load(Ordering::Relaxed);
            let known = self.known.load(Ordering::Relaxed);
            self.draw(done, known.then(|| self.total.load(Ordering::Relaxed)));
            eprintln!();
        }
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `200.0 MiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(200 << 20), "200.0 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
