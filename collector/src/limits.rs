//! Limits on the label sets clients send (remote write in, gRPC ingest), so that one client
//! cannot make the index and every answer carry megabytes per series.

use kappie_storage::Labels;

/// Most labels per series and longest label names and values, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    pub max_labels: usize,
    pub max_name_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_labels: 64,
            max_name_bytes: 1024,
            max_value_bytes: 4096,
        }
    }
}

impl LabelLimits {
    /// Why `labels` is over a limit (with the flag to raise), or `Ok`.
    pub fn check(&self, labels: &Labels) -> Result<(), String> {
        let n = labels.iter().count();
        if n > self.max_labels {
            return Err(format!(
                "{n} labels, more than the limit of {} (--max-labels-per-series)",
                self.max_labels
            ));
        }
        for l in labels.iter() {
            if l.name.len() > self.max_name_bytes {
                return Err(format!(
                    "label name of {} bytes, more than the limit of {} (--max-label-name-bytes)",
                    l.name.len(),
                    self.max_name_bytes
                ));
            }
            if l.value.len() > self.max_value_bytes {
                return Err(format!(
                    "label {:?} has a value of {} bytes, more than the limit of {} (--max-label-value-bytes)",
                    l.name,
                    l.value.len(),
                    self.max_value_bytes
                ));
            }
        }
        Ok(())
    }
}
