//! Byte codecs: Prometheus's XOR chunk ([`chunkenc`]), the dense integer chunk of compacted
//! windows (`dense`), the varint reader and writer (`codec`) and the sled key layouts,
//! built and parsed in one place (`keys`), and the zero-byte suppression of log records
//! (`zeros`). Layouts: `storage/docs/format.md`.

pub mod chunkenc;
pub(crate) mod codec;
pub(crate) mod dense;
pub(crate) mod keys;
pub(crate) mod zeros;
