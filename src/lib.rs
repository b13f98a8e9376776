//! berth: a supervisor daemon that gives AI-agent hosts isolated, crash-resilient Docker
//! containers, one per project, driven over a local Unix socket.
//!
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod actors;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod files;
pub mod mcp;
pub mod model;
pub mod runtime;
pub mod snapshot;
pub mod store;
pub mod workspace;
