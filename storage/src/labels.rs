//! Label sets and label matchers.

use crate::StorageError;
use regex::Regex;

/// One label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub name: String,
    pub value: String,
}

/// A label set, sorted by name, names unique, no empty values (Prometheus treats an empty
/// value as an absent label).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a label set from pairs; sorts them, drops empty values and refuses duplicate
    /// or invalid names.
    pub fn new<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, StorageError> {
        let mut v: Vec<Label> = pairs
            .into_iter()
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .filter(|l| !l.value.is_empty())
            .collect();
        v.sort();
        check_sorted_names(v.iter().map(|l| l.name.as_str()))?;
        Ok(Labels(v))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels whose names satisfy `keep`.
    pub fn filter(&self, mut keep: impl FnMut(&str) -> bool) -> Labels {
        Labels(self.0.iter().filter(|l| keep(&l.name)).cloned().collect())
    }

    /// This label set with `name` set to `value`, or removed when `value` is empty. The
    /// caller checks that `name` is a valid label name.
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut v = self.0.clone();
        match v.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                v.remove(i);
            }
            Ok(i) => v[i].value = value.to_owned(),
            Err(_) if value.is_empty() => {}
            Err(i) => v.insert(
                i,
                Label {
                    name: name.to_owned(),
                    value: value.to_owned(),
                },
            ),
        }
        Labels(v)
    }

    /// This label set without `__name__`.
    pub fn without_name(&self) -> Labels {
        self.filter(|n| n != "__name__")
    }

    /// Encoding used in sled keys and values: `name 0xff value 0xff` per label. 0xff never
    /// occurs in UTF-8, so the encoding is unambiguous and sorts like the label set.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.0
                .iter()
                .map(|l| l.name.len() + l.value.len() + 2)
                .sum(),
        );
        encode_pairs(
            self.0.iter().map(|l| (l.name.as_str(), l.value.as_str())),
            &mut out,
        );
        out
    }

    pub fn decode(mut b: &[u8]) -> Result<Self, StorageError> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let mut next = || -> Result<String, StorageError> {
                let end = b
                    .iter()
                    .position(|&c| c == 0xff)
                    .ok_or_else(|| StorageError::Corrupt("label set without terminator".into()))?;
                let s = std::str::from_utf8(&b[..end])
                    .map_err(|e| StorageError::Corrupt(format!("label not UTF-8: {e}")))?
                    .to_owned();
                b = &b[end + 1..];
                Ok(s)
            };
            let name = next()?;
            let value = next()?;
            v.push(Label { name, value });
        }
        Ok(Labels(v))
    }
}

/// Whether `name` is a valid Prometheus label name. Every allowed character is ASCII, so
/// bytes are checked: a byte of a multi-byte character is never allowed.
pub fn valid_label_name(name: &str) -> bool {
    match name.as_bytes().split_first() {
        Some((&c, rest)) => {
            NAME_BYTE[usize::from(c)] == FIRST
                && rest.iter().all(|&c| NAME_BYTE[usize::from(c)] != 0)
        }
        None => false,
    }
}

/// [`NAME_BYTE`] of a byte allowed anywhere in a label name.
const FIRST: u8 = 2;
/// Per byte: [`FIRST`] for `[a-zA-Z_]`, 1 for `[0-9]`, 0 for the rest (one load a byte
/// instead of four ranges: remote write checks every name of every series it receives).
static NAME_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() || b == b'_' {
            t[c] = FIRST;
        } else if b.is_ascii_digit() {
            t[c] = 1;
        }
        c += 1;
    }
    t
};

/// The checks [`Labels::new`] makes of a label set's names once it is sorted: no name twice,
/// every name valid. For callers that check borrowed labels before building (or instead of
/// building) a [`Labels`]; `names` are in label set order (sorted by name, then value).
pub fn check_sorted_names<'a, I>(names: I) -> Result<(), StorageError>
where
    I: Iterator<Item = &'a str> + Clone,
{
    let mut prev: Option<&str> = None;
    for n in names.clone() {
        if prev == Some(n) {
            return Err(StorageError::InvalidLabels(format!(
                "label name {n:?} appears twice"
            )));
        }
        prev = Some(n);
    }
    for n in names {
        if !valid_label_name(n) {
            return Err(StorageError::InvalidLabels(format!(
                "invalid label name {n:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            )));
        }
    }
    Ok(())
}

/// Appends a label set, `(name, value)` pairs in label set order, in the encoding of
/// [`Labels::encode`] (`name 0xff value 0xff` per label).
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, out: &mut Vec<u8>) {
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0xff);
        out.extend_from_slice(v.as_bytes());
        out.push(0xff);
    }
}

/// The four matcher operators of PromQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// A label matcher. Regular expressions are fully anchored, as in Prometheus. A missing
/// label matches as the empty string.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<Regex>,
}

impl Matcher {
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, StorageError> {
        let value = value.into();
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(Regex::new(&format!("^(?s:{value})$")).map_err(|e| {
                    StorageError::InvalidMatcher(format!("bad regex {value:?}: {e}"))
                })?)
            }
            _ => None,
        };
        Ok(Matcher {
            name: name.into(),
            op,
            value,
            re,
        })
    }

    /// Whether a label value (empty when the label is absent) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        match (self.op, &self.re) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            _ => false,
        }
    }

    /// Whether every label value, and a missing label, satisfies the matcher (`=~".*"`,
    /// Grafana's "All"): such a matcher selects nothing away and the index skips it.
    pub fn matches_everything(&self) -> bool {
        self.op == MatchOp::Regex && self.value == ".*"
    }

    /// The exact values the matcher accepts, when it is an equality or a regular expression
    /// that is only an alternation of literals (`rx_dropped|tx_dropped`), none empty: the
    /// index then looks those values up instead of testing every value of the label.
    pub fn literal_values(&self) -> Option<Vec<&str>> {
        match self.op {
            MatchOp::Equal if !self.value.is_empty() => Some(vec![self.value.as_str()]),
            MatchOp::Regex => {
                let literal = |a: &&str| {
                    !a.is_empty()
                        && a.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-:/ ,=@".contains(c))
                };
                let alts: Vec<&str> = self.value.split('|').collect();
                alts.iter().all(literal).then_some(alts)
            }
            _ => None,
        }
    }

    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte table says what `[a-zA-Z_][a-zA-Z0-9_]*` says, for every byte in every place.
    #[test]
    fn label_name_table_matches_the_pattern() {
        let first = |c: u8| c.is_ascii_alphabetic() || c == b'_';
        let later = |c: u8| first(c) || c.is_ascii_digit();
        assert!(!valid_label_name(""));
        for c in 0..=255u8 {
            let (a, b) = ([c], [b'a', c]);
            if let Ok(one) = std::str::from_utf8(&a) {
                assert_eq!(valid_label_name(one), first(c), "{c}");
            }
            if let Ok(two) = std::str::from_utf8(&b) {
                assert_eq!(valid_label_name(two), later(c), "{c}");
            }
        }
        assert!(!valid_label_name("aé"));
        assert!(valid_label_name("__name__9"));
    }

    #[test]
    fn encode_roundtrip_and_sorting() {
        let l = Labels::new([("b", "2"), ("a", "1"), ("__name__", "m"), ("empty", "")]).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("empty"), None);
        assert_eq!(Labels::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn with_sets_inserts_and_removes() {
        let l = Labels::new([("b", "2"), ("__name__", "m")]).unwrap();
        assert_eq!(
            l.with("a", "1"),
            Labels::new([("a", "1"), ("b", "2"), ("__name__", "m")]).unwrap()
        );
        assert_eq!(l.with("b", "3").get("b"), Some("3"));
        assert_eq!(l.with("b", ""), Labels::new([("__name__", "m")]).unwrap());
        assert_eq!(l.without_name(), Labels::new([("b", "2")]).unwrap());
    }

    #[test]
    fn refuses_duplicates_and_bad_names() {
        assert!(Labels::new([("a", "1"), ("a", "2")]).is_err());
        assert!(Labels::new([("1a", "1")]).is_err());
        assert!(Labels::new([("a-b", "1")]).is_err());
    }

    #[test]
    fn matchers_are_anchored_and_missing_is_empty() {
        let l = Labels::new([("a", "foobar")]).unwrap();
        assert!(!Matcher::new(MatchOp::Regex, "a", "foo")
            .unwrap()
            .matches_labels(&l));
        assert!(Matcher::new(MatchOp::Regex, "a", "foo.*")
            .unwrap()
            .matches_labels(&l));
        assert!(Matcher::new(MatchOp::NotRegex, "a", "bar")
            .unwrap()
            .matches_labels(&l));
        assert!(Matcher::new(MatchOp::Equal, "missing", "")
            .unwrap()
            .matches_labels(&l));
        assert!(Matcher::new(MatchOp::NotEqual, "a", "x")
            .unwrap()
            .matches_labels(&l));
        assert!(Matcher::new(MatchOp::Regex, "a", "(").is_err());
    }
}
