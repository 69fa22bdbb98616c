//! The `self` source: the shipper's own metrics (crate::telemetry), pushed with the node's
//! data so that the collector, its dashboards and its console see every shipper's health
//! without a separate scrape. Counters go through the same delta logic as the kernel's (a
//! shipper restart is a counter reset); `--disable-sources self` turns it off.

use crate::source::{Observation, Source, SourceError};
use crate::telemetry::Telemetry;
use std::sync::Arc;

pub struct SelfMetrics {
    telemetry: Arc<Telemetry>,
}

impl SelfMetrics {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        SelfMetrics { telemetry }
    }
}

impl Source for SelfMetrics {
    fn name(&self) -> &'static str {
        "self"
    }

    fn collect(&mut self, out: &mut Vec<Observation>) -> Result<(), SourceError> {
        out.extend(self.telemetry.observations());
        Ok(())
    }
}
