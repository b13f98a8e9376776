//! The private control channel between the agent and one shim: a seqpacket socket on the
//! shim's descriptor 3. First the agent sends the command to run (`Launch`, with the
//! command's stdin, stdout and stderr attached) and the shim confirms it has it; after
//! that, one message a packet: the agent asks (kill the tree, forward a signal, release);
//! the shim tells (could not start, started with this pid, the command exited). Both ends are the same binary,
//! so this format is no protocol anyone else speaks.

use std::ffi::CString;
use std::io;
use std::os::fd::{OwnedFd, RawFd};

use berth_wire::FailReason;

use crate::sys;

/// The descriptor the shim finds its end of the channel on.
pub const SHIM_FD: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToShim {
    /// Freeze and kill every descendant, report the command's status, exit.
    Kill,
    /// Send this signal to every descendant.
    Signal(i32),
    /// The agent has sent `Exited`: exit, leaving whatever the command left behind alive.
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromShim {
    Failed(FailReason, String),
    /// The command is running, as this pid (sent before its `Exited`).
    Started {
        pid: i32,
    },
    Exited {
        code: i32,
        signal: i32,
    },
}

impl ToShim {
    pub fn encode(self) -> Vec<u8> {
        match self {
            ToShim::Kill => vec![b'K'],
            ToShim::Signal(s) => {
                let mut v = vec![b'S'];
                v.extend_from_slice(&s.to_le_bytes());
                v
            }
            ToShim::Release => vec![b'R'],
        }
    }

    pub fn decode(b: &[u8]) -> Option<ToShim> {
        match b {
            [b'K'] => Some(ToShim::Kill),
            [b'R'] => Some(ToShim::Release),
            [b'S', s @ ..] => Some(ToShim::Signal(i32::from_le_bytes(s.try_into().ok()?))),
            _ => None,
        }
    }
}

impl FromShim {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FromShim::Failed(reason, message) => {
                let r = match reason {
                    FailReason::NotFound => 1,
                    FailReason::NotExecutable => 2,
                    FailReason::BadWorkdir => 3,
                    FailReason::Other => 4,
                };
                let mut v = vec![b'F', r];
                // A packet is at most a few KiB of useful text.
                v.extend_from_slice(&message.as_bytes()[..floor_char_boundary(message, 2048)]);
                v
            }
            FromShim::Started { pid } => {
                let mut v = vec![b'P'];
                v.extend_from_slice(&pid.to_le_bytes());
                v
            }
            FromShim::Exited { code, signal } => {
                let mut v = vec![b'X'];
                v.extend_from_slice(&code.to_le_bytes());
                v.extend_from_slice(&signal.to_le_bytes());
                v
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<FromShim> {
        match b {
            [b'F', r, msg @ ..] => {
                let reason = match r {
                    1 => FailReason::NotFound,
                    2 => FailReason::NotExecutable,
                    3 => FailReason::BadWorkdir,
                    _ => FailReason::Other,
                };
                Some(FromShim::Failed(reason, String::from_utf8_lossy(msg).into_owned()))
            }
            [b'P', pid @ ..] => Some(FromShim::Started { pid: i32::from_le_bytes(pid.try_into().ok()?) }),
            [b'X', rest @ ..] if rest.len() == 8 => Some(FromShim::Exited {
                code: i32::from_le_bytes(rest[..4].try_into().ok()?),
                signal: i32::from_le_bytes(rest[4..].try_into().ok()?),
            }),
            _ => None,
        }
    }
}

/// The command a shim is to run, with the whole environment it is to run in (the shim
/// has none of its own worth keeping: an idle one may have been waiting a while).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub workdir: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
}

/// Payload packets are at most this long (a `Launch` may be over a MiB; a packet must
/// fit the socket's buffer).
const CHUNK: usize = 32 * 1024;

impl Launch {
    /// `argc`, then every string NUL-terminated: workdir, argv, env.
    fn encode(&self) -> Vec<u8> {
        let mut v = (self.argv.len() as u32).to_le_bytes().to_vec();
        for s in std::iter::once(&self.workdir).chain(&self.argv).chain(&self.env) {
            v.extend_from_slice(s.as_bytes_with_nul());
        }
        v
    }

    fn decode(b: &[u8]) -> Option<Launch> {
        let argc = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let mut strs = b[4..].strip_suffix(&[0])?.split(|&c| c == 0).map(|s| CString::new(s).ok());
        let workdir = strs.next()??;
        let argv = strs.by_ref().take(argc).collect::<Option<Vec<_>>>()?;
        let env = strs.collect::<Option<Vec<_>>>()?;
        (argv.len() == argc).then_some(Launch { workdir, argv, env })
    }

    /// Sends this launch and the command's descriptors 0–2, and waits until the shim
    /// has it (blocking): a header packet `L` + payload length carrying the descriptors,
    /// then the payload in chunks; the shim answers `A`. An error means the shim died
    /// without the command (so it never started): another shim may be given it.
    pub fn send(&self, ctl: RawFd, fds: [RawFd; 3]) -> io::Result<()> {
        let body = self.encode();
        let mut head = vec![b'L'];
        head.extend_from_slice(&(body.len() as u32).to_le_bytes());
        sys::send_fds(ctl, &head, &fds)?;
        body.chunks(CHUNK).try_for_each(|c| sys::send(ctl, c))?;
        let mut ack = [0u8; 1];
        match sys::recv(ctl, &mut ack)? {
            1 if ack == *b"A" => Ok(()),
            _ => Err(io::Error::other("the shim died before it took the command")),
        }
    }

    /// Waits for a launch (blocking) and tells the agent it has it; `None` if the agent
    /// is gone or sent nonsense.
    pub fn recv(ctl: RawFd) -> Option<(Launch, [OwnedFd; 3])> {
        let mut buf = vec![0u8; CHUNK];
        let (n, fds) = sys::recv_fds(ctl, &mut buf).ok()?;
        let len = match &buf[..n] {
            [b'L', l @ ..] => u32::from_le_bytes(l.try_into().ok()?) as usize,
            _ => return None,
        };
        let fds: [OwnedFd; 3] = fds.try_into().ok()?;
        let mut body = Vec::with_capacity(len);
        while body.len() < len {
            match sys::recv(ctl, &mut buf).ok()? {
                0 => return None,
                n => body.extend_from_slice(&buf[..n]),
            }
        }
        let launch = Launch::decode(&body)?;
        sys::send(ctl, b"A").ok()?;
        Some((launch, fds))
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [ToShim::Kill, ToShim::Release, ToShim::Signal(1), ToShim::Signal(28)] {
            assert_eq!(ToShim::decode(&m.encode()), Some(m));
        }
        for m in [
            FromShim::Exited { code: 255, signal: 0 },
            FromShim::Exited { code: 0, signal: 9 },
            FromShim::Started { pid: 4_194_304 },
            FromShim::Failed(FailReason::NotFound, "nope: no such file".into()),
            FromShim::Failed(FailReason::NotExecutable, String::new()),
            FromShim::Failed(FailReason::BadWorkdir, "é".repeat(3000)),
            FromShim::Failed(FailReason::Other, "x".into()),
        ] {
            let got = FromShim::decode(&m.encode()).unwrap();
            match (&m, &got) {
                (FromShim::Failed(r1, s1), FromShim::Failed(r2, s2)) => {
                    assert_eq!(r1, r2);
                    assert!(s1.starts_with(s2.as_str()) && s2.len() <= 2048);
                }
                _ => assert_eq!(got, m),
            }
        }
        let c = |s: &str| CString::new(s).unwrap();
        let l = Launch { workdir: c(""), argv: vec![c("ls"), c("")], env: vec![] };
        assert_eq!(Launch::decode(&l.encode()), Some(l));
        let l = Launch { workdir: c("/tmp"), argv: vec![c("sh")], env: vec![c("A=1"), c("B=")] };
        assert_eq!(Launch::decode(&l.encode()), Some(l));
        assert_eq!(Launch::decode(b"\x02\0\0\0/\0ls\0"), None);
        assert_eq!(ToShim::decode(b"S12"), None);
        assert_eq!(FromShim::decode(b"X1234"), None);
        assert_eq!(FromShim::decode(b"P12"), None);
        assert_eq!(FromShim::decode(b""), None);
    }

    #[test]
    fn a_large_launch_and_its_descriptors_cross_the_channel() {
        use std::os::fd::AsRawFd;
        let (agent, shim) = sys::seqpacket_pair().unwrap();
        let (r, w) = sys::pipe().unwrap();
        let big = CString::new(format!("BIG={}", "x".repeat(1 << 20))).unwrap();
        let l =
            Launch { workdir: CString::new("/").unwrap(), argv: vec![CString::new("true").unwrap()], env: vec![big] };
        let sent = l.clone();
        let t = std::thread::spawn(move || sent.send(agent.as_raw_fd(), [r.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()]));
        let (got, fds) = Launch::recv(shim.as_raw_fd()).unwrap();
        drop(shim);
        t.join().unwrap().unwrap();
        assert_eq!(got, l);
        assert_eq!(sys::write(fds[1].as_raw_fd(), b"hi").unwrap(), 2);
        let mut buf = [0u8; 2];
        assert_eq!(sys::read(fds[0].as_raw_fd(), &mut buf).unwrap(), 2);
    }
}
