//! Times as the user gives them (`--time`) and as tables show them, in UTC: the collector
//! answers in unix seconds and this CLI carries no time zone database.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in unix seconds (millisecond precision).
pub fn now() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    d.as_millis() as f64 / 1000.0
}

/// `now`, unix seconds (`1700000000`, `1700000000.5`) or RFC 3339
/// (`2026-01-02T03:04:05Z`, `…05.250+02:00`), in unix seconds.
pub fn parse_time(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now());
    }
    if let Ok(v) = s.parse::<f64>() {
        if v.is_finite() {
            return Ok(v);
        }
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("invalid time {s:?}: expected now, unix seconds or RFC 3339 (2026-01-02T03:04:05Z)")
    })
}

fn parse_rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rb[0] == b'-' {
                -o
            } else {
                o
            }
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since the epoch (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD` and `HH:MM:SS` (UTC) of unix seconds (fractions dropped).
pub fn utc_parts(t: f64) -> (String, String) {
    let s = t.floor() as i64;
    let (y, m, d) = civil_from_days(s.div_euclid(86_400));
    let r = s.rem_euclid(86_400);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", r / 3600, r / 60 % 60, r % 60),
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
#[cfg(test)]
fn format_utc(t: f64) -> String {
    let (d, hms) = utc_parts(t);
    format!("{d}T{hms}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_each_form() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000.0));
        assert_eq!(parse_time("1700000000.5"), Ok(1_700_000_000.5));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000.0));
        assert_eq!(parse_time("2023-11-14T22:13:20.250Z"), Ok(1_700_000_000.25));
        assert_eq!(parse_time("2023-11-15T00:13:20+02:00"), Ok(1_700_000_000.0));
        assert_eq!(parse_time("2023-11-14T20:13:20-02:00"), Ok(1_700_000_000.0));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0.0));
        assert!((parse_time("now").unwrap() - now()).abs() < 5.0);
        for bad in [
            "",
            "yesterday",
            "2023-11-14",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20",
            "NaN",
            "inf",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_formatting_inverts_parsing() {
        assert_eq!(format_utc(1_700_000_000.9), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400.0), "2000-02-29T00:00:00Z");
        for t in [0.0, 951_782_400.0, 1_700_000_000.0, 4_102_444_800.0] {
            assert_eq!(parse_time(&format_utc(t)), Ok(t));
        }
    }
}
