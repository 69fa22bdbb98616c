//! Zero-byte suppression, the step before zstd in log records: each group of 8 input bytes
//! becomes a mask byte (bit i set: byte i of the group is not 0), and the input's non-zero
//! bytes follow all masks. A columnar log record is mostly zero bytes (ids that repeat,
//! timestamps whose delta of delta is 0, value bits that XOR the previous value's), and
//! zstd spends its time per input byte: over the suppressed record it runs in less than
//! half the instructions and its output is smaller (layout: `storage/docs/format.md`).
//!
//! ```text
//! +---------------------------------+----------------------------------+
//! | ceil(len / 8) masks, 1 B each   | the non-zero input bytes, in order |
//! +---------------------------------+----------------------------------+
//! ```

/// Largest suppressed size of `len` input bytes (every byte non-zero).
pub(crate) fn max_suppressed_len(len: usize) -> usize {
    len + len.div_ceil(8)
}

/// The suppressed form of `raw`, written into `scratch` (grown as needed, never shrunk or
/// cleared: callers reuse it, so the bytes past the returned slice are left over).
pub(crate) fn suppress<'a>(raw: &[u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let masks = raw.len().div_ceil(8);
    // Written branch-free: each byte of a group is stored and the cursor moves on only
    // past non-zero ones, so the buffer needs room for all of them plus the masks.
    let need = max_suppressed_len(raw.len());
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let (mask_out, data_out) = scratch.split_at_mut(masks);
    let mut pos = 0;
    let mut groups = raw.chunks_exact(8);
    for (m, g) in mask_out.iter_mut().zip(&mut groups) {
        let x = u64::from_le_bytes(g.try_into().expect("chunks of 8"));
        if x == 0 {
            *m = 0;
            continue;
        }
        // High bit of each non-zero byte, then those 8 bits gathered into one byte (bit i:
        // byte i).
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let high = ((x & LOW7).wrapping_add(LOW7) | x) & !LOW7;
        let mask = ((high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8;
        *m = mask;
        let dst = &mut data_out[pos..pos + 8];
        if mask == 0xff {
            dst.copy_from_slice(g);
            pos += 8;
            continue;
        }
        // One step per non-zero byte (most groups of a record hold two or three).
        let mut rest = mask;
        let mut k = 0;
        while rest != 0 {
            dst[k & 7] = g[rest.trailing_zeros() as usize & 7];
            k += 1;
            rest &= rest - 1;
        }
        pos += k;
    }
    if let Some(m) = mask_out
        .last_mut()
        .filter(|_| !groups.remainder().is_empty())
    {
        let mut mask = 0u8;
        for (i, &b) in groups.remainder().iter().enumerate() {
            if b != 0 {
                mask |= 1 << i;
                data_out[pos] = b;
                pos += 1;
            }
        }
        *m = mask;
    }
    &scratch[..masks + pos]
}

/// The `len` input bytes whose suppressed form is `zs`; `None` if `zs` is not one (too few
/// or too many non-zero bytes for its masks, or mask bits past `len`).
pub(crate) fn expand(zs: &[u8], len: usize) -> Option<Vec<u8>> {
    let masks = len.div_ceil(8);
    let (mask_in, data) = (zs.get(..masks)?, &zs[masks..]);
    let mut out = vec![0u8; len];
    let mut pos = 0;
    for (g, &mask) in mask_in.iter().enumerate() {
        let group = &mut out[g * 8..(g * 8 + 8).min(len)];
        if group.len() < 8 && mask >> group.len() != 0 {
            return None;
        }
        if mask == 0 {
            continue;
        }
        let n = mask.count_ones() as usize;
        let mut bytes = data.get(pos..pos + n)?.iter();
        pos += n;
        for (i, b) in group.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                // A zero byte marked non-zero is no suppressed form either.
                *b = *bytes.next()?;
                if *b == 0 {
                    return None;
                }
            }
        }
    }
    (pos == data.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(raw: &[u8]) {
        // Scratch left over from a longer input must not leak into the form.
        let mut scratch = vec![0xaau8; 3 * raw.len() / 2];
        let zs = suppress(raw, &mut scratch);
        assert!(zs.len() <= max_suppressed_len(raw.len()));
        assert_eq!(expand(zs, raw.len()).as_deref(), Some(raw));
    }

    #[test]
    fn any_bytes_roundtrip() {
        roundtrip(&[]);
        roundtrip(&[0]);
        roundtrip(&[1, 0, 2, 0, 0, 0, 0, 0, 3]);
        roundtrip(&[0xff; 17]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..300 {
            let raw: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // About half the bytes zero, as in a log record.
                    if x & 1 == 0 {
                        0
                    } else {
                        (x >> 8) as u8
                    }
                })
                .collect();
            roundtrip(&raw);
        }
    }

    #[test]
    fn mostly_zero_input_shrinks_to_its_masks() {
        let mut scratch = Vec::new();
        assert_eq!(suppress(&[0u8; 800], &mut scratch), &[0u8; 100][..]);
    }

    /// Damaged input is `None`, never a panic or a wrong length.
    #[test]
    fn damaged_forms_are_refused() {
        let raw = [1u8, 0, 2, 0, 0, 0, 0, 0, 3, 4];
        let mut scratch = Vec::new();
        let zs = suppress(&raw, &mut scratch).to_vec();
        assert_eq!(expand(&zs[..zs.len() - 1], raw.len()), None, "a byte short");
        let mut long = zs.clone();
        long.push(9);
        assert_eq!(expand(&long, raw.len()), None, "a byte over");
        let mut past = zs.clone();
        past[1] |= 0x80;
        assert_eq!(expand(&past, raw.len()), None, "mask bit past the end");
        let mut zero = zs.clone();
        *zero.last_mut().unwrap() = 0;
        assert_eq!(expand(&zero, raw.len()), None, "zero byte marked non-zero");
        assert_eq!(expand(&[], 3), None, "no masks");
        for cut in 0..zs.len() {
            for len in 0..20 {
                let _ = expand(&zs[..cut], len);
            }
        }
    }
}
