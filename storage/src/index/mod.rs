//! The index: postings (label pair -> series ids) and the series table (`S` groups).

mod postings;
mod series_table;

pub(crate) use postings::{decode, postings_of_name, resolve};
pub(crate) use postings::{IndexPending, PostingsDelta, PostingsReader};
pub(crate) use series_table::{decode_group, SeriesDelta, SeriesOp};
