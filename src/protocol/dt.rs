//! The protocol's date-time text `dddd-dd-ddTdd:dd:ddZ` (docs/protocol.md notation, §7.1).

use chrono::{DateTime, NaiveDate, Utc};

/// True if `s` has the `DT` shape: exactly `dddd-dd-ddTdd:dd:ddZ`, with `T` and `Z` in
/// either letter case (the original's patterns are case-insensitive).
pub fn is_dt_shape(s: &[u8]) -> bool {
    if s.len() != 20 {
        return false;
    }
    s.iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b'T' || c == b't',
        13 | 16 => c == b':',
        19 => c == b'Z' || c == b'z',
        _ => c.is_ascii_digit(),
    })
}

/// Parses a `DT` text. `None` if the shape is wrong or the date does not exist: year 0,
/// month 13, 31 February, hour 24, second 60 … (the original raised an exception on all of
/// these, §14 defect 2; here they are simply not dates).
pub fn parse_dt(s: &[u8]) -> Option<DateTime<Utc>> {
    if !is_dt_shape(s) {
        return None;
    }
    let num = |a: usize, b: usize| {
        s[a..b]
            .iter()
            .fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'))
    };
    let year = num(0, 4);
    if year == 0 {
        // Python's datetime starts at year 1; chrono would accept year 0.
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, num(5, 7), num(8, 10))?;
    // and_hms_opt rejects second 60 (chrono only allows leap seconds through the nano field).
    let t = date.and_hms_opt(num(11, 13), num(14, 16), num(17, 19))?;
    Some(t.and_utc())
}

/// Formats a time as `DT` (whole seconds, upper-case `T` and `Z`).
pub fn format_dt(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_valid_dates() {
        let t = Utc.with_ymd_and_hms(2015, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(parse_dt(b"2015-06-01T12:00:00Z"), Some(t));
        assert_eq!(parse_dt(b"2015-06-01t12:00:00z"), Some(t));
        assert_eq!(
            parse_dt(b"2024-02-29T23:59:59Z"),
            Some(Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap())
        );
        assert_eq!(format_dt(t), "2015-06-01T12:00:00Z");
    }

    #[test]
    fn rejects_bad_shapes_and_impossible_dates() {
        for s in [
            &b"2015-06-01 12:00:00Z"[..],
            b"2015-06-01T12:00:00",
            b"2015-6-01T12:00:00Z",
            b"2015-06-01T12:00:00ZZ",
            b"+015-06-01T12:00:00Z",
            b"2015-13-01T12:00:00Z",
            b"2015-00-01T12:00:00Z",
            b"2015-02-29T12:00:00Z",
            b"2015-04-31T12:00:00Z",
            b"2015-06-00T12:00:00Z",
            b"2015-06-01T24:00:00Z",
            b"2015-06-01T12:60:00Z",
            b"2015-06-01T12:00:60Z",
            b"2015-06-01T12:00:61Z",
            b"0000-01-01T00:00:00Z",
            "2015-06-01T12:00:0\u{663}Z".as_bytes(),
        ] {
            assert_eq!(parse_dt(s), None, "{}", String::from_utf8_lossy(s));
        }
    }
}
