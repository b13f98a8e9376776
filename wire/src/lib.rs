//! The berth agent protocol: its frames and their codec, in one place, shared by berthd
//! and berth-agent so that the two can never disagree about a frame.
//!
//! A frame is `len: u32 BE | kind: u8 | id: u32 BE | payload`, where `len` counts the
//! bytes after itself. `len` is checked against `MAX_FRAME` before anything is
//! allocated. Decoding any bytes yields a frame, "need more", or an error — never a
//! panic (a fuzz target checks this). Both sides send `Hello` first and refuse a
//! version they do not speak. The codec knows nothing of the byte stream under it: the
//! sans-io `Decoder` is fed bytes from a Unix socket today and could be fed from any
//! other transport.
//!
//! Flow: berthd sends `Start` (id chosen by berthd, unique per connection), then maybe
//! `Stdin`/`StdinEnd`; the agent answers with `Output` frames and finally one `Exited` or
//! `Failed`. The agent keeps at most `WINDOW` bytes of a command's output unacknowledged;
//! berthd sends `Ack` as it consumes output, so a slow reader holds the command back
//! (backpressure) without holding back the other commands on the connection. `Kill`
//! kills the command's whole tree. A closed connection kills every command started on it.
//!
//! Details both ends rely on: ids are chosen by berthd and never reused on a connection;
//! an empty `Start.workdir` means the agent's own working directory; `Stdin`/`StdinEnd`
//! are sent only for a command started with `stdin: true` (stdin has no window of its
//! own: berthd bounds it, by `server.max_line`); `Ack`, `Stdin` or `Kill` that arrive
//! after a command ended are ignored; `Output` and `Stdin` carry at most `MAX_CHUNK`
//! bytes (a larger one is a malformed frame).
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Write};

/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// The largest `len` a frame may declare (kind, id and payload).
pub const MAX_FRAME: usize = (1 << 20) + 64;
/// The largest data an `Output` or `Stdin` frame carries.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Unacknowledged output bytes the agent allows one command before it stops reading it.
pub const WINDOW: u32 = 512 * 1024;

const HEADER: usize = 4 + 1 + 4;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why a command could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// No such program (exit 127, as shells say).
    NotFound,
    /// Not executable (exit 126).
    NotExecutable,
    /// The working directory does not exist or cannot be entered.
    BadWorkdir,
    Other,
}

/// A command to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub id: u32,
    pub argv: Vec<Vec<u8>>,
    /// Variables set over the agent's own environment (the container's).
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    pub workdir: Vec<u8>,
    /// Whether `Stdin` frames follow; without, the command's stdin is empty.
    pub stdin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame each way: the version spoken and the sender's pid (in its own pid
    /// namespace).
    Hello {
        version: u16,
        pid: u32,
    },
    Start(Start),
    Stdin {
        id: u32,
        data: Vec<u8>,
    },
    StdinEnd {
        id: u32,
    },
    Output {
        id: u32,
        stream: Stream,
        data: Vec<u8>,
    },
    Ack {
        id: u32,
        bytes: u32,
    },
    /// The command ended: its exit code, or the signal that ended it (`signal > 0`).
    Exited {
        id: u32,
        code: i32,
        signal: i32,
    },
    Failed {
        id: u32,
        reason: FailReason,
        message: String,
    },
    /// Kill the command and every process it started.
    Kill {
        id: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// A protocol error; the sender closes the connection after it.
    Error {
        message: String,
    },
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const START: u8 = 2;
    pub const STDIN: u8 = 3;
    pub const STDIN_END: u8 = 4;
    pub const OUTPUT: u8 = 5;
    pub const ACK: u8 = 6;
    pub const EXITED: u8 = 7;
    pub const FAILED: u8 = 8;
    pub const KILL: u8 = 9;
    pub const PING: u8 = 10;
    pub const PONG: u8 = 11;
    pub const ERROR: u8 = 12;
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    TooLarge(usize),
    TooShort(usize),
    UnknownKind(u8),
    /// The payload ended before a field, or had bytes left over, or a field was invalid.
    Malformed {
        kind: u8,
        why: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge(n) => write!(f, "frame of {n} bytes is larger than {MAX_FRAME}"),
            WireError::TooShort(n) => write!(f, "frame of {n} bytes is shorter than its header"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            WireError::Malformed { kind, why } => write!(f, "malformed frame of kind {kind}: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let (k, id) = self.kind_and_id();
        out.push(k);
        out.extend_from_slice(&id.to_be_bytes());
        let mut w = Writer(out);
        match self {
            Frame::Hello { version, pid } => {
                w.u16(*version);
                w.u32(*pid);
            }
            Frame::Start(s) => {
                w.u32(s.argv.len() as u32);
                for a in &s.argv {
                    w.bytes(a);
                }
                w.u32(s.env.len() as u32);
                for (k, v) in &s.env {
                    w.bytes(k);
                    w.bytes(v);
                }
                w.bytes(&s.workdir);
                w.u8(s.stdin as u8);
            }
            Frame::Stdin { data, .. } => w.bytes(data),
            Frame::Output { stream, data, .. } => {
                w.u8(match stream {
                    Stream::Stdout => 1,
                    Stream::Stderr => 2,
                });
                w.bytes(data);
            }
            Frame::Ack { bytes, .. } => w.u32(*bytes),
            Frame::Exited { code, signal, .. } => {
                w.u32(*code as u32);
                w.u32(*signal as u32);
            }
            Frame::Failed { reason, message, .. } => {
                w.u8(match reason {
                    FailReason::NotFound => 1,
                    FailReason::NotExecutable => 2,
                    FailReason::BadWorkdir => 3,
                    FailReason::Other => 4,
                });
                w.bytes(message.as_bytes());
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => w.u64(*nonce),
            Frame::Error { message } => w.bytes(message.as_bytes()),
            Frame::StdinEnd { .. } | Frame::Kill { .. } => {}
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    fn kind_and_id(&self) -> (u8, u32) {
        match self {
            Frame::Hello { .. } => (kind::HELLO, 0),
            Frame::Start(s) => (kind::START, s.id),
            Frame::Stdin { id, .. } => (kind::STDIN, *id),
            Frame::StdinEnd { id } => (kind::STDIN_END, *id),
            Frame::Output { id, .. } => (kind::OUTPUT, *id),
            Frame::Ack { id, .. } => (kind::ACK, *id),
            Frame::Exited { id, .. } => (kind::EXITED, *id),
            Frame::Failed { id, .. } => (kind::FAILED, *id),
            Frame::Kill { id } => (kind::KILL, *id),
            Frame::Ping { .. } => (kind::PING, 0),
            Frame::Pong { .. } => (kind::PONG, 0),
            Frame::Error { .. } => (kind::ERROR, 0),
        }
    }

    /// The command this frame is about, if any.
    pub fn id(&self) -> Option<u32> {
        match self {
            Frame::Hello { .. } | Frame::Ping { .. } | Frame::Pong { .. } | Frame::Error { .. } => None,
            other => Some(other.kind_and_id().1),
        }
    }
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the frame and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    if len < HEADER - 4 {
        return Err(WireError::TooShort(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let k = buf[4];
    let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if matches!(k, kind::HELLO | kind::PING | kind::PONG | kind::ERROR) && id != 0 {
        // Frames about no command carry id 0, so every frame has one encoding.
        return Err(WireError::Malformed { kind: k, why: "a frame about no command must carry id 0" });
    }
    let mut r = Reader { buf: &buf[HEADER..4 + len], kind: k };
    let frame = match k {
        kind::HELLO => Frame::Hello { version: r.u16()?, pid: r.u32()? },
        kind::START => {
            let n = r.count(4)?;
            let mut argv = Vec::with_capacity(n);
            for _ in 0..n {
                argv.push(r.bytes()?);
            }
            let n = r.count(8)?;
            let mut env = Vec::with_capacity(n);
            for _ in 0..n {
                env.push((r.bytes()?, r.bytes()?));
            }
            let workdir = r.bytes()?;
            let stdin = r.bool()?;
            Frame::Start(Start { id, argv, env, workdir, stdin })
        }
        kind::STDIN => Frame::Stdin { id, data: r.chunk()? },
        kind::STDIN_END => Frame::StdinEnd { id },
        kind::OUTPUT => {
            let stream = match r.u8()? {
                1 => Stream::Stdout,
                2 => Stream::Stderr,
                _ => return Err(WireError::Malformed { kind: k, why: "unknown stream" }),
            };
            Frame::Output { id, stream, data: r.chunk()? }
        }
        kind::ACK => Frame::Ack { id, bytes: r.u32()? },
        kind::EXITED => Frame::Exited { id, code: r.u32()? as i32, signal: r.u32()? as i32 },
        kind::FAILED => {
            let reason = match r.u8()? {
                1 => FailReason::NotFound,
                2 => FailReason::NotExecutable,
                3 => FailReason::BadWorkdir,
                4 => FailReason::Other,
                _ => return Err(WireError::Malformed { kind: k, why: "unknown failure reason" }),
            };
            Frame::Failed { id, reason, message: r.string()? }
        }
        kind::KILL => Frame::Kill { id },
        kind::PING => Frame::Ping { nonce: r.u64()? },
        kind::PONG => Frame::Pong { nonce: r.u64()? },
        kind::ERROR => Frame::Error { message: r.string()? },
        other => return Err(WireError::UnknownKind(other)),
    };
    if !r.buf.is_empty() {
        return Err(WireError::Malformed { kind: k, why: "bytes left over after the last field" });
    }
    Ok(Some((frame, 4 + len)))
}

/// Sans-io decoding: feed bytes as they arrive, take frames as they complete.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the
    /// stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        match decode(&self.buf[self.start..])? {
            None => {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(None)
            }
            Some((f, used)) => {
                self.start += used;
                Ok(Some(f))
            }
        }
    }

    /// Bytes received but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Reads one frame from a blocking reader; `Ok(None)` on a clean end of stream between
/// frames.
pub fn read_frame<R: Read>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len).into());
    }
    let mut buf = vec![0u8; 4 + len];
    buf[..4].copy_from_slice(&head);
    r.read_exact(&mut buf[4..])?;
    match decode(&buf)? {
        Some((f, _)) => Ok(Some(f)),
        None => Err(WireError::TooShort(len).into()),
    }
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: Write>(w: &mut W, f: &Frame) -> io::Result<()> {
    w.write_all(&f.to_bytes())
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed { kind: self.kind, why: "payload ends inside a field" });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed { kind: self.kind, why: "boolean not 0 or 1" }),
        }
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// Bytes of an `Output` or `Stdin` frame: at most `MAX_CHUNK`.
    fn chunk(&mut self) -> Result<Vec<u8>, WireError> {
        let b = self.bytes()?;
        if b.len() > MAX_CHUNK {
            return Err(WireError::Malformed { kind: self.kind, why: "data longer than MAX_CHUNK" });
        }
        Ok(b)
    }
    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?).map_err(|_| WireError::Malformed { kind: self.kind, why: "text not UTF-8" })
    }
    /// A list length, bounded by what the payload could hold (`min` bytes an element),
    /// so a lying count never makes a large allocation.
    fn count(&mut self, min: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / min.max(1) {
            return Err(WireError::Malformed { kind: self.kind, why: "list longer than its payload" });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Hello { version: VERSION, pid: 1 },
            Frame::Start(Start {
                id: 7,
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo \xff".to_vec()],
                env: vec![(b"A".to_vec(), b"1".to_vec()), (b"EMPTY".to_vec(), Vec::new())],
                workdir: b"/workspace".to_vec(),
                stdin: true,
            }),
            Frame::Stdin { id: 7, data: vec![0, 1, 2, 255] },
            Frame::StdinEnd { id: 7 },
            Frame::Output { id: 7, stream: Stream::Stderr, data: b"oops\n".to_vec() },
            Frame::Ack { id: 7, bytes: 4096 },
            Frame::Exited { id: 7, code: 0, signal: 9 },
            Frame::Exited { id: 8, code: -1, signal: 0 },
            Frame::Failed { id: 9, reason: FailReason::NotExecutable, message: "permission denied".into() },
            Frame::Kill { id: 7 },
            Frame::Ping { nonce: u64::MAX },
            Frame::Pong { nonce: 3 },
            Frame::Error { message: "version 9 is not spoken here".into() },
        ]
    }

    #[test]
    fn every_frame_round_trips_alone_and_in_a_stream() {
        let mut all = Vec::new();
        for f in every_kind() {
            let b = f.to_bytes();
            assert_eq!(decode(&b).unwrap(), Some((f.clone(), b.len())), "{f:?}");
            all.extend_from_slice(&b);
        }
        // Fed one byte at a time, the decoder yields the same frames in order.
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for byte in &all {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, every_kind());
        assert_eq!(d.pending(), 0);
        // And through the blocking helpers.
        let mut r = &all[..];
        for f in every_kind() {
            assert_eq!(read_frame(&mut r).unwrap(), Some(f));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics_or_allocations() {
        // A declared length past the maximum is refused before anything is read.
        let huge = [0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(decode(&huge), Err(WireError::TooLarge(_))));
        assert!(matches!(decode(&[0, 0, 0, 2, 1, 0]), Err(WireError::TooShort(2))));
        let mut unknown = Frame::Kill { id: 1 }.to_bytes();
        unknown[4] = 200;
        assert_eq!(decode(&unknown), Err(WireError::UnknownKind(200)));
        // The fuzzer's find: an id on a frame that is about no command.
        let mut odd = Frame::Error { message: String::new() }.to_bytes();
        odd[5..9].copy_from_slice(&0xff0a_f547u32.to_be_bytes());
        assert!(matches!(decode(&odd), Err(WireError::Malformed { .. })));
        // Data past MAX_CHUNK.
        let big = Frame::Output { id: 1, stream: Stream::Stdout, data: vec![0; MAX_CHUNK + 1] }.to_bytes();
        assert!(matches!(decode(&big), Err(WireError::Malformed { .. })));
        // A list count far beyond its payload.
        let mut lying =
            Frame::Start(Start { id: 1, argv: vec![], env: vec![], workdir: vec![], stdin: false }).to_bytes();
        lying[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&lying), Err(WireError::Malformed { .. })));
        // Every truncation of every frame is "need more", every corruption of its length
        // an error or another frame, never a panic.
        for f in every_kind() {
            let b = f.to_bytes();
            for cut in 0..b.len() {
                assert_eq!(decode(&b[..cut]), Ok(None), "{f:?} cut at {cut}");
            }
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x5a;
                let _ = decode(&c);
            }
        }
    }
}
