//! Remote write 1.0 `prometheus.WriteRequest` decoded in place: label names and values are
//! `&str` slices of the decompressed body, samples go to one vector per request.
//!
//! Why not prost: prost decodes every `string` field into an owned `String` (its `Bytes`
//! option applies to `bytes` fields only), which cost two allocations per label and was the
//! largest part of remote write's decoding. The walk covers the few fields of remote write
//! 1.0 (`proto/proto/prometheus.proto`) and accepts exactly what prost's generated decoder
//! accepts: the same wire type checks, UTF-8 checks of `string` fields (also in metadata),
//! unknown fields skipped with prost's recursion limit, last value wins for a repeated
//! scalar field. prost's own `decode_key`/`decode_varint` do the varints. The fuzz check
//! `fuzz/checks/collector.rs` (`remote_write`) compares both decoders on every input.

use prost::encoding::{
    decode_key as prost_decode_key, decode_varint as prost_decode_varint, WireType,
};
use prost::DecodeError;

/// prost's recursion limit (`DecodeContext`'s default): a `WriteRequest`'s fields are read
/// at this depth, a `TimeSeries`' at one less, a `Label`'s at two less.
const RECURSION_LIMIT: u32 = 100;

/// Why a body is not a `WriteRequest` (the same cases prost refuses).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Prost(#[from] DecodeError),
    #[error("{0}: buffer underflow")]
    Underflow(&'static str),
    #[error("{field}: invalid wire type {actual:?} (expected {expected:?})")]
    WireType {
        field: &'static str,
        actual: WireType,
        expected: WireType,
    },
    #[error("{0}: invalid string value: data is not UTF-8 encoded")]
    NotUtf8(&'static str),
    #[error("recursion limit reached")]
    RecursionLimit,
    #[error("unexpected end group tag")]
    UnexpectedEndGroup,
}

/// A decoded request: every series' labels as sent (not yet checked or sorted) and samples.
#[derive(Debug, Default)]
pub struct WriteRequestRef<'a> {
    labels: Vec<(&'a str, &'a str)>,
    /// `(time ms, value)` of every series, in order.
    pub samples: Vec<(i64, f64)>,
    /// Per series: end of its labels in `labels`, end of its samples in `samples`.
    ends: Vec<(usize, usize)>,
}

/// One series of a request: its labels as sent (borrowed from the body) and its samples.
pub type WireSeries<'a, 'r> = (&'r [(&'a str, &'a str)], &'r [(i64, f64)]);

impl<'a> WriteRequestRef<'a> {
    /// Decodes `raw` (an uncompressed `WriteRequest`).
    pub fn decode(raw: &'a [u8]) -> Result<Self, WireError> {
        let mut req = WriteRequestRef::default();
        let mut buf = raw;
        while !buf.is_empty() {
            let (tag, wt) = decode_key(&mut buf)?;
            match tag {
                1 => {
                    let mut ts = nested(&mut buf, wt, RECURSION_LIMIT, "WriteRequest.timeseries")?;
                    req.time_series(&mut ts)?;
                }
                3 => {
                    let mut md = nested(&mut buf, wt, RECURSION_LIMIT, "WriteRequest.metadata")?;
                    metadata(&mut md)?;
                }
                _ => skip(wt, tag, &mut buf, RECURSION_LIMIT)?,
            }
        }
        Ok(req)
    }

    /// The series in request order: labels as sent and samples.
    pub fn series(&self) -> impl Iterator<Item = WireSeries<'a, '_>> {
        super::runs(&self.labels, &self.samples, &self.ends)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// One `TimeSeries` (its bytes), read at depth `RECURSION_LIMIT - 1`.
    fn time_series(&mut self, buf: &mut &'a [u8]) -> Result<(), WireError> {
        const DEPTH: u32 = RECURSION_LIMIT - 1;
        while !buf.is_empty() {
            let (tag, wt) = decode_key(buf)?;
            match tag {
                1 => {
                    let mut l = nested(buf, wt, DEPTH, "Label")?;
                    let label = label(&mut l)?;
                    self.labels.push(label);
                }
                2 => {
                    let mut s = nested(buf, wt, DEPTH, "Sample")?;
                    let sample = sample(&mut s)?;
                    self.samples.push(sample);
                }
                _ => skip(wt, tag, buf, DEPTH)?,
            }
        }
        self.ends.push((self.labels.len(), self.samples.len()));
        Ok(())
    }
}

/// prost's `decode_varint`, with the one-byte case (keys, lengths of labels) inline.
#[inline(always)]
fn decode_varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    match buf.split_first() {
        Some((&b, rest)) if b < 0x80 => {
            *buf = rest;
            Ok(u64::from(b))
        }
        _ => prost_decode_varint(buf),
    }
}

/// prost's `decode_key`, with a valid one-byte key (tags 1 to 15) inline; prost reports
/// every other case, errors included.
#[inline(always)]
fn decode_key(buf: &mut &[u8]) -> Result<(u32, WireType), DecodeError> {
    if let Some((&b, rest)) = buf.split_first() {
        if (8..0x80).contains(&b) {
            if let Ok(wt) = WireType::try_from(u64::from(b & 7)) {
                *buf = rest;
                return Ok((u32::from(b >> 3), wt));
            }
        }
    }
    prost_decode_key(buf)
}

/// Fields of a message nested `depth - 1` deep (prost checks the limit before entering).
const fn inner(depth: u32) -> u32 {
    depth - 1
}

/// The bytes of a length-delimited field read at `depth`, checked as prost's
/// `message::merge` checks them.
fn nested<'a>(
    buf: &mut &'a [u8],
    wt: WireType,
    depth: u32,
    field: &'static str,
) -> Result<&'a [u8], WireError> {
    check_wire_type(field, WireType::LengthDelimited, wt)?;
    if depth == 0 {
        return Err(WireError::RecursionLimit);
    }
    take_len(buf, field)
}

fn take_len<'a>(buf: &mut &'a [u8], field: &'static str) -> Result<&'a [u8], WireError> {
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(WireError::Underflow(field));
    }
    let (head, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(head)
}

fn check_wire_type(
    field: &'static str,
    expected: WireType,
    actual: WireType,
) -> Result<(), WireError> {
    if actual == expected {
        Ok(())
    } else {
        Err(WireError::WireType {
            field,
            actual,
            expected,
        })
    }
}

/// A `string` field's value.
fn string<'a>(buf: &mut &'a [u8], wt: WireType, field: &'static str) -> Result<&'a str, WireError> {
    check_wire_type(field, WireType::LengthDelimited, wt)?;
    let b = take_len(buf, field)?;
    // Label names and values are mostly short ASCII, for which `from_utf8`'s call and
    // setup cost more than this loop (about 100 against 30 instructions a string).
    if b.len() <= 64 && b.iter().fold(0u8, |acc, &c| acc | c) < 0x80 {
        // SAFETY: every byte is below 0x80, so `b` is ASCII and thus valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(b) });
    }
    std::str::from_utf8(b).map_err(|_| WireError::NotUtf8(field))
}

/// A `Label` (fields at depth `RECURSION_LIMIT - 2`): name and value, empty when absent.
fn label<'a>(buf: &mut &'a [u8]) -> Result<(&'a str, &'a str), WireError> {
    const DEPTH: u32 = inner(RECURSION_LIMIT - 1);
    let (mut name, mut value) = ("", "");
    while !buf.is_empty() {
        let (tag, wt) = decode_key(buf)?;
        match tag {
            1 => name = string(buf, wt, "Label.name")?,
            2 => value = string(buf, wt, "Label.value")?,
            _ => skip(wt, tag, buf, DEPTH)?,
        }
    }
    Ok((name, value))
}

/// A `Sample` (fields at depth `RECURSION_LIMIT - 2`): `(timestamp, value)`, 0 when absent.
fn sample(buf: &mut &[u8]) -> Result<(i64, f64), WireError> {
    const DEPTH: u32 = inner(RECURSION_LIMIT - 1);
    let (mut t, mut v) = (0i64, 0f64);
    while !buf.is_empty() {
        let (tag, wt) = decode_key(buf)?;
        match tag {
            1 => {
                check_wire_type("Sample.value", WireType::SixtyFourBit, wt)?;
                let Some((b, rest)) = buf.split_first_chunk::<8>() else {
                    return Err(WireError::Underflow("Sample.value"));
                };
                v = f64::from_le_bytes(*b);
                *buf = rest;
            }
            2 => {
                check_wire_type("Sample.timestamp", WireType::Varint, wt)?;
                t = decode_varint(buf)? as i64;
            }
            _ => skip(wt, tag, buf, DEPTH)?,
        }
    }
    Ok((t, v))
}

/// A `MetricMetadata` (fields at depth `RECURSION_LIMIT - 1`): checked, not kept.
fn metadata(buf: &mut &[u8]) -> Result<(), WireError> {
    const DEPTH: u32 = RECURSION_LIMIT - 1;
    while !buf.is_empty() {
        let (tag, wt) = decode_key(buf)?;
        match tag {
            1 => {
                check_wire_type("MetricMetadata.type", WireType::Varint, wt)?;
                decode_varint(buf)?;
            }
            2 | 4 | 5 => {
                string(buf, wt, "MetricMetadata")?;
            }
            _ => skip(wt, tag, buf, DEPTH)?,
        }
    }
    Ok(())
}

/// Skips an unknown field read at `depth`, as prost's `skip_field` does (groups nest one
/// level deeper each).
fn skip(wt: WireType, tag: u32, buf: &mut &[u8], depth: u32) -> Result<(), WireError> {
    if depth == 0 {
        return Err(WireError::RecursionLimit);
    }
    let len = match wt {
        WireType::Varint => {
            decode_varint(buf)?;
            0
        }
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => decode_varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wt) = decode_key(buf)?;
            match inner_wt {
                WireType::EndGroup if inner_tag != tag => {
                    return Err(WireError::UnexpectedEndGroup)
                }
                WireType::EndGroup => break 0,
                _ => skip(inner_wt, inner_tag, buf, depth - 1)?,
            }
        },
        WireType::EndGroup => return Err(WireError::UnexpectedEndGroup),
    };
    if len > buf.len() as u64 {
        return Err(WireError::Underflow("unknown field"));
    }
    *buf = &buf[len as usize..];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappie_proto::prometheus as pb;
    use prost::Message;

    fn body() -> Vec<u8> {
        pb::WriteRequest {
            timeseries: vec![
                pb::TimeSeries {
                    labels: vec![
                        pb::Label {
                            name: "__name__".into(),
                            value: "m".into(),
                        },
                        pb::Label {
                            name: "job".into(),
                            value: "a".into(),
                        },
                    ],
                    samples: vec![
                        pb::Sample {
                            value: 1.5,
                            timestamp: 1000,
                        },
                        pb::Sample {
                            value: -2.0,
                            timestamp: -5,
                        },
                    ],
                },
                pb::TimeSeries {
                    labels: vec![pb::Label {
                        name: "x".into(),
                        value: String::new(),
                    }],
                    samples: vec![],
                },
            ],
            metadata: vec![pb::MetricMetadata {
                r#type: 1,
                metric_family_name: "m".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let raw = body();
        let req = WriteRequestRef::decode(&raw).unwrap();
        let series: Vec<_> = req.series().collect();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].0, &[("__name__", "m"), ("job", "a")]);
        assert_eq!(series[0].1, &[(1000, 1.5), (-5, -2.0)]);
        assert_eq!(series[1].0, &[("x", "")]);
        assert!(series[1].1.is_empty());
    }

    #[test]
    fn refuses_truncated_bodies_and_bad_strings() {
        let raw = body();
        for n in 1..raw.len() {
            let ours = WriteRequestRef::decode(&raw[..n]).is_ok();
            let prost = pb::WriteRequest::decode(&raw[..n]).is_ok();
            assert_eq!(ours, prost, "prefix of {n} bytes");
        }
        // A label name that is not UTF-8.
        let mut bad = raw.clone();
        let at = bad.windows(8).position(|w| w == b"__name__").unwrap();
        bad[at] = 0xff;
        assert!(WriteRequestRef::decode(&bad).is_err());
        assert!(pb::WriteRequest::decode(bad.as_slice()).is_err());
    }

    #[test]
    fn skips_unknown_fields_and_limits_group_nesting() {
        // Field 15 as a group nested 200 deep: prost refuses it (recursion limit).
        let mut deep = Vec::new();
        for _ in 0..200 {
            deep.push((15 << 3) | 3);
        }
        for _ in 0..200 {
            deep.push((15 << 3) | 4);
        }
        assert!(WriteRequestRef::decode(&deep).is_err());
        assert!(pb::WriteRequest::decode(deep.as_slice()).is_err());
        // An unknown varint field is skipped.
        let mut raw = vec![(9 << 3), 0x05];
        raw.extend(body());
        assert_eq!(WriteRequestRef::decode(&raw).unwrap().len(), 2);
    }
}
