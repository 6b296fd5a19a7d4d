//! Builders of valid blocks (data, message announcement, acknowledgment, address claim) with
//! their proof of work, for the tests, the benchmarks and `storeherd bench`.
//!
//! Each returns `(key, block)`: the storage key as 40 upper-case hex digits, and the block in
//! its stored form (header lines each ending in LF, then the payload if any), which is also
//! what an upload sends (docs/protocol.md §4.1).

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};

use super::pow::{POW_ACK_DHT, POW_CLAIM, POW_DATA_DHT, POW_DATA_SERVER, POW_MESSAGE};
pub use crate::protocol::dt::format_dt;
use crate::protocol::pow;

fn upper_hex(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// A data block as the stock client writes it (§7.3): `Type: data`, `Date`, `Version: 1`,
/// `ProofOfWork` over date ‖ payload (8 bits, 2 matches: enough for a server, not the DHT),
/// `Data: n`, payload. The key is sha1(payload). An empty payload gives a `Data: 0` block,
/// which no server accepts.
pub fn data_block(payload: &[u8], date: DateTime<Utc>) -> (String, Vec<u8>) {
    data_block_with(payload, date, POW_DATA_SERVER.0)
}

/// As [`data_block`], with a proof strong enough for the DHT (20 bits, §7.3), as the stock
/// client makes for STORE ENTANGLED.
pub fn dht_data_block(payload: &[u8], date: DateTime<Utc>) -> (String, Vec<u8>) {
    data_block_with(payload, date, POW_DATA_DHT.0)
}

fn data_block_with(payload: &[u8], date: DateTime<Utc>, bits: u32) -> (String, Vec<u8>) {
    let dt = format_dt(date);
    let proof = pow::generate_parts(&[dt.as_bytes(), payload], bits, 2);
    let mut block = format!(
        "Type: data\nDate: {dt}\nVersion: 1\nProofOfWork: {proof}\nData: {}\n",
        payload.len()
    )
    .into_bytes();
    block.reserve_exact(payload.len());
    block.extend_from_slice(payload);
    (upper_hex(&Sha1::digest(payload)), block)
}

/// An acknowledgment of `hash20` (§7.4), with a proof strong enough for the DHT too
/// (20 bits, 2 matches). The key is sha1(hash20).
pub fn acknowledgment(hash20: [u8; 20], date: DateTime<Utc>) -> (String, Vec<u8>) {
    let dt = format_dt(date);
    let proof = pow::generate_parts(&[dt.as_bytes(), &hash20], POW_ACK_DHT.0, 2);
    let block = format!(
        "Type: acknowledgment\nDate: {dt}\nVersion: 1\nHash: {}\nProofOfWork: {proof}\n",
        hex::encode(hash20)
    )
    .into_bytes();
    (upper_hex(&Sha1::digest(hash20)), block)
}

/// One message announcement (§7.6) as the stock client writes it. The key is
/// sha1(mailbox ‖ recipient20); `mailbox` must have no whitespace to validate.
pub fn message_announcement(
    recipient20: [u8; 20],
    mailbox: &str,
    message_hash20: [u8; 20],
    datablocks: &[[u8; 20]],
    date: DateTime<Utc>,
) -> (String, Vec<u8>) {
    let dt = format_dt(date);
    let blocks: Vec<u8> = datablocks.concat();
    let proof = pow::generate_parts(
        &[&recipient20, &message_hash20, dt.as_bytes(), &blocks],
        POW_MESSAGE.0,
        2,
    );
    let mut text = format!(
        "Type: message-announcement\nDate: {dt}\nVersion: 1\nRecipient: {}\nMailbox: {mailbox}\n\
         ProofOfWork: {proof}\n",
        hex::encode(recipient20)
    );
    for b in datablocks {
        text.push_str(&format!("DataBlock: {}\n", hex::encode(b)));
    }
    text.push_str(&format!("MessageHash: {}\n", hex::encode(message_hash20)));
    let mut h = Sha1::new();
    h.update(mailbox.as_bytes());
    h.update(recipient20);
    (upper_hex(&h.finalize()), text.into_bytes())
}

/// An address claim (§7.7) with its 24-bit proof, without the OpenPGP signature armour (the
/// server does not check it). The key is sha1(address). `keyid_hex` must be 40 hex digits
/// for the claim to validate.
pub fn address_claim(keyid_hex: &str, address: &str, date: DateTime<Utc>) -> (String, Vec<u8>) {
    let dt = format_dt(date);
    let raw_keyid = hex::decode(keyid_hex).unwrap_or_default();
    let proof = pow::generate_parts(
        &[dt.as_bytes(), &raw_keyid, address.as_bytes()],
        POW_CLAIM.0,
        2,
    );
    let block = format!(
        "Type: address-claim\nVersion: 1\nDate: {dt}\nProofOfWork: {proof}\nKeyid: {keyid_hex}\n\
         Address: {address}\n"
    )
    .into_bytes();
    (upper_hex(&Sha1::digest(address.as_bytes())), block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn data_block_matches_the_observed_stock_block() {
        // docs/protocol.md §4.2: the stock client's block for this payload and date.
        let date = Utc.with_ymd_and_hms(2026, 11, 24, 4, 24, 35).unwrap();
        let (key, block) = data_block(b"hello world data", date);
        assert_eq!(
            block,
            b"Type: data\nDate: 2026-11-24T04:24:35Z\nVersion: 1\n\
              ProofOfWork: bd,000000002,000000006\nData: 16\nhello world data"
        );
        assert_eq!(key, hex::encode_upper(Sha1::digest(b"hello world data")));
    }

    #[test]
    fn keys_are_upper_hex() {
        let date = Utc.with_ymd_and_hms(2026, 11, 24, 4, 0, 0).unwrap();
        for (key, block) in [
            acknowledgment([3; 20], date),
            message_announcement([4; 20], "box", [5; 20], &[[6; 20]], date),
            address_claim(
                "0123456789ABCDEF0123456789ABCDEF01234567",
                "x@example.org",
                date,
            ),
        ] {
            assert_eq!(key.len(), 40);
            assert!(key
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)));
            assert!(block.ends_with(b"\n"));
        }
    }
}
