//! Building PromQL from what the user typed: durations, string literals and the label
//! matchers the top views share. Everything the user gives goes into a query through
//! [`quote`], so a node regex or a cluster name can never end the string it sits in.

use std::fmt::Write;
use std::time::Duration;

/// A PromQL string literal: `"` … `"` with `\` and `"` escaped, and control characters
/// written as escapes, so the parser reads back exactly `s`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses a Prometheus duration: one or more `<number><unit>` with units `ms`, `s`, `m`,
/// `h`, `d` (24 h), `w` (7 d) and `y` (365 d), largest first (`1h30m`, `90s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: expected e.g. 30s, 5m, 1h30m, 500ms (units ms s m h d w y)"
        )
    };
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    // Index into UNITS of the last unit used: each must be smaller than the one before.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let i = UNITS.iter().position(|(u, _)| *u == unit).ok_or_else(bad)?;
        if last.is_some_and(|l| i <= l) {
            return Err(bad());
        }
        last = Some(i);
        total = n
            .checked_mul(UNITS[i].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// A duration as PromQL writes it: whole seconds as `<n>s`, otherwise `<n>ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The series a view looks at: an optional cluster (exact) and node (regex, anchored as
/// PromQL anchors every `=~`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub cluster: Option<String>,
    pub node: Option<String>,
}

impl Filter {
    /// The matchers inside `{…}`, each followed by `,`, with `extra` (already PromQL) first.
    /// Empty when there is nothing to match.
    pub fn matchers(&self, extra: &[&str]) -> String {
        let mut parts: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(c) = &self.cluster {
            parts.push(format!("cluster={}", quote(c)));
        }
        if let Some(n) = &self.node {
            parts.push(format!("node_name=~{}", quote(n)));
        }
        parts.join(",")
    }

    /// `metric{matchers}`.
    pub fn selector(&self, metric: &str, extra: &[&str]) -> String {
        let m = self.matchers(extra);
        if m.is_empty() {
            metric.to_owned()
        } else {
            format!("{metric}{{{m}}}")
        }
    }
}

/// `sum by (labels) (rate(selector[since]))`.
pub fn sum_rate(by: &str, selector: &str, since: Duration) -> String {
    format!(
        "sum by ({by}) (rate({selector}[{}]))",
        format_duration(since)
    )
}

/// `expr and on (by) topk(limit, ranking)`: the series of `expr` whose group is among the
/// top `limit` of `ranking`, so a detail query returns no more groups than the table shows.
pub fn restricted_to_top(expr: &str, by: &str, limit: usize, ranking: &str) -> String {
    format!("{expr} and on ({by}) topk({limit}, {ranking})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_backslash_quote_and_control_characters() {
        assert_eq!(quote("node-a"), r#""node-a""#);
        assert_eq!(quote(r"node-\d+"), r#""node-\\d+""#);
        assert_eq!(quote(r#"a"b"#), r#""a\"b""#);
        assert_eq!(quote("a\nb\tc\u{1}"), r#""a\nb\tc\u0001""#);
        // A try at ending the string and adding a matcher stays inside the string.
        assert_eq!(quote(r#"x", a="b"#), r#""x\", a=\"b""#);
    }

    #[test]
    fn durations_parse_like_prometheus() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "m", "5x", "1m1h", "5m5m", "-5m", "1.5m", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_format_as_seconds_or_milliseconds() {
        assert_eq!(format_duration(Duration::from_secs(300)), "300s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn filters_become_matchers() {
        let none = Filter::default();
        assert_eq!(none.selector("m", &[]), "m");
        assert_eq!(
            none.selector("m", &[r#"address!="other""#]),
            r#"m{address!="other"}"#
        );
        let f = Filter {
            cluster: Some("prod".into()),
            node: Some(r#"node-(a|b)\d"#.into()),
        };
        assert_eq!(
            f.selector("m", &[r#"reason="X""#]),
            r#"m{reason="X",cluster="prod",node_name=~"node-(a|b)\\d"}"#
        );
    }

    #[test]
    fn rate_and_top_restriction() {
        let q = sum_rate("a, b", "m", Duration::from_secs(300));
        assert_eq!(q, "sum by (a, b) (rate(m[300s]))");
        assert_eq!(
            restricted_to_top("x", "a", 3, "y"),
            "x and on (a) topk(3, y)"
        );
    }
}
