//! Key announcements (docs/protocol.md §7.5): the verifier the original ran through GnuPG, done
//! in-process with sequoia-openpgp (pure-Rust crypto), and the `validate_merge` checks after
//! it.
//!
//! Every input is untrusted: nothing here may panic. The block is stored as sent, so all
//! this decides is accept or reject (with a reason for the log).

use std::borrow::Cow;
use std::io;
use std::sync::LazyLock;
use std::time::SystemTime;

use chrono::{DateTime, TimeDelta, Utc};
use sequoia_openpgp as openpgp;

use openpgp::cert::amalgamation::ValidAmalgamation;
use openpgp::cert::CertParser;
use openpgp::packet::signature::subpacket::CLOCK_SKEW_TOLERANCE;
use openpgp::parse::stream::{MessageLayer, MessageStructure, VerificationHelper, VerifierBuilder};
use openpgp::parse::Parse;
use openpgp::policy::{AsymmetricAlgorithm, HashAlgoSecurity, StandardPolicy};
use openpgp::types::{HashAlgorithm, RevocationStatus};
use openpgp::{Cert, Fingerprint, KeyHandle};

use crate::protocol::dt::parse_dt;
use crate::protocol::header::without_cr;
use crate::protocol::pow;

/// Proof of work a key announcement needs (bits, nonces) (docs/protocol.md §7.1).
pub const POW_KEY: (u32, i64) = (24, 2);

const BEGIN_MESSAGE: &[u8] = b"-----BEGIN PGP SIGNED MESSAGE-----";
const END_SIGNATURE: &[u8] = b"-----END PGP SIGNATURE-----";
const BEGIN_SIGNATURE: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
const BEGIN_KEY_ESCAPED: &[u8] = b"- -----BEGIN PGP PUBLIC KEY BLOCK-----";
const END_KEY_ESCAPED: &[u8] = b"- -----END PGP PUBLIC KEY BLOCK-----";

/// Why a key announcement was not stored. Logged, never told to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    /// Verifier step 4: a part of the signed message is missing.
    #[error("key announcement: no {0}")]
    Missing(&'static str),
    /// The first `Date: ` value is not a well-formed `DT`.
    #[error("key announcement: bad Date")]
    BadDate,
    /// A header the checks rely on lies outside the signed text (e.g. in an armour header),
    /// so the signature would not cover it. GnuPG refuses such armour; we reject it too.
    #[error("key announcement: {0} is not in the signed text")]
    Unsigned(&'static str),
    #[error("key announcement: PoW too weak: {bits} bits, {n} nonces")]
    PowTooWeak { bits: u32, n: i64 },
    /// The key block does not parse as OpenPGP certificates.
    #[error("key announcement: unreadable public key: {0}")]
    KeyUnreadable(String),
    /// The key block must hold exactly one certificate.
    #[error("key announcement: {0} public keys in the block, want 1")]
    KeyCount(usize),
    /// No good signature by the announced key (bad, missing, other signer, unusable key).
    #[error("key announcement: bad signature: {0}")]
    BadSignature(String),
    /// The signing key (or its certificate) is revoked now (GnuPG's REVKEYSIG).
    #[error("key announcement: signing key revoked")]
    KeyRevoked,
    /// The signing key (or its certificate) is expired now (GnuPG's EXPKEYSIG).
    #[error("key announcement: signing key expired")]
    KeyExpired,
    #[error("Fingerprint does not match key")]
    FingerprintMismatch,
    #[error("Key does not match logged in user hash")]
    NotOwner,
    #[error("Key too old")]
    TooOld,
    /// The announcement's own `Expires` date has passed.
    #[error("Key expired")]
    Expired,
    #[error("Key not newer")]
    NotNewer,
}

/// A key announcement that passed the verifier (§7.5 steps 1–7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// F: the announced certificate's primary fingerprint.
    pub fingerprint: Fingerprint,
    /// The first `Date: ` value.
    pub date: DateTime<Utc>,
    /// A well-formed `Expires: ` in the past.
    pub expired: bool,
}

/// GnuPG-like acceptance: sequoia's standard policy, plus what GnuPG still verifies by
/// default — SHA-1 (checked by sequoia with collision detection) and 1024-bit RSA/DSA keys,
/// which long-lived Confidant Mail keys may be.
static POLICY: LazyLock<StandardPolicy<'static>> = LazyLock::new(|| {
    let mut p = StandardPolicy::new();
    p.accept_hash_property(HashAlgorithm::SHA1, HashAlgoSecurity::CollisionResistance);
    p.accept_hash_property(
        HashAlgorithm::SHA1,
        HashAlgoSecurity::SecondPreImageResistance,
    );
    p.accept_asymmetric_algo(AsymmetricAlgorithm::RSA1024);
    p.accept_asymmetric_algo(AsymmetricAlgorithm::DSA1024);
    p
});

/// The `validate_merge` part of §7.5 after the type check: runs the verifier on `new`, then
/// checks, in order, the fingerprint against `key`, the posting user (`None` in the DHT),
/// the age (< `max_age_key` seconds) and expiry, and that `new` is newer than `existing`.
pub fn check(
    key: &[u8; 20],
    existing: Option<&[u8]>,
    new: &[u8],
    posting_user: Option<&str>,
    max_age_key: i64,
    now: DateTime<Utc>,
) -> Result<Verified, KeyRejection> {
    let v = verify(new, now)?;
    if v.fingerprint.as_bytes() != key.as_slice() {
        return Err(KeyRejection::FingerprintMismatch);
    }
    if let Some(user) = posting_user {
        if !user.eq_ignore_ascii_case(&v.fingerprint.to_hex()) {
            return Err(KeyRejection::NotOwner);
        }
    }
    // A limit beyond chrono's range is never reached.
    let too_old = TimeDelta::try_seconds(max_age_key)
        .is_some_and(|max| now.signed_duration_since(v.date) >= max);
    if too_old {
        return Err(KeyRejection::TooOld);
    }
    if v.expired {
        return Err(KeyRejection::Expired);
    }
    // Same age rule as "strictly later date". An old block without a readable date (it
    // could only come from outside validation) does not block the update, as for the other
    // stored-as-sent types.
    if let Some(old) = existing.and_then(first_date) {
        if v.date <= old {
            return Err(KeyRejection::NotNewer);
        }
    }
    Ok(v)
}

/// The verifier (§7.5 steps 1–7): the announcement's parts, date, expiry, proof of work,
/// the single public key in it and a good clear-signature by that key at `now`.
pub fn verify(block: &[u8], now: DateTime<Utc>) -> Result<Verified, KeyRejection> {
    let parts = Parts::find(block)?;
    let date = parse_dt(&parts.date).ok_or(KeyRejection::BadDate)?;
    let expired = parts
        .expires
        .as_deref()
        .and_then(parse_dt)
        .is_some_and(|exp| exp < now);
    let (bits, n) = pow::verify_parts(&[&parts.pow_text], &parts.proof);
    if bits < POW_KEY.0 || n < POW_KEY.1 {
        return Err(KeyRejection::PowTooWeak { bits, n });
    }
    let cert = single_cert(&parts.key)?;
    verify_signature(&parts.message, cert, now).map(|fingerprint| Verified {
        fingerprint,
        date,
        expired,
    })
}

/// The first `Date: ` line inside a stored announcement's signed message (where the
/// verifier took it from), if it is a real date.
fn first_date(block: &[u8]) -> Option<DateTime<Utc>> {
    let mut lines = block.split(|&c| c == b'\n').map(without_cr);
    lines.find(|l| **l == *BEGIN_MESSAGE)?;
    lines
        .take_while(|l| **l != *END_SIGNATURE)
        .find_map(|l| l.strip_prefix(b"Date: ").and_then(parse_dt))
}

/// The pieces of the signed message §7.5 steps 1–4 name.
struct Parts {
    /// The signed message, BEGIN line to END line, LF-terminated: what is verified.
    message: Vec<u8>,
    date: Vec<u8>,
    expires: Option<Vec<u8>>,
    proof: Vec<u8>,
    /// The lines after the ProofOfWork line up to the signature, joined with no separators,
    /// the two key armour lines unescaped.
    pow_text: Vec<u8>,
    /// The public key block, unescaped, LF-terminated lines.
    key: Vec<u8>,
}

impl Parts {
    fn find(block: &[u8]) -> Result<Parts, KeyRejection> {
        use KeyRejection::{Missing, Unsigned};
        let lines: Vec<Cow<'_, [u8]>> = block.split(|&c| c == b'\n').map(without_cr).collect();
        let pos = |from: usize, pred: &dyn Fn(&[u8]) -> bool| {
            lines
                .iter()
                .skip(from)
                .position(|l| pred(l))
                .map(|i| i + from)
        };
        let start = pos(0, &|l| l == BEGIN_MESSAGE).ok_or(Missing("signed message start"))?;
        let end = pos(start, &|l| l == END_SIGNATURE).ok_or(Missing("signed message end"))?;
        let msg = &lines[start..=end];
        let at = |from: usize, pred: &dyn Fn(&[u8]) -> bool| {
            msg.iter()
                .skip(from)
                .position(|l| pred(l))
                .map(|i| i + from)
        };
        let key_start = at(0, &|l| l == BEGIN_KEY_ESCAPED).ok_or(Missing("public key start"))?;
        let key_end = at(key_start, &|l| l == END_KEY_ESCAPED).ok_or(Missing("public key end"))?;
        let pow_line = at(0, &|l| l.starts_with(b"ProofOfWork: ")).ok_or(Missing("ProofOfWork"))?;
        let pow_end = at(pow_line, &|l| l == BEGIN_SIGNATURE).ok_or(Missing("signature"))?;
        let date_line = at(0, &|l| l.starts_with(b"Date: ")).ok_or(Missing("Date"))?;
        let expires_line = at(0, &|l| l.starts_with(b"Expires: "));

        // The signed text runs from after the armour headers' blank line to the signature.
        // Everything checked must lie inside it, or a valid signature would not cover it.
        let body = at(1, &|l| l.is_empty())
            .map(|blank| (blank + 1, at(blank, &|l| l == BEGIN_SIGNATURE).unwrap_or(0)))
            .unwrap_or((0, 0));
        let signed = |i: usize| body.0 <= i && i < body.1;
        for (what, i) in [
            ("ProofOfWork", pow_line),
            ("Date", date_line),
            ("public key", key_start),
            ("public key", key_end),
        ] {
            if !signed(i) {
                return Err(Unsigned(what));
            }
        }
        if expires_line.is_some_and(|i| !signed(i)) {
            return Err(Unsigned("Expires"));
        }

        let unescape = |l: &[u8]| -> Vec<u8> {
            if l == BEGIN_KEY_ESCAPED || l == END_KEY_ESCAPED {
                l[2..].to_vec()
            } else {
                l.to_vec()
            }
        };
        let mut message = Vec::new();
        for l in msg {
            message.extend_from_slice(l);
            message.push(b'\n');
        }
        let mut key = Vec::new();
        for l in &msg[key_start..=key_end] {
            key.extend_from_slice(l.strip_prefix(b"- ").unwrap_or(l));
            key.push(b'\n');
        }
        Ok(Parts {
            message,
            date: msg[date_line][b"Date: ".len()..].to_vec(),
            expires: expires_line.map(|i| msg[i][b"Expires: ".len()..].to_vec()),
            proof: msg[pow_line][b"ProofOfWork: ".len()..].to_vec(),
            pow_text: msg[pow_line + 1..pow_end]
                .iter()
                .flat_map(|l| unescape(l))
                .collect(),
            key,
        })
    }
}

/// The only certificate in `armoured` (§7.5 step 6: the import must yield one fingerprint).
fn single_cert(armoured: &[u8]) -> Result<Cert, KeyRejection> {
    let unreadable = |e: openpgp::anyhow::Error| KeyRejection::KeyUnreadable(format!("{e:#}"));
    let parser = CertParser::from_bytes(armoured).map_err(unreadable)?;
    let mut certs: Vec<Cert> = Vec::new();
    for cert in parser {
        let cert = cert.map_err(unreadable)?;
        // GnuPG merges copies of one key on import: they count as one fingerprint.
        match certs
            .iter()
            .position(|c| c.fingerprint() == cert.fingerprint())
        {
            Some(i) => {
                let first = std::mem::replace(&mut certs[i], cert.clone());
                certs[i] = first.merge_public(cert).map_err(unreadable)?;
            }
            None => certs.push(cert),
        }
    }
    if certs.len() != 1 {
        return Err(KeyRejection::KeyCount(certs.len()));
    }
    certs.pop().ok_or(KeyRejection::KeyCount(0))
}

/// Checks the clear-signature on `message` against `cert` (§7.5 step 7) and returns F.
///
/// Like GnuPG's GOODSIG without a later EXPKEYSIG/REVKEYSIG: every signature must be good,
/// made by the primary key or a signing subkey of `cert`, and that key and `cert` must be
/// alive and not revoked both when it signed (sequoia's rule) and at `now` (GnuPG's).
fn verify_signature(
    message: &[u8],
    cert: Cert,
    now: DateTime<Utc>,
) -> Result<Fingerprint, KeyRejection> {
    let t = SystemTime::from(now);
    // GnuPG accepts a signature made after "now" (a client clock running ahead); sequoia
    // does not once given an explicit time, so it checks the signature at now + its usual
    // clock-skew tolerance. The key checks below still use `now`.
    let sig_time = t + CLOCK_SKEW_TOLERANCE;
    let fingerprint = cert.fingerprint();
    let mut verdict: Option<KeyRejection> = None;
    let mut signers: Vec<Fingerprint> = Vec::new();
    let helper = Helper {
        cert: &cert,
        verdict: &mut verdict,
        signers: &mut signers,
    };
    let bad = |e: openpgp::anyhow::Error| KeyRejection::BadSignature(format!("{e:#}"));
    let outcome = VerifierBuilder::from_bytes(message)
        .and_then(|b| b.with_policy(&*POLICY, sig_time, helper))
        .and_then(|mut v| {
            io::copy(&mut v, &mut io::sink())?;
            if v.message_processed() {
                Ok(())
            } else {
                Err(openpgp::Error::InvalidOperation("message not fully processed".into()).into())
            }
        });
    if let Some(reason) = verdict {
        return Err(reason);
    }
    outcome.map_err(bad)?;
    if signers.is_empty() {
        return Err(KeyRejection::BadSignature("no signature".into()));
    }
    let vc = cert
        .with_policy(&*POLICY, t)
        .map_err(|e| KeyRejection::BadSignature(format!("key not valid now: {e:#}")))?;
    if matches!(vc.revocation_status(), RevocationStatus::Revoked(_)) {
        return Err(KeyRejection::KeyRevoked);
    }
    if vc.alive().is_err() {
        return Err(KeyRejection::KeyExpired);
    }
    for signer in &signers {
        let Some(ka) = vc.keys().key_handle(signer.clone()).next() else {
            return Err(KeyRejection::BadSignature(
                "signing key not valid now".into(),
            ));
        };
        if matches!(ka.revocation_status(), RevocationStatus::Revoked(_)) {
            return Err(KeyRejection::KeyRevoked);
        }
        if ka.alive().is_err() {
            return Err(KeyRejection::KeyExpired);
        }
    }
    Ok(fingerprint)
}

/// Hands sequoia the announced certificate and judges the signatures it found.
struct Helper<'h> {
    cert: &'h Cert,
    /// Set when `check` rejects for a reason more specific than "bad signature".
    verdict: &'h mut Option<KeyRejection>,
    /// The fingerprints of the (sub)keys that made good signatures.
    signers: &'h mut Vec<Fingerprint>,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(vec![self.cert.clone()])
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        use openpgp::parse::stream::VerificationError as E;
        for layer in structure {
            let MessageLayer::SignatureGroup { results } = layer else {
                return Err(
                    openpgp::Error::BadSignature("not a plain signed message".into()).into(),
                );
            };
            for result in results {
                match result {
                    Ok(good) => self.signers.push(good.ka.key().fingerprint()),
                    Err(E::BadKey { ka, error, .. }) => {
                        // Map GnuPG's REVKEYSIG / EXPKEYSIG cases to their own reasons.
                        let revoked =
                            matches!(ka.revocation_status(), RevocationStatus::Revoked(_))
                                || matches!(
                                    ka.valid_cert().revocation_status(),
                                    RevocationStatus::Revoked(_)
                                );
                        if revoked {
                            *self.verdict = Some(KeyRejection::KeyRevoked);
                        } else if ka.alive().is_err() || ka.valid_cert().alive().is_err() {
                            *self.verdict = Some(KeyRejection::KeyExpired);
                        }
                        return Err(error);
                    }
                    Err(e) => return Err(openpgp::Error::BadSignature(e.to_string()).into()),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const KEY: &str = "- -----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n=abcd\n\
                       - -----END PGP PUBLIC KEY BLOCK-----\n";

    fn signed(body: &str) -> String {
        format!(
            "junk before\n-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{body}\
             -----BEGIN PGP SIGNATURE-----\n\nwnUE\n=AAAA\n-----END PGP SIGNATURE-----\n"
        )
    }

    fn body() -> String {
        format!(
            "ProofOfWork: bd,1,2\nType: key-announcement\nDate: 2026-11-24T05:00:00Z\n\
             Expires: 2026-12-01T05:00:00Z\n\n{KEY}"
        )
    }

    #[test]
    fn parts_as_section_7_5_defines_them() {
        let text = signed(&body()).replace('\n', "\r\n");
        let p = Parts::find(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.date, b"2026-11-24T05:00:00Z");
        assert_eq!(p.expires.as_deref(), Some(&b"2026-12-01T05:00:00Z"[..]));
        assert_eq!(p.proof, b"bd,1,2");
        // Every line after the PoW line, no separators, armour lines unescaped.
        assert_eq!(
            String::from_utf8(p.pow_text).unwrap(),
            "Type: key-announcementDate: 2026-11-24T05:00:00ZExpires: 2026-12-01T05:00:00Z\
             -----BEGIN PGP PUBLIC KEY BLOCK-----mDMEZ=abcd-----END PGP PUBLIC KEY BLOCK-----"
        );
        assert_eq!(
            String::from_utf8(p.key).unwrap(),
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ\n=abcd\n\
             -----END PGP PUBLIC KEY BLOCK-----\n"
        );
        // The verified message is BEGIN..END only, CRs removed.
        let m = String::from_utf8(p.message).unwrap();
        assert!(m.starts_with("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"));
        assert!(m.ends_with("-----END PGP SIGNATURE-----\n"));
        assert!(!m.contains('\r') && !m.contains("junk"));
    }

    #[test]
    fn missing_parts_in_order() {
        let full = signed(&body());
        let without = |what: &str| -> String {
            full.lines()
                .filter(|l| !l.starts_with(what))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        for (line, part) in [
            ("-----BEGIN PGP SIGNED", "signed message start"),
            ("-----END PGP SIGNATURE", "signed message end"),
            ("- -----BEGIN PGP PUBLIC", "public key start"),
            ("- -----END PGP PUBLIC", "public key end"),
            ("ProofOfWork: ", "ProofOfWork"),
            ("-----BEGIN PGP SIGNATURE", "signature"),
            ("Date: ", "Date"),
        ] {
            let r = Parts::find(without(line).as_bytes()).err();
            assert_eq!(r, Some(KeyRejection::Missing(part)), "{line}");
        }
        // Expires is optional.
        assert!(Parts::find(without("Expires: ").as_bytes()).is_ok());
        // Parts before the message start do not count.
        let outside = format!("{KEY}Date: 2026-11-24T05:00:00Z\n");
        let r = Parts::find(outside.as_bytes()).err();
        assert_eq!(r, Some(KeyRejection::Missing("signed message start")));
    }

    #[test]
    fn checked_lines_must_be_signed() {
        // A Date armour header comes before the signed Date.
        let hdr = signed(&body()).replace(
            "Hash: SHA256\n",
            "Hash: SHA256\nDate: 2030-01-01T00:00:00Z\n",
        );
        let r = Parts::find(hdr.as_bytes()).err();
        assert_eq!(r, Some(KeyRejection::Unsigned("Date")));
        // No blank line ending the armour headers: nothing is signed text.
        let no_body = signed(&body()).replacen("Hash: SHA256\n\n", "Hash: SHA256\n", 1);
        let no_body = no_body.replace("\n\n- -----BEGIN", "\n- -----BEGIN");
        let r = Parts::find(no_body.as_bytes()).err();
        assert_eq!(r, Some(KeyRejection::Unsigned("ProofOfWork")));
    }

    #[test]
    fn verify_rejects_before_and_at_the_crypto() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        let bad_date = signed(&body().replace("2026-11-24T05:00:00Z", "2026-02-30T05:00:00Z"));
        assert_eq!(verify(bad_date.as_bytes(), now), Err(KeyRejection::BadDate));
        // The score is over the lines after the PoW line, armour lines unescaped.
        let b = body();
        let rest: String = b
            .lines()
            .skip(1)
            .map(|l| l.replace("- -----", "-----"))
            .collect();
        let (bits, n) = pow::verify(rest.as_bytes(), "bd,1,2");
        assert!(bits < 24);
        assert_eq!(
            verify(signed(&b).as_bytes(), now),
            Err(KeyRejection::PowTooWeak { bits, n })
        );
        // A sufficient proof reaches the key block, which is not a certificate.
        let proof = pow::generate(rest.as_bytes(), 24, 2);
        let good_pow = signed(&b.replace("bd,1,2", &proof));
        assert!(matches!(
            verify(good_pow.as_bytes(), now),
            Err(KeyRejection::KeyUnreadable(_) | KeyRejection::KeyCount(0))
        ));
    }

    #[test]
    fn first_date_is_inside_the_message() {
        let block = format!("Date: 2030-01-01T00:00:00Z\n{}", signed(&body()));
        let want = Utc.with_ymd_and_hms(2026, 11, 24, 5, 0, 0).unwrap();
        assert_eq!(first_date(block.as_bytes()), Some(want));
        assert_eq!(first_date(b"Date: 2026-11-24T05:00:00Z\n"), None);
    }
}
