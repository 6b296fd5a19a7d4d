//! Bencode as Entangled speaks it (its `encoding.Bencode`): integers `i<n>e`, byte strings
//! `<len>:<bytes>`, lists `l…e`, dictionaries `d…e` with keys sorted (integers before
//! strings, as Python 2 sorts them), and Entangled's non-standard floats `f<%f>e`.
//!
//! The decoder is strict where the original is lenient only in ways no peer relies on
//! (it accepts no signs or spaces inside a length), bounds nesting, and, like the
//! original, ignores bytes after the first complete value.

use std::cmp::Ordering;

/// Deepest nesting accepted; Entangled's own messages nest three levels.
pub const MAX_DEPTH: usize = 32;

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    /// Pairs in wire order (the encoder sorts them).
    Dict(Vec<(Value, Value)>),
    Float(f64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input ends inside a value")]
    Truncated,
    #[error("unexpected byte {byte:#04x} at offset {at}")]
    Unexpected { byte: u8, at: usize },
    #[error("bad number at offset {0}")]
    BadNumber(usize),
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl Value {
    pub fn bytes(b: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(b.into())
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The value under integer key `k` of a dictionary.
    pub fn get_int_key(&self, k: i64) -> Option<&Value> {
        match self {
            Value::Dict(d) => d
                .iter()
                .find(|(key, _)| *key == Value::Int(k))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python 2's order for the keys Entangled uses: numbers first, then strings.
    fn key_order(a: &Value, b: &Value) -> Ordering {
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Int(_) | Value::Float(_) => 0,
                Value::Dict(_) => 1,
                Value::List(_) => 2,
                Value::Bytes(_) => 3,
            }
        }
        match (a, b) {
            (Value::Int(x), Value::Int(y)) => x.cmp(y),
            (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
            _ => rank(a).cmp(&rank(b)),
        }
    }
}

/// Encodes `v` as the original's encoder does.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

fn encode_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
        Value::Bytes(b) => {
            out.extend_from_slice(format!("{}:", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Value::List(l) => {
            out.push(b'l');
            for item in l {
                encode_into(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(d) => {
            let mut pairs: Vec<&(Value, Value)> = d.iter().collect();
            pairs.sort_by(|a, b| Value::key_order(&a.0, &b.0));
            out.push(b'd');
            for (k, v) in pairs {
                encode_into(k, out);
                encode_into(v, out);
            }
            out.push(b'e');
        }
        // Python's `'f%fe'`: six decimals.
        Value::Float(f) => out.extend_from_slice(format!("f{f:.6}e").as_bytes()),
    }
}

/// Decodes the first value in `data`; what follows it is ignored, as the original does.
pub fn decode(data: &[u8]) -> Result<Value, DecodeError> {
    let mut d = Decoder { data, pos: 0 };
    d.value(0)
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.data
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    /// The bytes up to (not including) the next `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&[u8], DecodeError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == end)
            .ok_or(DecodeError::Truncated)?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let start = self.pos;
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let digits = self.until(b'e')?;
                let s = std::str::from_utf8(digits).map_err(|_| DecodeError::BadNumber(start))?;
                let ok = !s.is_empty()
                    && s.strip_prefix('-')
                        .unwrap_or(s)
                        .bytes()
                        .all(|b| b.is_ascii_digit());
                if !ok {
                    return Err(DecodeError::BadNumber(start));
                }
                s.parse()
                    .map(Value::Int)
                    .map_err(|_| DecodeError::BadNumber(start))
            }
            b'f' => {
                self.pos += 1;
                let digits = self.until(b'e')?;
                let s = std::str::from_utf8(digits).map_err(|_| DecodeError::BadNumber(start))?;
                let ok = !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
                match s.parse::<f64>() {
                    Ok(f) if ok && f.is_finite() => Ok(Value::Float(f)),
                    _ => Err(DecodeError::BadNumber(start)),
                }
            }
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut pairs = Vec::new();
                while self.peek()? != b'e' {
                    let k = self.value(depth + 1)?;
                    let v = self.value(depth + 1)?;
                    pairs.push((k, v));
                }
                self.pos += 1;
                Ok(Value::Dict(pairs))
            }
            b'0'..=b'9' => {
                let digits = self.until(b':')?;
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(DecodeError::BadNumber(start));
                }
                let len: usize = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(DecodeError::BadNumber(start))?;
                let end = self
                    .pos
                    .checked_add(len)
                    .filter(|&e| e <= self.data.len())
                    .ok_or(DecodeError::Truncated)?;
                let b = self.data[self.pos..end].to_vec();
                self.pos = end;
                Ok(Value::Bytes(b))
            }
            byte => Err(DecodeError::Unexpected { byte, at: start }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_keys() {
        let v = Value::Dict(vec![
            (Value::bytes("b"), Value::Int(-3)),
            (
                Value::Int(4),
                Value::List(vec![Value::bytes(""), Value::Int(0)]),
            ),
            (Value::Int(0), Value::bytes("x")),
        ]);
        let e = encode(&v);
        assert_eq!(e, b"di0e1:xi4el0:i0ee1:bi-3ee");
        let back = decode(&e).unwrap();
        assert_eq!(encode(&back), e);
    }

    #[test]
    fn floats_as_python_formats_them() {
        assert_eq!(encode(&Value::Float(1.5)), b"f1.500000e");
        assert_eq!(decode(b"f2.250000e").unwrap(), Value::Float(2.25));
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &b""[..],
            b"i12",
            b"i1x2e",
            b"ie",
            b"5:abc",
            b"l",
            b"d1:a",
            b"x",
            b"99999999999999999999999:a",
            b"i99999999999999999999e",
            b"fnane",
            b"finfe",
            b"-1:a",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bounds_nesting() {
        let deep = [vec![b'l'; 10_000], vec![b'e'; 10_000]].concat();
        assert_eq!(decode(&deep), Err(DecodeError::TooDeep));
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn ignores_trailing_bytes_as_the_original() {
        assert_eq!(decode(b"i7etrailing").unwrap(), Value::Int(7));
    }
}
