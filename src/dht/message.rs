//! Entangled's RPC messages (its `msgformat.DefaultFormat` over bencode) and its datagram
//! splitting (`protocol.KademliaProtocol._send`).
//!
//! A message is a dictionary with integer keys: 0 the type (0 request, 1 response, 2 error),
//! 1 the 20-byte RPC id, 2 the sender's node id, 3 the method name (request), the result
//! (response) or the exception type (error), 4 the argument list (request) or the error
//! text (error). An encoded message longer than [`CHUNK`] bytes goes out in several
//! datagrams, each `00 | total (2 bytes, big-endian) | sequence (2) | RPC id (20) | 00 |
//! chunk`.
//!
//! An error's exception type is kept as an opaque string: it is only ever logged (the
//! original builds an exception object from it with `exec`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::encoding::{decode, encode, DecodeError, Value};
use super::Id;

/// Entangled's `udpDatagramMaxSize`.
pub const DATAGRAM_MAX: usize = 8192;
/// Header of a split datagram.
pub const SPLIT_HEADER: usize = 26;
/// Largest chunk of a message per datagram (`msgSizeLimit`).
pub const CHUNK: usize = DATAGRAM_MAX - SPLIT_HEADER;
/// Largest message accepted or sent, whole: a DHT value (64 KiB payload plus its block's
/// header lines) and the envelope fit with room to spare.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Most datagrams of one message.
pub const MAX_PARTS: usize = MAX_MESSAGE.div_ceil(CHUNK);

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        rpc_id: Id,
        node_id: Id,
        method: Vec<u8>,
        args: Vec<Value>,
    },
    Response {
        rpc_id: Id,
        node_id: Id,
        result: Value,
    },
    Error {
        rpc_id: Id,
        node_id: Id,
        kind: Vec<u8>,
        text: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("not a message dictionary")]
    NotADict,
    #[error("missing or malformed field {0}")]
    Field(i64),
    #[error("unknown message type {0}")]
    UnknownType(i64),
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
}

fn id_of(v: Option<&Value>, field: i64) -> Result<Id, MessageError> {
    v.and_then(Value::as_bytes)
        .and_then(|b| Id::try_from(b).ok())
        .ok_or(MessageError::Field(field))
}

impl Message {
    pub fn rpc_id(&self) -> &Id {
        match self {
            Message::Request { rpc_id, .. }
            | Message::Response { rpc_id, .. }
            | Message::Error { rpc_id, .. } => rpc_id,
        }
    }

    pub fn node_id(&self) -> &Id {
        match self {
            Message::Request { node_id, .. }
            | Message::Response { node_id, .. }
            | Message::Error { node_id, .. } => node_id,
        }
    }

    /// The message's bencoded form (unsplit).
    pub fn encode(&self) -> Vec<u8> {
        let head = |t: i64, rpc: &Id, node: &Id| {
            vec![
                (Value::Int(0), Value::Int(t)),
                (Value::Int(1), Value::bytes(rpc.to_vec())),
                (Value::Int(2), Value::bytes(node.to_vec())),
            ]
        };
        let d = match self {
            Message::Request {
                rpc_id,
                node_id,
                method,
                args,
            } => {
                let mut d = head(0, rpc_id, node_id);
                d.push((Value::Int(3), Value::bytes(method.clone())));
                d.push((Value::Int(4), Value::List(args.clone())));
                d
            }
            Message::Response {
                rpc_id,
                node_id,
                result,
            } => {
                let mut d = head(1, rpc_id, node_id);
                d.push((Value::Int(3), result.clone()));
                d
            }
            Message::Error {
                rpc_id,
                node_id,
                kind,
                text,
            } => {
                let mut d = head(2, rpc_id, node_id);
                d.push((Value::Int(3), Value::bytes(kind.clone())));
                d.push((Value::Int(4), Value::bytes(text.clone())));
                d
            }
        };
        encode(&Value::Dict(d))
    }

    /// Parses a whole (reassembled) message.
    pub fn decode(data: &[u8]) -> Result<Message, MessageError> {
        if data.len() > MAX_MESSAGE {
            return Err(MessageError::TooLarge(data.len()));
        }
        let v = decode(data)?;
        if !matches!(v, Value::Dict(_)) {
            return Err(MessageError::NotADict);
        }
        let t = v
            .get_int_key(0)
            .and_then(Value::as_int)
            .ok_or(MessageError::Field(0))?;
        let rpc_id = id_of(v.get_int_key(1), 1)?;
        let node_id = id_of(v.get_int_key(2), 2)?;
        let field = |k: i64| v.get_int_key(k).ok_or(MessageError::Field(k));
        let bytes = |k: i64| {
            field(k)?
                .as_bytes()
                .map(<[u8]>::to_vec)
                .ok_or(MessageError::Field(k))
        };
        Ok(match t {
            0 => Message::Request {
                rpc_id,
                node_id,
                method: bytes(3)?,
                args: field(4)?.as_list().ok_or(MessageError::Field(4))?.to_vec(),
            },
            1 => Message::Response {
                rpc_id,
                node_id,
                result: field(3)?.clone(),
            },
            2 => Message::Error {
                rpc_id,
                node_id,
                kind: bytes(3)?,
                text: bytes(4).unwrap_or_default(),
            },
            other => return Err(MessageError::UnknownType(other)),
        })
    }
}

/// The datagrams that carry `data` (an encoded message of RPC `rpc_id`).
pub fn split(data: &[u8], rpc_id: &Id) -> Vec<Vec<u8>> {
    if data.len() <= CHUNK {
        return vec![data.to_vec()];
    }
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let total = chunks.len() as u16;
    chunks
        .iter()
        .enumerate()
        .map(|(seq, chunk)| {
            let mut d = Vec::with_capacity(SPLIT_HEADER + chunk.len());
            d.push(0);
            d.extend_from_slice(&total.to_be_bytes());
            d.extend_from_slice(&(seq as u16).to_be_bytes());
            d.extend_from_slice(rpc_id);
            d.push(0);
            d.extend_from_slice(chunk);
            d
        })
        .collect()
}

/// A datagram's part of a split message: (total, sequence, RPC id, chunk).
pub fn split_part(datagram: &[u8]) -> Option<(usize, usize, Id, &[u8])> {
    if datagram.len() < SPLIT_HEADER || datagram[0] != 0 || datagram[25] != 0 {
        return None;
    }
    let total = u16::from_be_bytes([datagram[1], datagram[2]]) as usize;
    let seq = u16::from_be_bytes([datagram[3], datagram[4]]) as usize;
    let id = Id::try_from(&datagram[5..25]).ok()?;
    Some((total, seq, id, &datagram[SPLIT_HEADER..]))
}

/// Split messages being received, bounded in number, size and age.
#[derive(Debug)]
pub struct Reassembly {
    partial: HashMap<(SocketAddr, Id), Partial>,
    max_partial: usize,
    max_age: Duration,
}

#[derive(Debug)]
struct Partial {
    total: usize,
    parts: HashMap<usize, Vec<u8>>,
    bytes: usize,
    started: Instant,
}

/// What one datagram amounted to.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A whole message (a single datagram, or the last missing part).
    Whole(Vec<u8>),
    /// A part was kept; more are needed.
    Pending,
    /// Dropped: malformed, too large, or too many messages in progress.
    Dropped,
}

impl Reassembly {
    pub fn new(max_partial: usize, max_age: Duration) -> Reassembly {
        Reassembly {
            partial: HashMap::new(),
            max_partial,
            max_age,
        }
    }

    pub fn in_progress(&self) -> usize {
        self.partial.len()
    }

    pub fn receive(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Received {
        let Some((total, seq, id, chunk)) = split_part(datagram) else {
            return if datagram.len() > MAX_MESSAGE {
                Received::Dropped
            } else {
                Received::Whole(datagram.to_vec())
            };
        };
        if total == 0 || total > MAX_PARTS || seq >= total || chunk.len() > CHUNK {
            return Received::Dropped;
        }
        let max_age = self.max_age;
        self.partial
            .retain(|_, p| now.duration_since(p.started) < max_age);
        let key = (from, id);
        if !self.partial.contains_key(&key) && self.partial.len() >= self.max_partial {
            return Received::Dropped;
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            total,
            parts: HashMap::new(),
            bytes: 0,
            started: now,
        });
        if p.total != total {
            self.partial.remove(&key);
            return Received::Dropped;
        }
        if let Some(old) = p.parts.insert(seq, chunk.to_vec()) {
            p.bytes -= old.len();
        }
        p.bytes += chunk.len();
        if p.bytes > MAX_MESSAGE {
            self.partial.remove(&key);
            return Received::Dropped;
        }
        if p.parts.len() < p.total {
            return Received::Pending;
        }
        let Some(mut p) = self.partial.remove(&key) else {
            return Received::Dropped;
        };
        let mut whole = Vec::with_capacity(p.bytes);
        for i in 0..p.total {
            match p.parts.remove(&i) {
                Some(c) => whole.extend_from_slice(&c),
                None => return Received::Dropped,
            }
        }
        Received::Whole(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            Message::Request {
                rpc_id: [1; 20],
                node_id: [2; 20],
                method: b"findValue".to_vec(),
                args: vec![Value::bytes(vec![3; 20])],
            },
            Message::Response {
                rpc_id: [1; 20],
                node_id: [2; 20],
                result: Value::bytes("pong"),
            },
            Message::Error {
                rpc_id: [1; 20],
                node_id: [2; 20],
                kind: b"exceptions.TypeError".to_vec(),
                text: b"bad".to_vec(),
            },
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn split_and_reassemble_out_of_order() {
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let mut parts = split(&data, &[9; 20]);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= DATAGRAM_MAX));
        assert_eq!(&parts[1][..5], &[0, 0, 3, 0, 1]);
        parts.swap(0, 2);
        let mut r = Reassembly::new(4, Duration::from_secs(5));
        let now = Instant::now();
        assert_eq!(r.receive(addr(), &parts[0], now), Received::Pending);
        assert_eq!(r.receive(addr(), &parts[1], now), Received::Pending);
        assert_eq!(r.receive(addr(), &parts[2], now), Received::Whole(data));
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn reassembly_is_bounded() {
        let mut r = Reassembly::new(2, Duration::from_secs(5));
        let now = Instant::now();
        let part = |id: u8, total: u16| {
            let mut d = vec![0, (total >> 8) as u8, total as u8, 0, 0];
            d.extend_from_slice(&[id; 20]);
            d.push(0);
            d.extend_from_slice(b"x");
            d
        };
        assert_eq!(r.receive(addr(), &part(1, 2), now), Received::Pending);
        assert_eq!(r.receive(addr(), &part(2, 2), now), Received::Pending);
        assert_eq!(r.receive(addr(), &part(3, 2), now), Received::Dropped);
        assert_eq!(r.receive(addr(), &part(4, 60_000), now), Received::Dropped);
        // Old partial messages make room.
        let later = now + Duration::from_secs(6);
        assert_eq!(r.receive(addr(), &part(3, 2), later), Received::Pending);
        assert_eq!(r.in_progress(), 1);
    }
}
