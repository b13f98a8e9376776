//! The control channel: protocol types and decoding (`protocol.rs`), what each request
//! does (`handler.rs`) and the Unix-socket server (`server.rs`).

pub mod handler;
pub mod protocol;
pub mod server;
