//! Tables as the terminal shows them (aligned columns, `kubectl` style) and numbers as a
//! person reads them (`1.2 MB/s`, `350 pkt/s`, `3m12s`). JSON output never goes through
//! here: it keeps the exact values.

/// Where a column's cells sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub header: String,
    pub align: Align,
}

impl Column {
    pub fn left(header: &str) -> Column {
        Column {
            header: header.to_owned(),
            align: Align::Left,
        }
    }

    pub fn right(header: &str) -> Column {
        Column {
            header: header.to_owned(),
            align: Align::Right,
        }
    }
}

/// A cell's text and whether it asks for attention (shown in red on a terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub warn: bool,
}

impl Cell {
    pub fn warn(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            warn: true,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell {
            text: printable(&text),
            warn: false,
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::from(text.to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: Vec<Column>) -> Table {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    /// Width of each column: its widest cell or header, in characters.
    pub fn widths(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|cell| cell.text.chars().count())
                    .chain([c.header.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The header line and one line per row, columns two spaces apart, no trailing
    /// blanks; with `color`, warning cells in red (ANSI).
    pub fn render(&self, color: bool) -> String {
        let widths = self.widths();
        let mut out = String::new();
        let header: Vec<Cell> = self
            .columns
            .iter()
            .map(|c| Cell::from(&*c.header))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (col, width)) in self.columns.iter().zip(&widths).enumerate() {
                let cell = row
                    .get(i)
                    .map(|c| (c.text.as_str(), c.warn))
                    .unwrap_or(("", false));
                let pad = width - cell.0.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                let (pre, post) = if color && cell.1 {
                    ("\x1b[31m", "\x1b[0m")
                } else {
                    ("", "")
                };
                match col.align {
                    Align::Left => {
                        line.push_str(pre);
                        line.push_str(cell.0);
                        line.push_str(post);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(pre);
                        line.push_str(cell.0);
                        line.push_str(post);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Text with control characters (a newline in a label value) escaped, so one row stays
/// one line.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `v` scaled by powers of 1000 with its SI prefix: at most three significant digits left
/// of the point, one decimal below 100, two significant digits below 1 (so a small
/// non-zero rate does not read as 0).
fn si(v: f64) -> (String, &'static str) {
    const PREFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if !v.is_finite() {
        return (format_special(v), "");
    }
    let mut i = 0;
    let mut x = v;
    loop {
        let text = plain(x);
        let shown: f64 = text.parse().unwrap_or(x);
        if shown.abs() < 1000.0 || i == PREFIXES.len() - 1 {
            return (text, PREFIXES[i]);
        }
        x /= 1000.0;
        i += 1;
    }
}

/// A number below 1000 in the precision `si` promises, trailing `.0` dropped.
fn plain(x: f64) -> String {
    let a = x.abs();
    let s = if a == 0.0 {
        return "0".to_owned();
    } else if a < 1.0 {
        let decimals = (1 - a.log10().floor() as i32).clamp(1, 12) as usize;
        format!("{x:.decimals$}")
    } else if a < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn format_special(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v > 0.0 {
        "+Inf".to_owned()
    } else {
        "-Inf".to_owned()
    }
}

/// Bytes per second: `600 B/s`, `1.2 MB/s` (SI, as network rates are).
pub fn bytes_per_second(v: f64) -> String {
    let (n, p) = si(v);
    format!("{n} {p}B/s")
}

/// A count per second: `350 pkt/s`, `1.2k pkt/s`, `0.05 /s` (unit `""`).
pub fn per_second(v: f64, unit: &str) -> String {
    let (n, p) = si(v);
    if unit.is_empty() {
        format!("{n}{p}/s")
    } else {
        format!("{n}{p} {unit}/s")
    }
}

/// A plain count (sockets): `12`, `1.5k`.
pub fn count(v: f64) -> String {
    let (n, p) = si(v);
    format!("{n}{p}")
}

/// A sample value as the API wrote it, shortened to 12 significant digits so float noise
/// (`2100.0000000000005`) does not hide the number; `-o json` keeps the exact text.
pub fn sample_value(text: &str) -> String {
    let v: f64 = match text.parse() {
        Ok(v) if f64::is_finite(v) => v,
        _ => return text.to_owned(),
    };
    if v == 0.0 {
        return "0".to_owned();
    }
    let exp = v.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if !(-4..15).contains(&exp) {
        let s = format!("{v:.11e}");
        let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{e}", trim(mantissa.to_owned()));
    }
    let decimals = (11 - exp).max(0) as usize;
    trim(format!("{v:.decimals$}"))
}

/// An age in whole seconds and its two largest units: `4s`, `3m12s`, `2h5m`, `3d4h`;
/// `never` without one.
pub fn age(seconds: Option<f64>) -> String {
    let Some(s) = seconds else {
        return "never".to_owned();
    };
    if !s.is_finite() || s < 0.0 {
        return "0s".to_owned();
    }
    let s = s.floor() as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m{sec}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_like_a_person_writes_them() {
        assert_eq!(bytes_per_second(0.0), "0 B/s");
        assert_eq!(bytes_per_second(600.0), "600 B/s");
        assert_eq!(bytes_per_second(1234.0), "1.2 kB/s");
        assert_eq!(bytes_per_second(1_200_000.0), "1.2 MB/s");
        assert_eq!(bytes_per_second(123_456_789.0), "123 MB/s");
        assert_eq!(bytes_per_second(1000.0), "1 kB/s");
        assert_eq!(
            bytes_per_second(999.7),
            "1 kB/s",
            "rounds up into the next prefix"
        );
        assert_eq!(per_second(350.0, "pkt"), "350 pkt/s");
        assert_eq!(per_second(12.25, "pkt"), "12.2 pkt/s");
        assert_eq!(per_second(5.0, "pkt"), "5 pkt/s");
        assert_eq!(per_second(1500.0, "pkt"), "1.5k pkt/s");
        assert_eq!(per_second(0.5, "pkt"), "0.5 pkt/s");
        assert_eq!(per_second(0.0333, ""), "0.033/s", "small rates are not 0");
        assert_eq!(per_second(f64::NAN, ""), "NaN/s");
        assert_eq!(count(12.0), "12");
        assert_eq!(count(1500.0), "1.5k");
    }

    #[test]
    fn sample_values_lose_float_noise_only() {
        assert_eq!(sample_value("2100.0000000000005"), "2100");
        assert_eq!(sample_value("0.25000000000000006"), "0.25");
        assert_eq!(sample_value("12"), "12");
        assert_eq!(sample_value("-3.5"), "-3.5");
        assert_eq!(sample_value("1764640000.123"), "1764640000.12");
        assert_eq!(sample_value("0.000012345"), "1.2345e-5");
        assert_eq!(sample_value("1e+20"), "1e20");
        assert_eq!(sample_value("NaN"), "NaN");
        assert_eq!(sample_value("+Inf"), "+Inf");
        assert_eq!(sample_value("0"), "0");
    }

    #[test]
    fn ages_have_two_units_at_most() {
        assert_eq!(age(None), "never");
        assert_eq!(age(Some(0.4)), "0s");
        assert_eq!(age(Some(4.9)), "4s");
        assert_eq!(age(Some(192.0)), "3m12s");
        assert_eq!(age(Some(7500.0)), "2h5m");
        assert_eq!(age(Some(3.0 * 86_400.0 + 4.0 * 3600.0 + 5.0)), "3d4h");
    }

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(vec![Column::left("NODE"), Column::right("RATE")]);
        t.rows.push(vec!["node-a".into(), "1 kB/s".into()]);
        t.rows.push(vec!["n".into(), Cell::warn("12.5 MB/s")]);
        assert_eq!(
            t.render(false),
            "NODE         RATE\nnode-a     1 kB/s\nn       12.5 MB/s\n"
        );
        assert!(t.render(true).contains("\x1b[31m12.5 MB/s\x1b[0m"));
        let mut left_last = Table::new(vec![Column::left("A"), Column::left("B")]);
        left_last.rows.push(vec!["x".into(), "y".into()]);
        left_last.rows.push(vec!["long".into(), "".into()]);
        assert_eq!(left_last.render(false), "A     B\nx     y\nlong\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(Cell::from("x\ty").text, "x\\ty");
    }
}
