//! The private control channel between the agent and one shim: a seqpacket socket on the
//! shim's descriptor 3, one message a packet. The agent asks (kill the tree, forward a
//! signal, release); the shim tells (could not start, the command exited). Both ends are
//! the same binary, so this format is no protocol anyone else speaks.

use berth_wire::FailReason;

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
    Exited { code: i32, signal: i32 },
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
            [b'X', rest @ ..] if rest.len() == 8 => Some(FromShim::Exited {
                code: i32::from_le_bytes(rest[..4].try_into().ok()?),
                signal: i32::from_le_bytes(rest[4..].try_into().ok()?),
            }),
            _ => None,
        }
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
        assert_eq!(ToShim::decode(b"S12"), None);
        assert_eq!(FromShim::decode(b"X1234"), None);
        assert_eq!(FromShim::decode(b""), None);
    }
}
