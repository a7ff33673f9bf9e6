//! The end of a certificate's validity (`notAfter`), read from its DER without an X.509
//! library: Certificate → tbsCertificate → (version) serialNumber, signature, issuer →
//! validity { notBefore, notAfter }.

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::tz::TimeZone;

const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT Version`, present in v2/v3 certificates.
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `notAfter` of a DER certificate; `None` when it cannot be read.
pub(super) fn not_after(der: &[u8]) -> Option<Timestamp> {
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let (tag, _, after_version) = element(tbs)?;
    let mut rest = if tag == VERSION { after_version } else { tbs };
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let after_not_before = element(validity)?.2;
    let (tag, time, _) = element(after_not_before)?;
    parse_time(tag, time)
}

/// One DER element: tag, contents, what follows.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, byte| len << 8 | usize::from(*byte));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `YYMMDDHHMMSSZ` (UTCTime, years 1950–2049) or `YYYYMMDDHHMMSSZ` (GeneralizedTime).
fn parse_time(tag: u8, text: &[u8]) -> Option<Timestamp> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i16> {
        std::str::from_utf8(digits.get(range)?).ok()?.parse().ok()
    };
    let (year, at) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let part = |i: usize| number(at + 2 * i..at + 2 * i + 2).and_then(|v| i8::try_from(v).ok());
    let datetime = DateTime::new(year, part(0)?, part(1)?, part(2)?, part(3)?, part(4)?, 0).ok()?;
    Some(datetime.to_zoned(TimeZone::UTC).ok()?.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate (rcgen) valid until the given day.
    fn certificate(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_time() {
        for ((year, month, day), want) in [
            ((2020, 1, 2), "2020-01-02T00:00:00Z"),
            ((2049, 12, 31), "2049-12-31T00:00:00Z"),
            // From 2050 on, certificates carry GeneralizedTime.
            ((2070, 6, 30), "2070-06-30T00:00:00Z"),
        ] {
            let got = not_after(&certificate(year, month, day)).map(|t| t.to_string());
            assert_eq!(got.as_deref(), Some(want));
        }
    }

    #[test]
    fn garbage_and_truncation_read_as_unknown() {
        let good = certificate(2030, 1, 1);
        for cut in [0, 1, 2, 10, good.len() / 2] {
            // A prefix never panics; it may still hold the date when cut after it.
            let _ = not_after(&good[..cut]);
        }
        assert_eq!(not_after(b"not a certificate"), None);
        assert_eq!(parse_time(UTC_TIME, b"20010100000Z"), None, "too short");
        assert_eq!(parse_time(UTC_TIME, b"201301000000Z"), None, "month 13");
        assert_eq!(parse_time(GENERALIZED_TIME, b"2020010100000\xffZ"), None);
    }
}
