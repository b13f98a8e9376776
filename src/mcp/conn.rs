//! One connection to `berthd` per tool call: closing it (dropping the `Conn`) kills any
//! exec still running on it, which is how a cancelled tool call stops its command.

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub struct Conn {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

/// What came back for a request: the result, or berth's error object.
pub type Reply = Result<Value, Value>;

/// A message from berthd.
pub enum Msg {
    /// A notification (no id).
    Note(Value),
    /// The response to our request.
    Reply(Reply),
    /// A response to some other request.
    Other,
}

impl Conn {
    pub async fn open(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path).await?;
        let (r, w) = s.into_split();
        Ok(Conn { reader: BufReader::new(r), writer: w, next_id: 1 })
    }

    /// Sends a request; returns its id.
    pub async fn send(&mut self, method: &str, params: Value) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        // A daemon that refuses the peer answers and closes before reading; the write then
        // fails, but its answer is still there to read, so a failed write is not fatal here.
        let _ = self.writer.write_all(format!("{req}\n").as_bytes()).await;
        Ok(id)
    }

    /// The next message for request `id`.
    pub async fn recv(&mut self, id: u64) -> std::io::Result<Msg> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "berthd closed the connection"));
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        if v.get("id").is_none() {
            return Ok(Msg::Note(v));
        }
        let ours = v.get("id") == Some(&json!(id));
        if let Some(err) = v.get("error") {
            // Ours, or a refusal of the whole connection (id null).
            if ours || v.get("id").is_none_or(Value::is_null) {
                return Ok(Msg::Reply(Err(err.clone())));
            }
        }
        if ours {
            return Ok(Msg::Reply(Ok(v.get("result").cloned().unwrap_or(Value::Null))));
        }
        Ok(Msg::Other)
    }

    /// One request, its notifications ignored.
    pub async fn call(&mut self, method: &str, params: Value) -> std::io::Result<Reply> {
        let id = self.send(method, params).await?;
        loop {
            if let Msg::Reply(r) = self.recv(id).await? {
                return Ok(r);
            }
        }
    }
}

/// Bytes carried as text, or as base64 when `enc` says so.
pub fn decode(v: &Value, data_key: &str, enc_key: &str) -> Vec<u8> {
    let text = v[data_key].as_str().unwrap_or("");
    if v[enc_key].as_str() == Some("base64") {
        base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default()
    } else {
        text.as_bytes().to_vec()
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
