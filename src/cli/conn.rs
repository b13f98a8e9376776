//! One connection to `berthd`: send a request, print `exec.output` notifications as they
//! come, return the response. It knows the wire, not the commands.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub struct Conn {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Conn {
    pub async fn open(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path).await?;
        let (r, w) = s.into_split();
        Ok(Conn { reader: BufReader::new(r), writer: w })
    }

    /// Sends one request and waits for its response, printing `exec.output`
    /// notifications as they come when `stream`. `Ok(Err(error object))` for a protocol
    /// error.
    pub async fn call(&mut self, method: &str, params: Value, stream: bool) -> std::io::Result<Result<Value, Value>> {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        // A daemon that refuses the peer answers and closes before reading; the write then
        // fails, but its answer is still there to read.
        let sent = self.writer.write_all(format!("{req}\n").as_bytes()).await;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                sent?;
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "berthd closed the connection"));
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            if v.get("method").and_then(Value::as_str) == Some("exec.output") {
                if stream {
                    print_chunk(&v["params"]);
                }
                continue;
            }
            if let Some(err) = v.get("error") {
                // Ours, or a refusal of the whole connection (id null).
                if v.get("id") == Some(&json!(1)) || v.get("id").is_none_or(Value::is_null) {
                    return Ok(Err(err.clone()));
                }
            }
            if v.get("id") == Some(&json!(1)) {
                return Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null)));
            }
        }
    }
}

/// Output bytes from a result or notification: text, or base64 when `enc_key` says so.
pub fn decode_data(v: &Value, data_key: &str, enc_key: &str) -> Vec<u8> {
    let text = v[data_key].as_str().unwrap_or("");
    if v[enc_key].as_str() == Some("base64") {
        base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default()
    } else {
        text.as_bytes().to_vec()
    }
}

fn print_chunk(p: &Value) {
    let data = decode_data(p, "data", "encoding");
    if p["stream"].as_str() == Some("stderr") {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&data);
        let _ = e.flush();
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&data);
        let _ = o.flush();
    }
}
