//! Key announcements (docs/protocol.md §7.5) built with real GnuPG: fresh keys, the stock
//! client's announcement text, a real 24-bit proof of work and `gpg --clearsign`; then
//! `validate_merge` in-process, and once through a real `storeherd store`.
//!
//! Every test needs `gpg`; without it they pass after printing why they did nothing.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sequoia_openpgp::types::ReasonForRevocation;

use storeherd::protocol::compose;
use storeherd::protocol::dt::format_dt;
use storeherd::protocol::pow;
use storeherd::server::keyannounce::KeyRejection;
use storeherd::server::validate::{validate_merge, Limits, Merged, Reject};
use support::gpg::{announce, announcement_text, Fields, Gpg};
use support::store::{Options, TestServer};

const BEGIN_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const END_KEY: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// Recomputes the ProofOfWork line of a signed announcement as §7.5 step 2 defines its
/// text, so that a tampered body fails only on its signature.
fn repow(block: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(block.to_vec()).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    let p = lines
        .iter()
        .position(|l| l.starts_with("ProofOfWork: "))
        .unwrap();
    let s = lines
        .iter()
        .position(|l| *l == "-----BEGIN PGP SIGNATURE-----")
        .unwrap();
    let data: String = lines[p + 1..s]
        .iter()
        .map(|l| match *l {
            l if l == format!("- {BEGIN_KEY}") || l == format!("- {END_KEY}") => &l[2..],
            l => l,
        })
        .collect();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out[p] = format!("ProofOfWork: {}", pow::generate(data.as_bytes(), 24, 2));
    out.join("\n").into_bytes()
}

fn replace_line(block: &[u8], prefix: &str, with: &str) -> Vec<u8> {
    let text = String::from_utf8(block.to_vec()).unwrap();
    let mut done = false;
    let out: Vec<String> = text
        .split('\n')
        .map(|l| {
            if !done && l.starts_with(prefix) {
                done = true;
                with.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(done, "no line {prefix:?}");
    out.join("\n").into_bytes()
}

/// `validate_merge` as a server upload by `user`.
fn validate(
    key: &str,
    old: Option<&[u8]>,
    new: &[u8],
    user: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Merged, Reject> {
    validate_merge(key, old, new, false, user, &Limits::default(), now)
}

fn rejected(r: Result<Merged, Reject>) -> KeyRejection {
    match r {
        Err(Reject::KeyAnnouncement(k)) => k,
        other => panic!("expected a key-announcement rejection, got {other:?}"),
    }
}

/// Whole seconds, as the Date lines carry them.
fn ago(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() - secs, 0).unwrap()
}

#[test]
fn valid_announcement_is_stored_as_sent_and_updates_must_be_newer() {
    let Some(gpg) = Gpg::new("valid_announcement") else {
        return;
    };
    let fpr = gpg.gen_key("Alice", "default", "never");
    let key_block = gpg.export(&[&fpr]);
    let first = announce(&gpg, &fpr, &Fields::new(&key_block, ago(7200)));
    let second_date = ago(3600);
    let second = announce(&gpg, &fpr, &Fields::new(&key_block, second_date));
    let now = Utc::now();

    let m = validate(&fpr, None, &first, Some(&fpr), now).unwrap();
    assert_eq!(m.block, first, "stored byte-identical");
    assert_eq!(m.notify, None);
    // The fingerprint is compared case-insensitively, as key and as posting user.
    let lower = fpr.to_lowercase();
    assert!(validate(&lower, None, &first, Some(&lower), now).is_ok());
    // The DHT gives no posting user.
    assert!(validate_merge(&fpr, None, &first, true, None, &Limits::default(), now).is_ok());
    // CRLF line ends are read with the CRs removed, and stored as sent.
    let crlf = String::from_utf8(first.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    assert_eq!(
        validate(&fpr, None, &crlf, Some(&fpr), now).unwrap().block,
        crlf
    );

    // Two copies of the same key are one key (GnuPG merges them on import).
    let twice = armour_twice(&gpg.run(&["--export", &fpr], b"").stdout);
    let ann = announce(&gpg, &fpr, &Fields::new(&twice, ago(7000)));
    assert_eq!(
        validate(&fpr, None, &ann, Some(&fpr), Utc::now())
            .unwrap()
            .block,
        ann
    );

    // An update must be strictly newer.
    let m = validate(&fpr, Some(&first), &second, Some(&fpr), now).unwrap();
    assert_eq!(m.block, second);
    assert_eq!(
        rejected(validate(&fpr, Some(&second), &first, Some(&fpr), now)),
        KeyRejection::NotNewer
    );
    assert_eq!(
        validate(&fpr, Some(&second), &second, Some(&fpr), now),
        Err(Reject::Unchanged)
    );
    // The same Date (a different Expires, so a different block): not newer.
    let mut f = Fields::new(&key_block, second_date);
    f.expires += TimeDelta::seconds(1);
    let same_date = announce(&gpg, &fpr, &f);
    assert_ne!(same_date, second);
    assert_eq!(
        rejected(validate(&fpr, Some(&second), &same_date, Some(&fpr), now)),
        KeyRejection::NotNewer
    );
    // A block of another type under the same key.
    let (_, data) = compose::data_block(b"not a key", ago(60));
    assert_eq!(
        validate(&fpr, Some(&data), &second, Some(&fpr), now),
        Err(Reject::TypeMismatch)
    );
}

#[test]
fn invalid_announcements_are_rejected() {
    let Some(gpg) = Gpg::new("invalid_announcements") else {
        return;
    };
    let alice = gpg.gen_key("Alice", "default", "never");
    let bob = gpg.gen_key("Bob", "ed25519", "never");
    let alice_block = gpg.export(&[&alice]);
    let good = announce(&gpg, &alice, &Fields::new(&alice_block, ago(600)));
    let now = Utc::now();
    assert!(validate(&alice, None, &good, Some(&alice), now).is_ok());

    // Tampered signed text (PoW redone, so only the signature is wrong).
    let tampered = repow(&replace_line(
        &good,
        "Userid: ",
        "Userid: Mallory <mallory@example.org>",
    ));
    assert!(matches!(
        rejected(validate(&alice, None, &tampered, Some(&alice), now)),
        KeyRejection::BadSignature(_)
    ));
    // A tampered Date is a tampered body too.
    let redated = repow(&replace_line(
        &good,
        "Date: ",
        &format!("Date: {}", format_dt(ago(60))),
    ));
    assert!(matches!(
        rejected(validate(&alice, None, &redated, Some(&alice), now)),
        KeyRejection::BadSignature(_)
    ));
    // Without the PoW redone, the proof no longer fits the text.
    let raw_tamper = replace_line(&good, "Userid: ", "Userid: Mallory <m@example.org>");
    assert!(matches!(
        rejected(validate(&alice, None, &raw_tamper, Some(&alice), now)),
        KeyRejection::PowTooWeak { .. }
    ));

    // Alice's key, signed by Bob.
    let by_bob = announce(&gpg, &bob, &Fields::new(&alice_block, ago(600)));
    assert!(matches!(
        rejected(validate(&alice, None, &by_bob, Some(&alice), now)),
        KeyRejection::BadSignature(_)
    ));

    // Two keys in the block.
    let both = gpg.export(&[&alice, &bob]);
    let two = announce(&gpg, &alice, &Fields::new(&both, ago(600)));
    assert_eq!(
        rejected(validate(&alice, None, &two, Some(&alice), now)),
        KeyRejection::KeyCount(2)
    );

    // A good announcement of Bob's key stored under Alice's fingerprint.
    let bob_block = gpg.export(&[&bob]);
    let bobs = announce(&gpg, &bob, &Fields::new(&bob_block, ago(600)));
    let r = validate(&bob, None, &bobs, Some(&bob), now);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        rejected(validate(&alice, None, &bobs, Some(&alice), now)),
        KeyRejection::FingerprintMismatch
    );

    // Posted by someone else, or anonymously.
    assert_eq!(
        rejected(validate(&alice, None, &good, Some(&bob), now)),
        KeyRejection::NotOwner
    );
    assert_eq!(
        rejected(validate(&alice, None, &good, Some("NONE"), now)),
        KeyRejection::NotOwner
    );

    // Expired (Expires in the past), too old (age ≥ max_age_key).
    let mut f = Fields::new(&alice_block, ago(8 * 86_400));
    f.expires = ago(3600);
    let expired = announce(&gpg, &alice, &f);
    assert_eq!(
        rejected(validate(&alice, None, &expired, Some(&alice), now)),
        KeyRejection::Expired
    );
    let old = announce(
        &gpg,
        &alice,
        &Fields::new(&alice_block, ago(2_678_400 + 60)),
    );
    assert_eq!(
        rejected(validate(&alice, None, &old, Some(&alice), now)),
        KeyRejection::TooOld
    );
    // The configured limit: age == max_age_key is already too old, one second less is not.
    let date = ago(1000);
    let edge = announce(&gpg, &alice, &Fields::new(&alice_block, date));
    let now = Utc::now();
    let age = now.signed_duration_since(date).num_seconds();
    let limits = |max| Limits {
        max_age_key: max,
        ..Limits::default()
    };
    let at = |max| validate_merge(&alice, None, &edge, false, Some(&alice), &limits(max), now);
    assert_eq!(rejected(at(age)), KeyRejection::TooOld);
    assert!(at(age + 1).is_ok());

    // Weak proof of work (checked to really be under 24 bits).
    let mut f = Fields::new(&alice_block, ago(600));
    f.pow_bits = 12;
    let text = announcement_text(&f);
    let proof = text.lines().next().unwrap()["ProofOfWork: ".len()..].to_string();
    let data: String = text.lines().skip(1).collect();
    let (bits, n) = pow::verify(data.as_bytes(), &proof);
    assert!(bits < 24 && n == 2, "{bits} {n}");
    let weak = gpg.clearsign(&alice, text.as_bytes());
    assert_eq!(
        rejected(validate(&alice, None, &weak, Some(&alice), now)),
        KeyRejection::PowTooWeak { bits, n }
    );

    // Missing parts, in §7.5's order.
    let cut = |what: &str| {
        let t = String::from_utf8(good.clone()).unwrap();
        t.lines()
            .filter(|l| !l.starts_with(what))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    };
    for (line, part) in [
        ("-----BEGIN PGP SIGNED MESSAGE-----", "signed message start"),
        ("-----END PGP SIGNATURE-----", "signed message end"),
        ("- -----BEGIN PGP PUBLIC KEY", "public key start"),
        ("- -----END PGP PUBLIC KEY", "public key end"),
        ("ProofOfWork: ", "ProofOfWork"),
        ("Date: ", "Date"),
    ] {
        assert_eq!(
            rejected(validate(&alice, None, &cut(line), Some(&alice), now)),
            KeyRejection::Missing(part),
            "{line}"
        );
    }
    // A malformed date.
    let bad_date = replace_line(&good, "Date: ", "Date: 2026-11-24 05:00:00");
    assert_eq!(
        rejected(validate(&alice, None, &bad_date, Some(&alice), now)),
        KeyRejection::BadDate
    );
    // A Date smuggled into the armour headers is outside the signed text.
    let smuggled = replace_line(
        &good,
        "-----BEGIN PGP SIGNED MESSAGE-----",
        &format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nDate: {}",
            format_dt(ago(10))
        ),
    );
    assert_eq!(
        rejected(validate(&alice, None, &smuggled, Some(&alice), now)),
        KeyRejection::Unsigned("Date")
    );
}

#[test]
fn signing_subkeys_and_unusable_signing_keys() {
    let Some(gpg) = Gpg::new("signing_subkeys") else {
        return;
    };
    // A signature by a signing subkey counts for the primary fingerprint.
    let carol = gpg.gen_key("Carol", "default", "never");
    let sub = gpg.add_signing_subkey(&carol);
    assert_ne!(sub, carol);
    let block = gpg.export(&[&carol]);
    let by_sub = announce(&gpg, &sub, &Fields::new(&block, ago(600)));
    let now = Utc::now();
    assert_eq!(
        validate(&carol, None, &by_sub, Some(&carol), now)
            .unwrap()
            .block,
        by_sub
    );
    // …but a subkey's own fingerprint is not the store key.
    assert_eq!(
        rejected(validate(&sub, None, &by_sub, Some(&sub), now)),
        KeyRejection::FingerprintMismatch
    );

    // A key that expires in an hour: good now, not two hours later (GnuPG's EXPKEYSIG).
    let dave = gpg.gen_key("Dave", "ed25519", "seconds=3600");
    let block = gpg.export(&[&dave]);
    let ann = announce(&gpg, &dave, &Fields::new(&block, ago(60)));
    let now = Utc::now();
    assert!(validate(&dave, None, &ann, Some(&dave), now).is_ok());
    let later = now + TimeDelta::seconds(7200);
    assert_eq!(
        rejected(validate(&dave, None, &ann, Some(&dave), later)),
        KeyRejection::KeyExpired
    );

    // A revoked key (GnuPG's REVKEYSIG). gpg will not sign with a key it knows is revoked,
    // so the revocation is added with sequoia to the copy that goes into the announcement.
    let erin = gpg.gen_key("Erin", "ed25519", "never");
    let secret = gpg.export_secret(&erin);
    let revoked = revoked_key_block(&secret, ReasonForRevocation::KeyCompromised, None);
    let ann = announce(&gpg, &erin, &Fields::new(&revoked, ago(60)));
    assert_eq!(
        rejected(validate(&erin, None, &ann, Some(&erin), Utc::now())),
        KeyRejection::KeyRevoked
    );
    // A soft revocation (key superseded) counts from its own date: the announcement is good
    // until then and rejected after it, as GnuPG judges it when it verifies.
    let from = Utc::now() + TimeDelta::seconds(600);
    let superseded = revoked_key_block(&secret, ReasonForRevocation::KeySuperseded, Some(from));
    let ann = announce(&gpg, &erin, &Fields::new(&superseded, ago(60)));
    let now = Utc::now();
    assert!(validate(&erin, None, &ann, Some(&erin), now).is_ok());
    let later = from + TimeDelta::seconds(60);
    assert_eq!(
        rejected(validate(&erin, None, &ann, Some(&erin), later)),
        KeyRejection::KeyRevoked
    );
}

/// `binary` (an exported key) twice in one armoured public key block.
fn armour_twice(binary: &[u8]) -> String {
    use sequoia_openpgp::armor::{Kind, Writer};
    let mut w = Writer::new(Vec::new(), Kind::PublicKey).unwrap();
    w.write_all(binary).unwrap();
    w.write_all(binary).unwrap();
    let mut text = String::from_utf8(w.finalize().unwrap()).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The armoured public certificate of `secret` (an unprotected transferable secret key),
/// with a revocation for `reason` added, dated `at` (default: now).
fn revoked_key_block(
    secret: &[u8],
    reason: ReasonForRevocation,
    at: Option<DateTime<Utc>>,
) -> String {
    use openpgp::cert::CertRevocationBuilder;
    use openpgp::parse::Parse;
    use openpgp::serialize::SerializeInto;
    use sequoia_openpgp as openpgp;

    let cert = openpgp::Cert::from_bytes(secret).unwrap();
    let mut signer = cert
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap();
    let mut builder = CertRevocationBuilder::new()
        .set_reason_for_revocation(reason, b"test")
        .unwrap();
    if let Some(at) = at {
        builder = builder.set_signature_creation_time(at.into()).unwrap();
    }
    let rev = builder.build(&mut signer, &cert, None).unwrap();
    let (cert, _) = cert.insert_packets(rev).unwrap();
    let public = cert.strip_secret_key_material();
    let armoured = public.armored().to_vec().unwrap();
    String::from_utf8(armoured).unwrap()
}

#[test]
fn arbitrary_input_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x6b65_7961_6e6e);
    let deadline = Instant::now() + Duration::from_secs(60);
    let key = "0123456789ABCDEF0123456789ABCDEF01234567";
    // A real announcement to mutate, when gpg is here; a synthetic one otherwise.
    let gpg = Gpg::new("arbitrary_input (mutating a synthetic block only)");
    let (key, base) = match &gpg {
        Some(gpg) => {
            let fpr = gpg.gen_key("Frank", "ed25519", "never");
            let block = gpg.export(&[&fpr]);
            (
                fpr.clone(),
                announce(gpg, &fpr, &Fields::new(&block, ago(60))),
            )
        }
        None => (key.to_string(), synthetic()),
    };
    // After the key and signature exist: on a loaded machine making them can take a while,
    // and a `now` taken earlier would see a key created in its future.
    let now = Utc::now();
    assert!(gpg.is_none() || validate(&key, None, &base, Some(&key), now).is_ok());
    let vocabulary: [&[u8]; 12] = [
        b"-----BEGIN PGP SIGNED MESSAGE-----",
        b"-----BEGIN PGP SIGNATURE-----",
        b"-----END PGP SIGNATURE-----",
        b"- -----BEGIN PGP PUBLIC KEY BLOCK-----",
        b"- -----END PGP PUBLIC KEY BLOCK-----",
        b"ProofOfWork: bd,0,1",
        b"Date: 2026-11-24T00:00:00Z",
        b"Expires: 9999-12-31T23:59:59Z",
        b"Type: key-announcement",
        b"",
        b"Hash: SHA256",
        b"=AAAA",
    ];
    for i in 0..400 {
        if Instant::now() > deadline {
            break;
        }
        let mut b = base.clone();
        match i % 5 {
            // Flip random bytes.
            0 => {
                for _ in 0..rng.gen_range(1..8) {
                    let at = rng.gen_range(0..b.len());
                    b[at] = rng.gen();
                }
            }
            // Truncate.
            1 => b.truncate(rng.gen_range(0..b.len())),
            // Insert a protocol line somewhere.
            2 => {
                let mut at = rng.gen_range(0..b.len());
                while at > 0 && b[at - 1] != b'\n' {
                    at -= 1;
                }
                let mut line = vocabulary[rng.gen_range(0..vocabulary.len())].to_vec();
                line.push(b'\n');
                b.splice(at..at, line);
            }
            // Random line soup.
            3 => {
                b.clear();
                for _ in 0..rng.gen_range(0..40) {
                    b.extend_from_slice(vocabulary[rng.gen_range(0..vocabulary.len())]);
                    b.push(if rng.gen_bool(0.9) { b'\n' } else { b'\r' });
                }
            }
            // Random bytes.
            _ => {
                b = (0..rng.gen_range(0..2000)).map(|_| rng.gen()).collect();
            }
        }
        let r = validate(&key, Some(&base), &b, Some(&key), now);
        if b != base {
            assert!(r.is_err() || r.as_ref().unwrap().block == b);
        }
        let _ = validate(&key, None, &b, None, now);
    }
}

/// A well-formed but unsigned announcement shape for mutation when gpg is missing.
fn synthetic() -> Vec<u8> {
    format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nProofOfWork: bd,0,1\n\
         Type: key-announcement\nDate: {}\n\n- {BEGIN_KEY}\n\nAAAA\n=AAAA\n- {END_KEY}\n\
         -----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n",
        format_dt(ago(60))
    )
    .into_bytes()
}

#[test]
fn stored_through_a_real_server_and_read_back() {
    let Some(gpg) = Gpg::new("stored_through_a_real_server") else {
        return;
    };
    let fpr = gpg.gen_key("Grace", "ed25519", "never");
    let block = gpg.export(&[&fpr]);
    let ann = announce(&gpg, &fpr, &Fields::new(&block, ago(60)));
    let auth = format!(
        "{}{fpr} GRACEKEY0123456 2026-01-01T00:00:00Z\n",
        support::store::accounts()
    );
    let server = TestServer::start_with(Options::default().auth(&auth));
    let rt = support::current_thread();
    rt.block_on(async {
        // Anonymous: never stored.
        let mut anon = server.client().await;
        assert!(
            anon.store(&fpr, &ann).await.unwrap(),
            "upload is acknowledged"
        );
        assert!(server.wait_queue_empty(Duration::from_secs(20)));
        assert_eq!(anon.get(&fpr, None).await.unwrap(), None);
        // Logged in as another user: not stored either.
        let mut other = server.client().await;
        assert!(other
            .login(support::store::USER, support::store::USER_KEY)
            .await
            .unwrap());
        assert!(other.store(&fpr, &ann).await.unwrap());
        assert!(server.wait_queue_empty(Duration::from_secs(20)));
        assert_eq!(other.get(&fpr, None).await.unwrap(), None);
        // Logged in as the fingerprint: stored and read back byte-identical.
        let mut c = server.client().await;
        assert!(c.login(&fpr, "GRACEKEY0123456").await.unwrap());
        assert!(c.store(&fpr, &ann).await.unwrap());
        assert!(server.wait_queue_empty(Duration::from_secs(20)));
        assert_eq!(c.get(&fpr, None).await.unwrap(), Some(ann.clone()));
        assert_eq!(anon.get(&fpr, None).await.unwrap(), Some(ann.clone()));
    });
    assert!(server
        .log()
        .contains("Key does not match logged in user hash"));
}
