//! Block validation and merge (docs/protocol.md §7): `validate_merge`.
//!
//! Pure functions of (key, existing block, new block, mode, posting user, limits, now). Every
//! input is untrusted: nothing here may panic, and the original's crashes (§6.3, §14 defect
//! 2) become rejections.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use sha1::{Digest, Sha1};

use super::keyannounce::{self, KeyRejection};
use crate::protocol::dt::{is_dt_shape, parse_dt};
use crate::protocol::header::{data_len, hex20, is_pow, is_token, value, without_cr};
use crate::protocol::pow;

pub use crate::protocol::pow::{
    POW_ACK_DHT, POW_ACK_SERVER, POW_CLAIM, POW_DATA_DHT, POW_DATA_SERVER, POW_KEY, POW_MESSAGE,
};
/// Largest data payload, in bytes.
pub const MAX_PAYLOAD_SERVER: usize = 8_388_608;
pub const MAX_PAYLOAD_DHT: usize = 65_536;

const BEGIN_SIGNED: &[u8] = b"-----BEGIN PGP SIGNED MESSAGE-----";

/// Validation limits: the `max_age_*` keys of config.txt, in seconds (docs/protocol.md §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_age_key: i64,
    pub max_age_data: i64,
    pub max_age_message: i64,
    pub max_age_ack: i64,
    pub max_age_claim: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_age_key: 2_678_400,
            max_age_data: 864_000,
            max_age_message: 864_000,
            max_age_ack: 864_000,
            max_age_claim: 864_000,
        }
    }
}

/// A block accepted for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The bytes to write as the key's file.
    pub block: Vec<u8>,
    /// For message announcements: the recipient (lower-case hex) to notify, if any.
    pub notify: Option<String>,
}

/// Why a block (or one announcement or claim inside it) was not stored. Logged, never told
/// to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("Block unchanged")]
    Unchanged,
    #[error("storage key is not 40 hex digits")]
    BadKey,
    #[error("impossible date")]
    BadDate,
    #[error("no Type line")]
    NoType,
    #[error("unknown type {0:?}")]
    UnknownType(String),
    #[error("Type mismatch")]
    TypeMismatch,
    /// A key announcement failed the checks of §7.5 (the reason is inside).
    #[error(transparent)]
    KeyAnnouncement(#[from] KeyRejection),
    #[error("No data")]
    NoPayload,
    #[error("payload too large: {len} > {max} bytes")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("hash mismatch")]
    HashMismatch,
    #[error("no date")]
    NoDate,
    #[error("not newer")]
    NotNewer,
    #[error("too old")]
    TooOld,
    #[error("PoW too weak: {bits} bits, {n} nonces")]
    PowTooWeak { bits: u32, n: i64 },
    #[error("Key does not match logged in user hash")]
    NotOwner,
    #[error("No good messages")]
    NoGoodMessages,
    #[error("No good claims")]
    NoGoodClaims,
}

/// What depends on the mode: the server's configured ages, or the DHT's fixed constants.
struct Rules {
    limits: Limits,
    pow_data: (u32, i64),
    pow_ack: (u32, i64),
    max_payload: usize,
}

impl Rules {
    fn new(entangled: bool, limits: &Limits) -> Rules {
        if entangled {
            Rules {
                limits: Limits::default(),
                pow_data: POW_DATA_DHT,
                pow_ack: POW_ACK_DHT,
                max_payload: MAX_PAYLOAD_DHT,
            }
        } else {
            Rules {
                limits: *limits,
                pow_data: POW_DATA_SERVER,
                pow_ack: POW_ACK_SERVER,
                max_payload: MAX_PAYLOAD_SERVER,
            }
        }
    }
}

/// Validates `new` for `key` (40 upper-case hex digits) against the `existing` block and
/// returns what to store. `posting_user` is the upload's `LoginUser` (`NONE` for an anonymous
/// upload, `None` for the DHT).
pub fn validate_merge(
    key: &str,
    existing: Option<&[u8]>,
    new: &[u8],
    entangled: bool,
    posting_user: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Merged, Reject> {
    if existing == Some(new) {
        return Err(Reject::Unchanged);
    }
    let key = hex20(key.as_bytes()).ok_or(Reject::BadKey)?;
    let ctx = Ctx {
        key,
        rules: Rules::new(entangled, limits),
        now,
    };
    let old = existing.map(scan);
    let new_scan = scan(new);
    if new_scan.bad_date {
        return Err(Reject::BadDate);
    }
    let old_type = old.as_ref().and_then(|o| o.ty.as_deref());
    // An unreadable old date would have crashed the original; here the old block is undated.
    let old_date = old.as_ref().and_then(|o| o.date.as_ref().map(|d| d.1));
    let ty = new_scan.ty.as_deref().ok_or(Reject::NoType)?;
    match ty {
        b"key-announcement" => {
            // §7.5: the original reports a type mismatch before the verifier's verdict, so
            // checking it first (and skipping the crypto) gives the same outcome.
            if old_type.is_some_and(|t| t != ty) {
                return Err(Reject::TypeMismatch);
            }
            let max_age = ctx.rules.limits.max_age_key;
            keyannounce::check(&ctx.key, existing, new, posting_user, max_age, now)?;
            Ok(Merged {
                block: new.to_vec(),
                notify: None,
            })
        }
        b"data" => {
            ctx.data(&new_scan, old_date)?;
            Ok(Merged {
                block: new.to_vec(),
                notify: None,
            })
        }
        b"acknowledgment" | b"acknowledgement" => {
            ctx.acknowledgment(&new_scan, old_date)?;
            Ok(Merged {
                block: new.to_vec(),
                notify: None,
            })
        }
        b"message-announcement" => {
            let same = old_type == Some(ty);
            let old_lines = match old {
                Some(o) if same => o.lines,
                _ => Vec::new(),
            };
            ctx.messages(new_scan.lines, old_lines)
        }
        b"address-claim" => {
            let same = old_type == Some(ty);
            let old_lines = match old {
                Some(o) if same => o.lines,
                _ => Vec::new(),
            };
            ctx.claims(new_scan.lines, old_lines, posting_user)
        }
        other => Err(Reject::UnknownType(
            String::from_utf8_lossy(&other[..other.len().min(64)]).into_owned(),
        )),
    }
}

/// The header lines of a block as §7.2 reads them.
struct Scan<'a> {
    /// CR-free lines, blank ones dropped before the signed-message marker, up to and
    /// including the `Data:` line.
    lines: Vec<Cow<'a, [u8]>>,
    /// The first `Type:` value.
    ty: Option<Cow<'a, [u8]>>,
    /// The first `Date:` line's text and time.
    date: Option<(Cow<'a, [u8]>, DateTime<Utc>)>,
    /// The first `Date:` line has the DT shape but is not a real date.
    bad_date: bool,
    /// The last `ProofOfWork:` value.
    pow: Option<Cow<'a, [u8]>>,
    /// The last n bytes of the block, after `Data: n`, if the block is longer than n.
    payload: Option<&'a [u8]>,
}

/// `line[from..]`, still borrowing from the block when the line does.
fn tail<'a>(line: &Cow<'a, [u8]>, from: usize) -> Cow<'a, [u8]> {
    match line {
        Cow::Borrowed(b) => Cow::Borrowed(&b[from..]),
        Cow::Owned(v) => Cow::Owned(v[from..].to_vec()),
    }
}

fn scan(block: &[u8]) -> Scan<'_> {
    let mut s = Scan {
        lines: Vec::new(),
        ty: None,
        date: None,
        bad_date: false,
        pow: None,
        payload: None,
    };
    let mut seen_date = false;
    let mut skip_blanks = true;
    for raw in block.split(|&c| c == b'\n') {
        let line = without_cr(raw);
        if *line == *BEGIN_SIGNED {
            skip_blanks = false; // signed text keeps its blank lines
        }
        if skip_blanks && line.is_empty() {
            continue;
        }
        if value(&line, b"PROOFOFWORK: ").is_some_and(is_pow) {
            s.pow = Some(tail(&line, 13));
        } else if let Some(v) = value(&line, b"DATE: ").filter(|v| is_dt_shape(v)) {
            if !seen_date {
                seen_date = true;
                match parse_dt(v) {
                    Some(t) => s.date = Some((tail(&line, 6), t)),
                    None => s.bad_date = true,
                }
            }
        } else if value(&line, b"TYPE: ").is_some_and(|v| !v.is_empty()) {
            if s.ty.is_none() {
                s.ty = Some(tail(&line, 6));
            }
        } else if let Some(n) = value(&line, b"DATA: ").and_then(data_len) {
            if n < block.len() {
                s.payload = Some(&block[block.len() - n..]);
            }
            s.lines.push(line);
            break;
        }
        s.lines.push(line);
    }
    s
}

/// The per-call constants.
struct Ctx {
    key: [u8; 20],
    rules: Rules,
    now: DateTime<Utc>,
}

/// One announcement or claim that passed validation.
struct Entry<'a> {
    id: [u8; 20],
    lines: Vec<Cow<'a, [u8]>>,
    date: DateTime<Utc>,
}

impl Ctx {
    fn too_old(&self, date: DateTime<Utc>, max_age: i64) -> bool {
        // A limit beyond chrono's range can never be exceeded.
        TimeDelta::try_seconds(max_age)
            .is_some_and(|max| self.now.signed_duration_since(date) > max)
    }

    fn check_pow(parts: &[&[u8]], proof: &[u8], (bits, n): (u32, i64)) -> Result<(), Reject> {
        let (got_bits, got_n) = pow::verify_parts(parts, proof);
        if got_bits >= bits && got_n >= n {
            Ok(())
        } else {
            Err(Reject::PowTooWeak {
                bits: got_bits,
                n: got_n,
            })
        }
    }

    /// §7.3.
    fn data(&self, new: &Scan<'_>, old_date: Option<DateTime<Utc>>) -> Result<(), Reject> {
        let payload = new.payload.ok_or(Reject::NoPayload)?;
        if payload.len() > self.rules.max_payload {
            return Err(Reject::PayloadTooLarge {
                len: payload.len(),
                max: self.rules.max_payload,
            });
        }
        if Sha1::digest(payload)[..] != self.key {
            return Err(Reject::HashMismatch);
        }
        // The original crashed here without a date (§6.3).
        let (date_text, date) = new.date.as_ref().ok_or(Reject::NoDate)?;
        if old_date.is_some_and(|old| old >= *date) {
            return Err(Reject::NotNewer);
        }
        if self.too_old(*date, self.rules.limits.max_age_data) {
            return Err(Reject::TooOld);
        }
        let proof = new.pow.as_deref().unwrap_or_default();
        Self::check_pow(&[date_text, payload], proof, self.rules.pow_data)
    }

    /// §7.4.
    fn acknowledgment(
        &self,
        new: &Scan<'_>,
        old_date: Option<DateTime<Utc>>,
    ) -> Result<(), Reject> {
        let mut hash: &[u8] = b"";
        let mut date: Option<(&[u8], DateTime<Utc>)> = None;
        let mut proof: &[u8] = b"";
        for line in &new.lines {
            if let Some(v) = value(line, b"HASH: ").filter(|v| hex20(v).is_some()) {
                hash = v;
            } else if let Some(v) = value(line, b"DATE: ").filter(|v| is_dt_shape(v)) {
                date = Some((v, parse_dt(v).ok_or(Reject::BadDate)?));
            } else if let Some(v) = value(line, b"PROOFOFWORK: ").filter(|v| is_pow(v)) {
                proof = v;
            }
        }
        let raw_hash = hex20(hash);
        let raw_hash: &[u8] = raw_hash.as_ref().map_or(&[], |h| &h[..]);
        let date_text = date.map_or(&b""[..], |d| d.0);
        Self::check_pow(&[date_text, raw_hash], proof, self.rules.pow_ack)?;
        if Sha1::digest(raw_hash)[..] != self.key {
            return Err(Reject::HashMismatch);
        }
        let (_, last_date) = date.ok_or(Reject::NoDate)?;
        if self.too_old(last_date, self.rules.limits.max_age_ack) {
            return Err(Reject::TooOld);
        }
        // "Newer" compares the *first* Date line, as the original did.
        let first_date = new.date.as_ref().map(|d| d.1).ok_or(Reject::NoDate)?;
        if old_date.is_some_and(|old| old >= first_date) {
            return Err(Reject::NotNewer);
        }
        Ok(())
    }

    /// §7.6, one announcement. Also returns its Recipient (raw), good or bad.
    fn one_message(
        &self,
        lines: &[Cow<'_, [u8]>],
    ) -> (Result<DateTime<Utc>, Reject>, Option<[u8; 20]>) {
        let mut date: Option<(&[u8], DateTime<Utc>)> = None;
        let mut bad_date = false;
        let mut proof: &[u8] = b"";
        let mut mh: Option<[u8; 20]> = None;
        let mut rec: Option<[u8; 20]> = None;
        let mut mailbox: &[u8] = b"";
        let mut blocks: Vec<u8> = Vec::new();
        for line in lines {
            if let Some(v) = value(line, b"DATE: ").filter(|v| is_dt_shape(v)) {
                match parse_dt(v) {
                    Some(t) => date = Some((v, t)),
                    None => bad_date = true,
                }
            } else if let Some(v) = value(line, b"PROOFOFWORK: ").filter(|v| is_pow(v)) {
                proof = v;
            } else if let Some(h) = value(line, b"MESSAGEHASH: ").and_then(hex20) {
                mh = Some(h);
            } else if let Some(h) = value(line, b"DATABLOCK: ").and_then(hex20) {
                blocks.extend_from_slice(&h);
            } else if let Some(h) = value(line, b"RECIPIENT: ").and_then(hex20) {
                rec = Some(h);
            } else if let Some(v) = value(line, b"MAILBOX: ").filter(|v| is_token(v)) {
                mailbox = v;
            }
        }
        let result = (|| {
            if bad_date {
                return Err(Reject::BadDate);
            }
            let rec: &[u8] = rec.as_ref().map_or(&[], |r| &r[..]);
            let mh: &[u8] = mh.as_ref().map_or(&[], |m| &m[..]);
            let date_text = date.map_or(&b""[..], |d| d.0);
            Self::check_pow(&[rec, mh, date_text, &blocks], proof, POW_MESSAGE)?;
            let mut h = Sha1::new();
            h.update(mailbox);
            h.update(rec);
            if h.finalize()[..] != self.key {
                return Err(Reject::HashMismatch);
            }
            let (_, t) = date.ok_or(Reject::NoDate)?;
            if self.too_old(t, self.rules.limits.max_age_message) {
                return Err(Reject::TooOld);
            }
            Ok(t)
        })();
        (result, rec)
    }

    /// §7.7, one claim. `posting_user` is checked only for new claims.
    fn one_claim(
        &self,
        lines: &[Cow<'_, [u8]>],
        posting_user: Option<&str>,
    ) -> Result<DateTime<Utc>, Reject> {
        let mut date: Option<(&[u8], DateTime<Utc>)> = None;
        let mut proof: &[u8] = b"";
        let mut keyid_hex: &[u8] = b"";
        let mut keyid: Option<[u8; 20]> = None;
        let mut address: &[u8] = b"";
        for line in lines {
            if let Some(v) = value(line, b"DATE: ").filter(|v| is_dt_shape(v)) {
                date = Some((v, parse_dt(v).ok_or(Reject::BadDate)?));
            } else if let Some(v) = value(line, b"PROOFOFWORK: ").filter(|v| is_pow(v)) {
                proof = v;
            } else if let Some((v, h)) = value(line, b"KEYID: ").and_then(|v| Some((v, hex20(v)?)))
            {
                keyid_hex = v;
                keyid = Some(h);
            } else if let Some(v) = value(line, b"ADDRESS: ").filter(|v| is_token(v)) {
                address = v;
            }
        }
        let raw_keyid: &[u8] = keyid.as_ref().map_or(&[], |k| &k[..]);
        let date_text = date.map_or(&b""[..], |d| d.0);
        Self::check_pow(&[date_text, raw_keyid, address], proof, POW_CLAIM)?;
        if Sha1::digest(address)[..] != self.key {
            return Err(Reject::HashMismatch);
        }
        let (_, t) = date.ok_or(Reject::NoDate)?;
        if self.too_old(t, self.rules.limits.max_age_claim) {
            return Err(Reject::TooOld);
        }
        if posting_user.is_some_and(|u| !keyid_hex.eq_ignore_ascii_case(u.as_bytes())) {
            return Err(Reject::NotOwner);
        }
        Ok(t)
    }

    fn messages(&self, new: Vec<Cow<'_, [u8]>>, old: Vec<Cow<'_, [u8]>>) -> Result<Merged, Reject> {
        let mut recip: Option<[u8; 20]> = None;
        let new = split(new, b"nextmessage", b"MESSAGEHASH: ", |lines| {
            let (r, rec) = self.one_message(lines);
            recip = rec;
            r
        });
        let old = split(old, b"nextmessage", b"MESSAGEHASH: ", |lines| {
            self.one_message(lines).0
        });
        let block = merge(&new, &old, b"NextMessage");
        if block.is_empty() {
            return Err(Reject::NoGoodMessages);
        }
        Ok(Merged {
            block,
            notify: recip.map(hex::encode),
        })
    }

    fn claims(
        &self,
        new: Vec<Cow<'_, [u8]>>,
        old: Vec<Cow<'_, [u8]>>,
        posting_user: Option<&str>,
    ) -> Result<Merged, Reject> {
        let new = split(new, b"nextclaim", b"KEYID: ", |lines| {
            self.one_claim(lines, posting_user)
        });
        let old = split(old, b"nextclaim", b"KEYID: ", |lines| {
            self.one_claim(lines, None)
        });
        let block = merge(&new, &old, b"NextClaim");
        if block.is_empty() {
            return Err(Reject::NoGoodClaims);
        }
        Ok(Merged {
            block,
            notify: None,
        })
    }
}

/// Splits lines into entries at `separator` lines (any case), keyed by their last
/// `id_name` line, and keeps the entries `check` accepts (§7.6 "Splitting"). Lines before a
/// separator that comes before any id line are carried into the next entry, as in the
/// original (§14 defect 11). A later entry with the same id replaces the earlier one, in
/// the earlier one's place.
fn split<'a>(
    lines: Vec<Cow<'a, [u8]>>,
    separator: &[u8],
    id_name: &[u8],
    mut check: impl FnMut(&[Cow<'a, [u8]>]) -> Result<DateTime<Utc>, Reject>,
) -> Vec<Entry<'a>> {
    let mut entries: Vec<Entry<'a>> = Vec::new();
    let mut index: HashMap<[u8; 20], usize> = HashMap::new();
    let mut cur: Vec<Cow<'a, [u8]>> = Vec::new();
    let mut id: Option<[u8; 20]> = None;
    let mut finish = |id: [u8; 20], lines: Vec<Cow<'a, [u8]>>| match check(&lines) {
        Ok(date) => {
            let entry = Entry { id, lines, date };
            match index.get(&id) {
                Some(&i) => entries[i] = entry,
                None => {
                    index.insert(id, entries.len());
                    entries.push(entry);
                }
            }
        }
        Err(reason) => tracing::debug!(id = %hex::encode(id), %reason, "entry not kept"),
    };
    for line in lines {
        if line.eq_ignore_ascii_case(separator) {
            if let Some(i) = id.take() {
                finish(i, std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some(h) = value(&line, id_name).and_then(hex20) {
            id = Some(h);
        }
        cur.push(line);
    }
    if let Some(i) = id {
        finish(i, cur);
    }
    entries
}

/// §7.6 "Merging": new entries that are not in `old` or are strictly later than the old
/// copy, then the old entries not replaced, joined by `separator` lines, every line + LF.
fn merge(new: &[Entry<'_>], old: &[Entry<'_>], separator: &[u8]) -> Vec<u8> {
    let old_dates: HashMap<[u8; 20], DateTime<Utc>> = old.iter().map(|e| (e.id, e.date)).collect();
    let mut replaced: HashSet<[u8; 20]> = HashSet::new();
    let mut out = Vec::new();
    let emit = |out: &mut Vec<u8>, e: &Entry<'_>| {
        // Every entry holds at least its id line, so an empty output means "first entry".
        if !out.is_empty() {
            out.extend_from_slice(separator);
            out.push(b'\n');
        }
        for line in &e.lines {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    };
    for e in new {
        if old_dates.get(&e.id).is_none_or(|&d| e.date > d) {
            replaced.insert(e.id);
            emit(&mut out, e);
        }
    }
    for e in old {
        if !replaced.contains(&e.id) {
            emit(&mut out, e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::compose;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 5, 0, 0).unwrap()
    }

    fn ago(secs: i64) -> DateTime<Utc> {
        now() - TimeDelta::seconds(secs)
    }

    fn server(key: &str, old: Option<&[u8]>, new: &[u8]) -> Result<Merged, Reject> {
        validate_merge(
            key,
            old,
            new,
            false,
            Some("NONE"),
            &Limits::default(),
            now(),
        )
    }

    fn dht(key: &str, old: Option<&[u8]>, new: &[u8]) -> Result<Merged, Reject> {
        validate_merge(key, old, new, true, None, &Limits::default(), now())
    }

    /// Replaces the first line starting with `prefix` by `with` (or drops it if empty).
    fn edit(block: &[u8], prefix: &str, with: &str) -> Vec<u8> {
        let text = String::from_utf8_lossy(block).into_owned();
        let mut out = String::new();
        let mut done = false;
        for line in text.split_inclusive('\n') {
            if !done && line.starts_with(prefix) {
                done = true;
                if !with.is_empty() {
                    out.push_str(with);
                    out.push('\n');
                }
            } else {
                out.push_str(line);
            }
        }
        assert!(done, "no line {prefix:?}");
        out.into_bytes()
    }

    #[test]
    fn data_block_is_stored_as_sent() {
        let (key, block) = compose::data_block(b"hello world data", ago(60));
        let m = server(&key, None, &block).unwrap();
        assert_eq!(m.block, block);
        assert_eq!(m.notify, None);
        // Payload bytes that look like header lines are not headers.
        let (key, block) =
            compose::data_block(b"x\nType: other\nDate: 2026-99-99T00:00:00Z\n", ago(60));
        assert_eq!(server(&key, None, &block).unwrap().block, block);
    }

    #[test]
    fn data_rejections() {
        let payload = b"payload for the rejection tests";
        let (key, block) = compose::data_block(payload, ago(60));
        // Wrong key.
        let (other_key, _) = compose::data_block(b"something else", ago(60));
        assert_eq!(server(&other_key, None, &block), Err(Reject::HashMismatch));
        // Expired: age > 10 days is rejected, exactly 10 days passes.
        let (_, old) = compose::data_block(payload, ago(864_001));
        assert_eq!(server(&key, None, &old), Err(Reject::TooOld));
        let (_, edge) = compose::data_block(payload, ago(864_000));
        assert!(server(&key, None, &edge).is_ok());
        // A configured max_age_data applies on the server, not in the DHT.
        let short = Limits {
            max_age_data: 30,
            ..Limits::default()
        };
        assert_eq!(
            validate_merge(&key, None, &block, false, None, &short, now()),
            Err(Reject::TooOld)
        );
        // A future date has a negative age and passes.
        let (_, future) = compose::data_block(payload, ago(-86_400));
        assert!(server(&key, None, &future).is_ok());
        // Bad PoW, missing PoW, malformed PoW line (not a PoW line at all).
        let weak = edit(
            &block,
            "ProofOfWork:",
            "ProofOfWork: bd,000000000,000000001",
        );
        assert!(matches!(
            server(&key, None, &weak),
            Err(Reject::PowTooWeak { .. })
        ));
        let none = edit(&block, "ProofOfWork:", "");
        assert_eq!(
            server(&key, None, &none),
            Err(Reject::PowTooWeak { bits: 0, n: -1 })
        );
        let malformed = edit(&block, "ProofOfWork:", "ProofOfWork: bd,1");
        assert_eq!(
            server(&key, None, &malformed),
            Err(Reject::PowTooWeak { bits: 0, n: -1 })
        );
        // No date (the original's crash), impossible date.
        let undated = edit(&block, "Date:", "");
        assert_eq!(server(&key, None, &undated), Err(Reject::NoDate));
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:60Z",
        ] {
            let b = edit(&block, "Date:", &format!("Date: {bad}"));
            assert_eq!(server(&key, None, &b), Err(Reject::BadDate), "{bad}");
        }
        // No payload: `Data: n` with n ≥ the block's length, or no Data line.
        let short_block = edit(&block, "Data:", "Data: 100000");
        assert_eq!(server(&key, None, &short_block), Err(Reject::NoPayload));
        // Type is case-sensitive; a missing type is no type.
        let upper = edit(&block, "Type:", "Type: Data");
        assert_eq!(
            server(&key, None, &upper),
            Err(Reject::UnknownType("Data".into()))
        );
        let untyped = edit(&block, "Type:", "");
        assert_eq!(server(&key, None, &untyped), Err(Reject::NoType));
        // The DHT wants 20 bits.
        assert!(matches!(
            dht(&key, None, &block),
            Err(Reject::PowTooWeak { .. })
        ));
    }

    #[test]
    fn data_size_limits() {
        let big = vec![7u8; MAX_PAYLOAD_DHT + 1];
        let (key, block) = compose::data_block(&big, ago(60));
        assert_eq!(
            dht(&key, None, &block),
            Err(Reject::PayloadTooLarge {
                len: MAX_PAYLOAD_DHT + 1,
                max: MAX_PAYLOAD_DHT
            })
        );
        assert!(server(&key, None, &block).is_ok());
        // Checked before the hash: a wrong key still reports the size.
        let wrong = "0".repeat(40);
        assert!(matches!(
            dht(&wrong, None, &block),
            Err(Reject::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn data_replacement_needs_a_strictly_later_date() {
        let payload = b"replaced data";
        let (key, first) = compose::data_block(payload, ago(600));
        assert_eq!(server(&key, Some(&first), &first), Err(Reject::Unchanged));
        let same_date = edit(&first, "Version:", "Version: 2");
        assert_eq!(
            server(&key, Some(&first), &same_date),
            Err(Reject::NotNewer)
        );
        let (_, earlier) = compose::data_block(payload, ago(700));
        assert_eq!(server(&key, Some(&first), &earlier), Err(Reject::NotNewer));
        let (_, later) = compose::data_block(payload, ago(500));
        assert_eq!(server(&key, Some(&first), &later).unwrap().block, later);
        // An undated or unreadable old block does not block a replacement.
        assert!(server(&key, Some(b"garbage"), &later).is_ok());
        let bad_old = edit(&first, "Date:", "Date: 2026-02-31T00:00:00Z");
        assert!(server(&key, Some(&bad_old), &later).is_ok());
    }

    #[test]
    fn crlf_and_blank_lines_are_tolerated() {
        let (key, block) = compose::data_block(b"crlf payload", ago(60));
        let text = String::from_utf8(block.clone()).unwrap();
        let (head, payload) = text.split_at(text.find("Data:").unwrap());
        let crlf = format!(
            "\n\r\n{}{}",
            head.replace('\n', "\r\n"),
            payload.replacen('\n', "\r\n", 1)
        );
        // The CRs inside the header lines are ignored; the payload is the last n bytes.
        assert_eq!(
            server(&key, None, crlf.as_bytes()).unwrap().block,
            crlf.as_bytes()
        );
    }

    #[test]
    fn bad_key_and_key_announcements() {
        let (_, block) = compose::data_block(b"k", ago(60));
        assert_eq!(server("XYZ", None, &block), Err(Reject::BadKey));
        let ka = b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA1\n\nProofOfWork: bd,1,2\n\
                   Type: key-announcement\nVersion: 1\nDate: 2026-11-24T04:00:00Z\n";
        let key = "A".repeat(40);
        assert_eq!(
            server(&key, None, ka),
            Err(Reject::KeyAnnouncement(KeyRejection::Missing(
                "signed message end"
            )))
        );
        assert_eq!(server(&key, Some(&block), ka), Err(Reject::TypeMismatch));
    }

    fn ack_key_block(h: [u8; 20], secs_ago: i64) -> (String, Vec<u8>) {
        compose::acknowledgment(h, ago(secs_ago))
    }

    #[test]
    fn acknowledgments() {
        let (key, block) = ack_key_block([9; 20], 60);
        assert_eq!(server(&key, None, &block).unwrap().block, block);
        assert_eq!(dht(&key, None, &block).unwrap().block, block);
        let spelled = edit(&block, "Type:", "Type: acknowledgement");
        assert!(server(&key, None, &spelled).is_ok());
        // PoW is checked before the hash.
        let (other, _) = ack_key_block([8; 20], 60);
        assert_eq!(server(&other, None, &block), Err(Reject::HashMismatch));
        let weak = edit(&block, "ProofOfWork:", "");
        assert_eq!(
            server(&other, None, &weak),
            Err(Reject::PowTooWeak { bits: 0, n: -1 })
        );
        let (_, old) = ack_key_block([9; 20], 864_001);
        assert_eq!(server(&key, None, &old), Err(Reject::TooOld));
        // Not newer compares dates; a strictly later one replaces.
        let same_date = edit(&block, "Version:", "Version: 2");
        assert_eq!(
            server(&key, Some(&block), &same_date),
            Err(Reject::NotNewer)
        );
        let (_, later) = ack_key_block([9; 20], 30);
        assert_eq!(server(&key, Some(&block), &later).unwrap().block, later);
        // Configured ages apply on the server only; the DHT uses the fixed constants.
        let short = Limits {
            max_age_ack: 30,
            ..Limits::default()
        };
        let with = |entangled| validate_merge(&key, None, &block, entangled, None, &short, now());
        assert_eq!(with(false), Err(Reject::TooOld));
        assert!(with(true).is_ok());
        // Any impossible Date line rejects (the original raised on each one it parsed).
        let mut twice = block.clone();
        twice.extend_from_slice(b"Date: 2026-04-31T00:00:00Z\n");
        assert_eq!(server(&key, None, &twice), Err(Reject::BadDate));
    }

    fn announcement(mh: u8, secs_ago: i64) -> (String, Vec<u8>) {
        compose::message_announcement(
            [0xab; 20],
            "inbox",
            [mh; 20],
            &[[mh; 20], [7; 20]],
            ago(secs_ago),
        )
    }

    fn join(parts: &[&[u8]], sep: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(sep.as_bytes());
                out.push(b'\n');
            }
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn message_announcement_single_and_notify() {
        let (key, a) = announcement(1, 60);
        let m = server(&key, None, &a).unwrap();
        assert_eq!(m.block, a);
        assert_eq!(m.notify.as_deref(), Some("ab".repeat(20).as_str()));
        assert_eq!(dht(&key, None, &a).unwrap().block, a);
        // Another mailbox is another key.
        let (other, _) = compose::message_announcement([0xab; 20], "spam", [1; 20], &[], ago(60));
        assert_eq!(server(&other, None, &a), Err(Reject::NoGoodMessages));
        // CRs and blank lines go; separators are rewritten.
        let messy = String::from_utf8(a.clone())
            .unwrap()
            .replace('\n', "\r\n\r\n");
        assert_eq!(server(&key, None, messy.as_bytes()).unwrap().block, a);
    }

    #[test]
    fn message_announcements_merge() {
        let (key, a) = announcement(1, 600);
        let (_, b) = announcement(2, 300);
        let (_, c) = announcement(3, 100);
        // New ones first, then the old ones not replaced.
        let m = server(&key, Some(&a), &b).unwrap();
        assert_eq!(m.block, join(&[&b, &a], "NextMessage"));
        let both = m.block;
        let m = server(&key, Some(&both), &c).unwrap();
        assert_eq!(m.block, join(&[&c, &b, &a], "NextMessage"));
        // Same hash: replaced only by a strictly later date.
        let (_, a_later) =
            compose::message_announcement([0xab; 20], "inbox", [1; 20], &[], ago(200));
        let m = server(&key, Some(&both), &a_later).unwrap();
        assert_eq!(m.block, join(&[&a_later, &b], "NextMessage"));
        let (_, a_same) =
            compose::message_announcement([0xab; 20], "inbox", [1; 20], &[], ago(600));
        let m = server(&key, Some(&both), &a_same).unwrap();
        assert_eq!(m.block, join(&[&b, &a], "NextMessage"));
        // Inside one upload, a later duplicate hash replaces the earlier one.
        let m = server(&key, None, &join(&[&a, &b, &a_later], "nextmessage")).unwrap();
        assert_eq!(m.block, join(&[&a_later, &b], "NextMessage"));
        // An old block of another type is not merged.
        let m = server(&key, Some(b"Type: data\nDate: 2026-11-24T00:00:00Z\n"), &b).unwrap();
        assert_eq!(m.block, b);
    }

    #[test]
    fn message_announcements_prune_and_reject() {
        let (key, expired) = announcement(1, 864_001);
        let (_, b) = announcement(2, 300);
        let (_, c) = announcement(3, 100);
        assert_eq!(server(&key, None, &expired), Err(Reject::NoGoodMessages));
        // The expired old entry drops out on the next merge.
        let old = join(&[&expired, &b], "NextMessage");
        let m = server(&key, Some(&old), &c).unwrap();
        assert_eq!(m.block, join(&[&c, &b], "NextMessage"));
        // An upload with no valid announcement still rewrites the pruned old block, and
        // names the invalid announcement's recipient (§14 defect 12).
        let m = server(&key, Some(&old), &expired).unwrap();
        assert_eq!(m.block, b);
        assert_eq!(m.notify.as_deref(), Some("ab".repeat(20).as_str()));
        // One bad announcement does not spoil the others; an impossible date is just bad.
        let bad = edit(&c, "Date:", "Date: 2026-11-31T00:00:00Z");
        let m = server(&key, None, &join(&[&b, &bad], "NextMessage")).unwrap();
        assert_eq!(m.block, b);
        let weak = edit(&c, "ProofOfWork:", "ProofOfWork: bd,0,1");
        assert_eq!(server(&key, None, &weak), Err(Reject::NoGoodMessages));
    }

    #[test]
    fn message_carry_over_quirk() {
        // Observed: `Junk: 1`, `NextMessage`, then a valid announcement was stored as
        // `Junk: 1` followed by that announcement.
        let (key, a) = announcement(1, 60);
        let mut upload = b"Junk: 1\nNextMessage\n".to_vec();
        upload.extend_from_slice(&a);
        let mut expect = b"Junk: 1\n".to_vec();
        expect.extend_from_slice(&a);
        assert_eq!(server(&key, None, &upload).unwrap().block, expect);
    }

    const ALICE: &str = "0123456789ABCDEF0123456789ABCDEF01234567";
    const BOB: &str = "89ABCDEF0123456789ABCDEF0123456789ABCDEF";

    #[test]
    fn address_claims() {
        let (key, alice) = compose::address_claim(ALICE, "someone@example.org", ago(600));
        // Owner check: the posting user must be the claim's Keyid (any case).
        let as_user = |old: Option<&[u8]>, new: &[u8], user: &str| {
            validate_merge(&key, old, new, false, Some(user), &Limits::default(), now())
        };
        assert_eq!(as_user(None, &alice, ALICE).unwrap().block, alice);
        assert!(as_user(None, &alice, &ALICE.to_lowercase()).is_ok());
        assert_eq!(as_user(None, &alice, "NONE"), Err(Reject::NoGoodClaims));
        assert_eq!(as_user(None, &alice, BOB), Err(Reject::NoGoodClaims));
        assert_eq!(server(&key, None, &alice), Err(Reject::NoGoodClaims));
        // The DHT has no posting user.
        assert_eq!(dht(&key, None, &alice).unwrap().block, alice);
        // Bob's claim joins Alice's; her old claim is not owner-checked against Bob.
        let (_, bob) = compose::address_claim(BOB, "someone@example.org", ago(300));
        let m = as_user(Some(&alice), &bob, BOB).unwrap();
        assert_eq!(m.block, join(&[&bob, &alice], "NextClaim"));
        assert_eq!(m.notify, None);
        // Expired claims are pruned.
        let (_, expired) = compose::address_claim(BOB, "someone@example.org", ago(864_001));
        let m = as_user(Some(&join(&[&expired, &alice], "NextClaim")), &alice, ALICE);
        assert_eq!(m.unwrap().block, alice);
        // Wrong address for the key.
        let (_, elsewhere) = compose::address_claim(ALICE, "other@example.org", ago(600));
        assert_eq!(as_user(None, &elsewhere, ALICE), Err(Reject::NoGoodClaims));
    }

    #[test]
    fn signed_claims_keep_their_blank_lines() {
        let (key, claim) = compose::address_claim(ALICE, "a@example.org", ago(60));
        let mut signed = b"\n-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n".to_vec();
        signed.extend_from_slice(&claim);
        signed.extend_from_slice(
            b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n",
        );
        // The leading blank line goes; the one after Hash: and the final empty piece stay.
        let mut expect = signed[1..].to_vec();
        expect.push(b'\n');
        let m = validate_merge(
            &key,
            None,
            &signed,
            false,
            Some(ALICE),
            &Limits::default(),
            now(),
        );
        assert_eq!(m.unwrap().block, expect);
    }

    /// Garbage and mutations of valid blocks: validation (and the GET filters) must never
    /// panic, and what is accepted keeps its basic shape.
    #[test]
    fn mutated_blocks_never_panic() {
        use crate::server::since::{hidden_from_anonymous, since_filter};
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        let (data_key, data) = compose::data_block(b"fuzz payload\nwith lines\r\n", ago(60));
        let (ack_key, ack) = ack_key_block([5; 20], 60);
        let (ma_key, a) = announcement(1, 60);
        let (_, b) = announcement(2, 30);
        let two = join(&[&a, &b], "NextMessage");
        let (claim_key, claim) = compose::address_claim(ALICE, "f@example.org", ago(60));
        let bases: [(&str, &[u8]); 5] = [
            (&data_key, &data),
            (&ack_key, &ack),
            (&ma_key, &a),
            (&ma_key, &two),
            (&claim_key, &claim),
        ];
        let inserts: [&[u8]; 16] = [
            b"Date: 2026-13-45T99:99:99Z",
            b"date: 0000-00-00t00:00:00z",
            b"Date: 2026-11-24T04:59:00Z",
            b"Data: 99999999999999999999999999999",
            b"Data: 5",
            b"DATA: 1",
            b"NextMessage",
            b"nextclaim",
            b"MessageHash: 0101010101010101010101010101010101010101",
            b"Keyid: 0123456789ABCDEF0123456789ABCDEF01234567",
            b"Type: data",
            b"Type: message-announcement",
            b"ProofOfWork: bd,,",
            b"ProofOfWork: bd,0,0,0",
            b"-----BEGIN PGP SIGNED MESSAGE-----",
            b"\r",
        ];
        let mut rng = StdRng::seed_from_u64(0x5701_e4e7);
        let mut accepted = 0;
        for round in 0..4000 {
            let (key, base) = bases[rng.gen_range(0..bases.len())];
            let mut block = base.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                match rng.gen_range(0..6) {
                    0 if !block.is_empty() => {
                        let i = rng.gen_range(0..block.len());
                        block[i] = rng.gen();
                    }
                    1 => {
                        let at = rng.gen_range(0..=block.len());
                        let mut line = inserts[rng.gen_range(0..inserts.len())].to_vec();
                        line.push(b'\n');
                        block.splice(at..at, line);
                    }
                    2 => block.truncate(rng.gen_range(0..=block.len())),
                    3 => {
                        // A random digit in place of a digit: impossible dates, other hashes.
                        let digits: Vec<usize> = (0..block.len())
                            .filter(|&i| block[i].is_ascii_digit())
                            .collect();
                        if !digits.is_empty() {
                            block[digits[rng.gen_range(0..digits.len())]] =
                                b'0' + rng.gen_range(0..10);
                        }
                    }
                    4 => {
                        let (_, other) = bases[rng.gen_range(0..bases.len())];
                        block.extend_from_slice(other);
                    }
                    _ => block = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
                }
            }
            let old: Option<Vec<u8>> = match round % 4 {
                0 => None,
                1 => Some(base.to_vec()),
                2 => Some(bases[rng.gen_range(0..bases.len())].1.to_vec()),
                _ => Some(block.iter().rev().copied().collect()),
            };
            let user = [None, Some("NONE"), Some(ALICE)][rng.gen_range(0..3)];
            let entangled = rng.gen_bool(0.3);
            let result = validate_merge(
                key,
                old.as_deref(),
                &block,
                entangled,
                user,
                &Limits::default(),
                now(),
            );
            if let Ok(m) = &result {
                accepted += 1;
                assert!(!m.block.is_empty());
                if let Some(n) = &m.notify {
                    assert!(n.len() == 40 && n.bytes().all(|c| c.is_ascii_hexdigit()));
                }
            }
            let _ = since_filter(&block, "2026-11-24T04:59:30Z");
            let _ = hidden_from_anonymous(&block);
        }
        // The mutations are mild enough that some blocks stay valid.
        assert!(accepted > 0);
    }

    /// Throughput of the data path on 4 KiB blocks (a benchmark, not a check):
    /// `cargo test --release --lib server::validate::tests::data_throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn data_throughput() {
        let blocks: Vec<(String, Vec<u8>)> = (0u32..2000)
            .map(|i| {
                let payload: Vec<u8> = (0..4096u32)
                    .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                    .collect();
                compose::data_block(&payload, ago(60))
            })
            .collect();
        let rounds = 10;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            for (key, block) in &blocks {
                let m = server(key, None, block).unwrap();
                std::hint::black_box(m);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let n = (rounds * blocks.len()) as f64;
        eprintln!(
            "validate_merge, 4 KiB data: {:.0} blocks/s on one core ({:.1} µs each)",
            n / secs,
            secs / n * 1e6
        );
    }

    #[test]
    fn since_filters_a_merged_announcement_as_observed() {
        // Announcements dated now−2 h and now−1 min, merged by the validator; SINCE now−10 min
        // returns only the newer one, SINCE now+10 min returns NOT FOUND.
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 5, 0, 0).unwrap();
        let rec = [0x11; 20];
        let (key, old) =
            compose::message_announcement(rec, "inbox", [1; 20], &[], now - TimeDelta::hours(2));
        let (_, newer) =
            compose::message_announcement(rec, "inbox", [2; 20], &[], now - TimeDelta::minutes(1));
        let l = Limits::default();
        let stored = validate_merge(&key, None, &old, false, None, &l, now)
            .unwrap()
            .block;
        let stored = validate_merge(&key, Some(&stored), &newer, false, None, &l, now)
            .unwrap()
            .block;
        let since = compose::format_dt(now - TimeDelta::minutes(10));
        assert_eq!(
            crate::server::since::since_filter(&stored, &since).unwrap(),
            newer
        );
        let since = compose::format_dt(now + TimeDelta::minutes(10));
        assert_eq!(crate::server::since::since_filter(&stored, &since), None);
        let since = compose::format_dt(now - TimeDelta::hours(3));
        assert_eq!(
            crate::server::since::since_filter(&stored, &since).unwrap(),
            stored
        );
    }
}
