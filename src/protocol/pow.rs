//! Proof of work (docs/protocol.md §8): the stock client's birthday-style generator and the
//! server's verifier.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

/// Proof-of-work requirements as (bits, nonces) (docs/protocol.md §7.1).
pub const POW_KEY: (u32, i64) = (24, 2);
pub const POW_CLAIM: (u32, i64) = POW_KEY;
pub const POW_DATA_SERVER: (u32, i64) = (8, 2);
pub const POW_DATA_DHT: (u32, i64) = (20, 2);
/// Message announcements need 8/2 in both modes (the DHT constants exist but are unused).
pub const POW_MESSAGE: (u32, i64) = (8, 2);
pub const POW_ACK_SERVER: (u32, i64) = (16, 2);
pub const POW_ACK_DHT: (u32, i64) = (20, 2);

/// Generates a proof for `data` exactly as the stock client does (§8.1), including its
/// stop-length quirk (`9·nmatches − 1` characters, so nmatches ≥ 10 yields fewer nonces).
/// Deterministic. `nbits` above 256 is treated as 256 (the original would raise).
pub fn generate(data: &[u8], nbits: u32, nmatches: u32) -> String {
    generate_parts(&[data], nbits, nmatches)
}

/// [`generate`] over the concatenation of `parts`, without copying them together.
pub fn generate_parts(parts: &[&[u8]], nbits: u32, nmatches: u32) -> String {
    let nbits = nbits.min(256) as usize;
    let nmatches = nmatches.max(2) as usize;
    let stop_len = 9 * nmatches - 1;
    let whole = nbits / 8;
    let extra = nbits % 8;
    let mask: u8 = if extra == 0 { 0 } else { 0xff << (8 - extra) };
    let mut lists: HashMap<[u8; 32], String> = HashMap::new();
    let mut nonce: u32 = 0;
    loop {
        let text = format!("{nonce:09x}");
        let d = digest_parts(text.as_bytes(), parts);
        // The first nbits bits; bytes past them are zero, so equal prefixes give equal keys.
        let mut prefix = [0u8; 32];
        prefix[..whole].copy_from_slice(&d[..whole]);
        if extra != 0 {
            prefix[whole] = d[whole] & mask;
        }
        match lists.entry(prefix) {
            Entry::Vacant(v) => {
                v.insert(text);
            }
            Entry::Occupied(mut o) => {
                let list = o.get_mut();
                list.push(',');
                list.push_str(&text);
                if list.len() >= stop_len {
                    return format!("bd,{list}");
                }
            }
        }
        nonce = nonce.wrapping_add(1);
    }
}

/// Scores `proof` against `data` exactly as the original server does (§8.2): returns
/// (bits on which every later nonce's digest agrees with the first's, number of nonces),
/// or (0, −1) without a `bd` token.
pub fn verify(data: &[u8], proof: &str) -> (u32, i64) {
    verify_parts(&[data], proof.as_bytes())
}

/// [`verify`] over the concatenation of `parts`, without copying them together.
pub fn verify_parts(parts: &[&[u8]], proof: &[u8]) -> (u32, i64) {
    let mut n: i64 = -1;
    let mut best: u32 = 256;
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut first = [0u8; 32];
    for token in proof.split(|&c| c == b',') {
        if !seen.insert(token) {
            continue; // repeated tokens count once
        }
        if token == b"bd" && n < 0 {
            n = 0;
        } else if n == 0 {
            first = digest_parts(token, parts);
            n = 1;
        } else if n >= 1 {
            let d = digest_parts(token, parts);
            best = best.min(agreeing_bits(&first, &d));
            n += 1;
        }
    }
    if n < 2 {
        best = 0;
    }
    (best, n)
}

/// True if `proof` over `parts` has at least `nbits` bits and `nmatches` nonces.
pub fn meets(parts: &[&[u8]], proof: &[u8], nbits: u32, nmatches: i64) -> bool {
    let (bits, n) = verify_parts(parts, proof);
    bits >= nbits && n >= nmatches
}

fn digest_parts(token: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(token);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Leading bits (from the MSB of byte 0) on which `a` and `b` agree.
fn agreeing_bits(a: &[u8; 32], b: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for (x, y) in a.iter().zip(b) {
        let diff = x ^ y;
        if diff != 0 {
            return bits + diff.leading_zeros();
        }
        bits += 8;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (PoW data, nbits, nmatches, generated proof, verify score)
    type Vector = (&'static [u8], u32, u32, &'static str, (u32, i64));

    #[test]
    fn generation_vectors() {
        let cases: [Vector; 5] = [
            (b"hello", 8, 2, "bd,000000005,00000000b", (8, 2)),
            (b"hello", 12, 3, "bd,000000079,0000000b3,0000000c1", (14, 3)),
            (
                b"2015-06-01T12:00:00Zhello world",
                16,
                2,
                "bd,00000006e,000000078",
                (16, 2),
            ),
            (b"abc", 0, 2, "bd,000000000,000000001", (0, 2)),
            (
                b"hello",
                8,
                10,
                "bd,00000005e,000000088,0000000f3,0000000f7,000000133,00000023b,000000276,\
                 0000002cf,0000002d8",
                (8, 9),
            ),
        ];
        for (data, nbits, nmatches, proof, score) in cases {
            assert_eq!(generate(data, nbits, nmatches), proof);
            assert_eq!(verify(data, proof), score, "{proof}");
        }
    }

    #[test]
    fn generate_parts_equals_concatenation() {
        let p = generate_parts(&[b"2015-06-01T12:00:00Z", b"hello world"], 16, 2);
        assert_eq!(p, "bd,00000006e,000000078");
        assert_eq!(
            verify_parts(&[b"2015-06-01T12:00:00Z", b"hello world"], p.as_bytes()),
            (16, 2)
        );
    }

    #[test]
    fn verification_only_vectors() {
        let cases: [(&str, (u32, i64)); 8] = [
            ("bd,000000005", (0, 1)),
            ("bd,000000005,000000005", (0, 1)),
            ("bd,000000005,00000000b,000000005", (8, 2)),
            ("000000007,bd,000000005,00000000b", (8, 2)),
            ("BD,000000005,00000000b", (0, -1)),
            ("", (0, -1)),
            ("bd,5,b", (1, 2)),
            ("bd,000000005,00000000b,000000079", (0, 3)),
        ];
        for (proof, score) in cases {
            assert_eq!(verify(b"hello", proof), score, "{proof:?}");
        }
    }

    #[test]
    fn digest_prefixes_match_the_spec() {
        assert_eq!(
            &digest_parts(b"000000005", &[b"hello"])[..4],
            [0xa4, 0x9c, 0xac, 0x39]
        );
        assert_eq!(
            &digest_parts(b"00000000b", &[b"hello"])[..4],
            [0xa4, 0x2c, 0x07, 0x4e]
        );
    }

    #[test]
    fn meets_requires_both_bits_and_matches() {
        let proof = b"bd,000000005,00000000b";
        assert!(meets(&[b"hello"], proof, 8, 2));
        assert!(!meets(&[b"hello"], proof, 9, 2));
        assert!(!meets(&[b"hello"], proof, 8, 3));
    }
}
