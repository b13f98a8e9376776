//! One connection to `berthd` with many requests in flight: each call gets its own id,
//! responses are matched by id whatever their order, and notifications that name a
//! request (`process.output`, `exec.output`) go to that request's caller. `cp` and
//! `logs --process --follow` use it; single-request commands use `Conn`.
//!
//! Bounded: at most `max_in_flight` requests are out at once (the daemon allows 64 per
//! connection), each holding its own request line until it is written and its response
//! line until its caller takes it. The reader only finds the id (one scan of the line);
//! the caller parses the result, so big results are decoded on the caller's task.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::{Deserialize, DeserializeOwned, IgnoredAny};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Why a call did not return a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The daemon answered with an error object.
    Rpc { kind: String, message: String },
    /// The connection failed or the answer made no sense.
    Conn(String),
}

impl CallError {
    pub fn kind(&self) -> Option<&str> {
        match self {
            CallError::Rpc { kind, .. } => Some(kind),
            CallError::Conn(_) => None,
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallError::Rpc { message, .. } => message.clone(),
            CallError::Conn(m) => format!("connection to berthd failed: {m}"),
        }
    }

    fn from_object(err: &Value) -> CallError {
        CallError::Rpc {
            kind: err["data"]["kind"].as_str().unwrap_or("internal").to_string(),
            message: err["message"].as_str().unwrap_or("unknown error").to_string(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// What the reader hands a streaming call: its notifications' lines, then its response.
pub enum Event {
    Note(String),
    Done(Result<String, CallError>),
}

enum Waiter {
    Once(oneshot::Sender<Result<String, CallError>>),
    Stream(mpsc::Sender<Event>),
}

struct Inner {
    lines: mpsc::UnboundedSender<String>,
    waiters: Mutex<Option<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
    permits: Semaphore,
}

impl Inner {
    /// Registers `w` under a fresh id; `None` once the connection is gone.
    fn register(&self, w: Waiter) -> Result<u64, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.waiters.lock().unwrap().as_mut() {
            Some(map) => {
                map.insert(id, w);
                Ok(id)
            }
            None => Err(closed()),
        }
    }

    fn take(&self, id: u64) -> Option<Waiter> {
        self.waiters.lock().unwrap().as_mut().and_then(|m| m.remove(&id))
    }

    /// Ends every call still waiting, now and later.
    fn fail_all(&self, err: CallError) {
        let map = self.waiters.lock().unwrap().take();
        for (_, w) in map.into_iter().flatten() {
            match w {
                Waiter::Once(tx) => drop(tx.send(Err(err.clone()))),
                Waiter::Stream(tx) => drop(tx.try_send(Event::Done(Err(err.clone())))),
            }
        }
    }
}

fn closed() -> CallError {
    CallError::Conn("berthd closed the connection".into())
}

/// A cheap handle; clones share the connection.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

/// The part of an incoming line the reader looks at.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Option<Value>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    params: Option<NoteParams>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    result: Option<IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct NoteParams {
    #[serde(default)]
    id: Option<Value>,
}

impl Mux {
    /// Connects; at most `max_in_flight` requests will be out at once.
    pub async fn open(path: &Path, max_in_flight: usize) -> std::io::Result<Mux> {
        let (r, mut w) = UnixStream::connect(path).await?.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let inner = Arc::new(Inner {
            lines: tx,
            waiters: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            permits: Semaphore::new(max_in_flight.max(1)),
        });
        let for_writer = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if let Err(e) = w.write_all(line.as_bytes()).await {
                    if let Some(inner) = for_writer.upgrade() {
                        inner.fail_all(CallError::Conn(format!("writing to berthd: {e}")));
                    }
                    return;
                }
            }
        });
        let for_reader = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut reader = BufReader::with_capacity(1 << 20, r);
            loop {
                let mut line = String::new();
                let end = match reader.read_line(&mut line).await {
                    Ok(0) => Some(closed()),
                    Ok(_) => None,
                    Err(e) => Some(CallError::Conn(format!("reading from berthd: {e}"))),
                };
                let Some(inner) = for_reader.upgrade() else { return };
                if let Some(err) = end {
                    inner.fail_all(err);
                    return;
                }
                if let Err(err) = route(&inner, line).await {
                    inner.fail_all(err);
                    return;
                }
            }
        });
        Ok(Mux { inner })
    }

    /// Sends the request line `build(id)` (which must end in `\n`) and returns the
    /// response line. For requests whose line is built by hand (large data).
    pub async fn call_line(&self, build: impl FnOnce(u64) -> String) -> Result<String, CallError> {
        let _permit = self.inner.permits.acquire().await.map_err(|_| closed())?;
        let (tx, rx) = oneshot::channel();
        let id = self.inner.register(Waiter::Once(tx))?;
        if self.inner.lines.send(build(id)).is_err() {
            self.inner.take(id);
            return Err(closed());
        }
        rx.await.map_err(|_| closed())?
    }

    /// One request; the response line.
    pub async fn call_raw(&self, method: &str, params: &Value) -> Result<String, CallError> {
        self.call_line(|id| request_line(id, method, params)).await
    }

    /// One request; its result parsed as `T`.
    pub async fn call<T: DeserializeOwned>(&self, method: &str, params: &Value) -> Result<T, CallError> {
        let line = self.call_raw(method, params).await?;
        parse_result(&line)
    }

    /// A request whose notifications are wanted: they come on the returned channel as
    /// `Event::Note` lines, then its `Event::Done`.
    pub async fn call_streaming(&self, method: &str, params: &Value) -> Result<mpsc::Receiver<Event>, CallError> {
        let (tx, rx) = mpsc::channel(64);
        let id = self.inner.register(Waiter::Stream(tx))?;
        if self.inner.lines.send(request_line(id, method, params)).is_err() {
            self.inner.take(id);
            return Err(closed());
        }
        Ok(rx)
    }
}

/// Hands one line to its waiter.
async fn route(inner: &Inner, line: String) -> Result<(), CallError> {
    let env: Envelope =
        serde_json::from_str(&line).map_err(|e| CallError::Conn(format!("bad JSON from berthd: {e}")))?;
    if env.method.is_some() {
        // A notification: for the request it names, if that request wants them.
        let Some(id) = env.params.and_then(|p| p.id).and_then(|v| v.as_u64()) else { return Ok(()) };
        let tx = match inner.waiters.lock().unwrap().as_ref().and_then(|m| m.get(&id)) {
            Some(Waiter::Stream(tx)) => tx.clone(),
            _ => return Ok(()),
        };
        // Waiting here holds back everything after it on the connection: what bounds
        // memory when the caller (a terminal, a pipe) is slower than the daemon.
        let _ = tx.send(Event::Note(line)).await;
        return Ok(());
    }
    match env.id.as_ref().and_then(Value::as_u64) {
        Some(id) => match inner.take(id) {
            Some(Waiter::Once(tx)) => drop(tx.send(Ok(line))),
            Some(Waiter::Stream(tx)) => drop(tx.send(Event::Done(Ok(line))).await),
            None => {}
        },
        // No id of ours: the daemon refused the whole connection (id null).
        None => {
            if let Some(err) = env.error.as_ref() {
                return Err(CallError::from_object(err));
            }
        }
    }
    Ok(())
}

/// `{"jsonrpc":"2.0","id":ID,"method":..,"params":..}\n`.
pub fn request_line(id: u64, method: &str, params: &Value) -> String {
    let mut s = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
    s.push('\n');
    s
}

#[derive(serde::Deserialize)]
struct Response<T> {
    #[serde(default = "none")]
    result: Option<T>,
    #[serde(default)]
    error: Option<Value>,
}

fn none<T>() -> Option<T> {
    None
}

/// A response line's result as `T`, or its error. Borrows from `line` where `T` does.
pub fn parse_result<'a, T: Deserialize<'a>>(line: &'a str) -> Result<T, CallError> {
    let r: Response<T> =
        serde_json::from_str(line).map_err(|e| CallError::Conn(format!("unexpected answer from berthd ({e})")))?;
    if let Some(err) = r.error {
        return Err(CallError::from_object(&err));
    }
    r.result.ok_or_else(|| CallError::Conn("an answer from berthd without a result".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_errors_parse_and_borrow() {
        #[derive(serde::Deserialize)]
        struct R<'a> {
            #[serde(borrow)]
            data: std::borrow::Cow<'a, str>,
        }
        let line = r#"{"jsonrpc":"2.0","id":3,"result":{"data":"abc"}}"#;
        let r: R = parse_result(line).unwrap();
        assert!(matches!(r.data, std::borrow::Cow::Borrowed("abc")));
        let line =
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32004,"message":"no such file","data":{"kind":"not_found"}}}"#;
        let e = parse_result::<Value>(line).unwrap_err();
        assert_eq!(e, CallError::Rpc { kind: "not_found".into(), message: "no such file".into() });
        // `{}` and `[]` are results too.
        assert_eq!(parse_result::<Value>(r#"{"id":1,"result":{}}"#).unwrap(), serde_json::json!({}));
    }

    #[tokio::test]
    async fn responses_in_any_order_reach_their_callers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // A server that answers three requests in reverse order, with a notification
        // for the first in between.
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut got = Vec::new();
            for _ in 0..3 {
                let v: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
                got.push(v);
            }
            for v in got.iter().rev() {
                let id = &v["id"];
                if v["method"] == "stream" {
                    let note = serde_json::json!({"jsonrpc": "2.0", "method": "process.output",
                        "params": {"id": id, "stream": "stdout", "data": "hi"}});
                    w.write_all(format!("{note}\n").as_bytes()).await.unwrap();
                }
                let resp = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": v["params"]["n"]});
                w.write_all(format!("{resp}\n").as_bytes()).await.unwrap();
            }
        });
        let mux = Mux::open(&path, 8).await.unwrap();
        let mut stream = mux.call_streaming("stream", &serde_json::json!({"n": 0})).await.unwrap();
        let (pa, pb) = (serde_json::json!({"n": 1}), serde_json::json!({"n": 2}));
        let a = mux.call::<u64>("m", &pa);
        let b = mux.call::<u64>("m", &pb);
        let (a, b) = tokio::join!(a, b);
        assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
        match stream.recv().await.unwrap() {
            Event::Note(l) => assert!(l.contains("\"hi\"")),
            Event::Done(_) => panic!("the notification comes first"),
        }
        match stream.recv().await.unwrap() {
            Event::Done(Ok(l)) => assert_eq!(parse_result::<u64>(&l).unwrap(), 0),
            _ => panic!("then the response"),
        }
        server.await.unwrap();
        // The server is gone: calls fail, they do not hang.
        let e = mux.call::<u64>("m", &serde_json::json!({})).await.unwrap_err();
        assert!(matches!(e, CallError::Conn(_)), "{e:?}");
    }
}
