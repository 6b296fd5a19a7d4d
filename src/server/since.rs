//! What a GET returns: the `… SINCE d` filter (docs/protocol.md §4.3) and the hiding of private
//! block types from anonymous sessions (§3.4 step 3).

use crate::protocol::dt::is_dt_shape;
use crate::protocol::header::{value, without_cr};

/// The stored block's lines as the original's GET walks them: split at LF, with no empty
/// piece after a final LF. A last line without LF is still a line (the original raised an
/// exception there, §4.3 "Bug/odd"). Python's iteration over a file's lines gives the same
/// pieces, which is how storutil reads a block (the prune uses this too).
pub(crate) fn get_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = block.strip_suffix(b"\n").unwrap_or(block);
    let empty = block.is_empty();
    body.split(|&c| c == b'\n').filter(move |_| !empty)
}

/// Applies `SINCE since` to a stored block (§4.3). Blocks other than message announcements
/// come back unchanged; announcements keep only the records dated `since` or later (a plain
/// string comparison) or undated. `None` means the result is empty: reply `NOT FOUND`.
pub fn since_filter(block: &[u8], since: &str) -> Option<Vec<u8>> {
    let since = since.as_bytes();
    let mut out: Vec<u8> = Vec::new();
    let mut first_output = true;
    let mut record: Vec<u8> = Vec::new();
    let mut record_date: Option<&[u8]> = None;
    let mut keep = |out: &mut Vec<u8>, record: &[u8], date: Option<&[u8]>| {
        if date.is_none_or(|d| d >= since) {
            if !first_output {
                out.extend_from_slice(b"NextMessage\n");
            }
            first_output = false;
            out.extend_from_slice(record);
        }
    };
    for raw in get_lines(block) {
        let end = raw.iter().rposition(|&c| c != b'\r').map_or(0, |i| i + 1);
        let line = &raw[..end];
        if value(line, b"TYPE: ").is_some()
            && !line.eq_ignore_ascii_case(b"TYPE: MESSAGE-ANNOUNCEMENT")
        {
            return Some(block.to_vec()); // not a message announcement
        }
        if let Some(d) = value(line, b"DATE: ").filter(|d| is_dt_shape(d)) {
            record_date = Some(d);
        }
        if line.eq_ignore_ascii_case(b"NEXTMESSAGE") {
            keep(&mut out, &record, record_date.take());
            record.clear();
        } else {
            record.extend_from_slice(line);
            record.push(b'\n');
        }
    }
    if !record.is_empty() {
        keep(&mut out, &record, record_date);
    }
    (!out.is_empty()).then_some(out)
}

/// True if an anonymous session must get `NOT FOUND` for this block (§3.4 step 3): its first
/// `Type: <letters and hyphens>` line (any case) names a message announcement, data or an
/// acknowledgment.
///
/// Deliberate deviation, toward privacy: CRs are removed before matching, as validation
/// does, so a block stored as `Type: data` + CR is hidden too (the original served it).
pub fn hidden_from_anonymous(block: &[u8]) -> bool {
    for raw in get_lines(block) {
        let line = without_cr(raw);
        let Some(ty) = value(&line, b"TYPE: ") else {
            continue;
        };
        if ty.is_empty() || !ty.iter().all(|&c| c.is_ascii_alphabetic() || c == b'-') {
            continue;
        }
        return [
            &b"message-announcement"[..],
            b"data",
            b"acknowledgment",
            b"acknowledgement",
        ]
        .iter()
        .any(|t| ty.eq_ignore_ascii_case(t));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_types_come_back_unchanged() {
        let data = b"Type: data\nDate: 2000-01-01T00:00:00Z\nData: 3\nabc";
        assert_eq!(since_filter(data, "2026-01-01T00:00:00Z").unwrap(), data);
        let claim = b"Type: address-claim\nDate: 2000-01-01T00:00:00Z\n";
        assert_eq!(since_filter(claim, "2026-01-01T00:00:00Z").unwrap(), claim);
        // Even a Type line after filtered records returns the whole block.
        let mixed = b"Date: 2000-01-01T00:00:00Z\nNextMessage\nType: x\n";
        assert_eq!(since_filter(mixed, "2026-01-01T00:00:00Z").unwrap(), mixed);
        assert_eq!(since_filter(b"", "2026-01-01T00:00:00Z"), None);
    }

    #[test]
    fn records_dates_and_separators() {
        let block =
            b"Type: message-announcement\r\nDate: 2026-01-02T00:00:00Z\nA: 1\nnextmessage\n\
                      Type: message-announcement\nDate: 2026-01-01T00:00:00Z\n\
                      Date: 2026-01-03T00:00:00Z\nNEXTMESSAGE\nB: undated\nNextMessage\n\
                      Date: 2025-12-31T00:00:00Z\n";
        let out = since_filter(block, "2026-01-02T00:00:00Z").unwrap();
        assert_eq!(
            out,
            b"Type: message-announcement\nDate: 2026-01-02T00:00:00Z\nA: 1\nNextMessage\n\
              Type: message-announcement\nDate: 2026-01-01T00:00:00Z\nDate: 2026-01-03T00:00:00Z\n\
              NextMessage\nB: undated\n"
        );
        // Plain string comparison: with a lower-case `t`, the same instant sorts later.
        let dated = b"Date: 2026-01-02T00:00:00Z\n";
        assert_eq!(since_filter(dated, "2026-01-02T00:00:00Z").unwrap(), dated);
        assert_eq!(since_filter(dated, "2026-01-02t00:00:00z"), None);
        // A last line without LF is still a line.
        assert_eq!(
            since_filter(b"Date: 2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z").unwrap(),
            b"Date: 2026-01-02T00:00:00Z\n"
        );
    }

    #[test]
    fn anonymous_hiding() {
        for hidden in [
            &b"Type: data\nData: 1\nx"[..],
            b"Junk\ntype: Message-Announcement\n",
            b"Type: acknowledgment\n",
            b"Type: acknowledgement\n",
            // CRs do not make a private block public.
            b"Type: data\r\nData: 1\nx",
            b"Type: da\rta\n",
        ] {
            assert!(
                hidden_from_anonymous(hidden),
                "{}",
                String::from_utf8_lossy(hidden)
            );
        }
        for shown in [
            &b"-----BEGIN PGP SIGNED MESSAGE-----\nType: key-announcement\n"[..],
            b"Type: address-claim\n",
            b"no type at all\n",
            b"",
            // The first letters-and-hyphens Type line decides; `da ta` is not one.
            b"Type: da ta\nType: key-announcement\n",
            b"Type: address-claim\nType: data\n",
        ] {
            assert!(
                !hidden_from_anonymous(shown),
                "{}",
                String::from_utf8_lossy(shown)
            );
        }
    }
}
