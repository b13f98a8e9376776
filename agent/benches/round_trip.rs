//! The agent alone, measured: `echo hi` round trips (Start to Exited) over one
//! connection, against a bare spawn of the same command by this process. A measurement,
//! not a test (berth's own benchmark compares the agent path with the engine's exec).
//!
//!   cargo bench -p berth-agent --bench round_trip
//!   BERTH_AGENT_BIN=<a static build> cargo bench -p berth-agent --bench round_trip

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Agent;

fn percentiles(mut t: Vec<Duration>) -> (Duration, Duration, Duration) {
    t.sort();
    (t[t.len() / 2], t[t.len() * 9 / 10], t[t.len() - 1])
}

fn main() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut times = Vec::new();
    for id in 1..=1000 {
        let t = Instant::now();
        let o = c.run(id, &["echo", "hi"]);
        times.push(t.elapsed());
        assert_eq!(o.exited(), (0, 0));
    }
    let (p50, p90, max) = percentiles(times);
    println!("echo hi round trip through the agent: median {p50:?}, p90 {p90:?}, max {max:?}");
    // For scale: the same command spawned directly by this process, output read, reaped.
    let mut bare = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        let out = std::process::Command::new("echo").arg("hi").output().unwrap();
        bare.push(t.elapsed());
        assert_eq!(out.stdout, b"hi\n");
    }
    let (p50, p90, _) = percentiles(bare);
    println!("bare spawn of echo hi: median {p50:?}, p90 {p90:?}");
}
