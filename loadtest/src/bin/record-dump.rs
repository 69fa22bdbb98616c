//! Saves every series a collector holds in `[--start, --end]` as a recording for
//! `storage-bench --shape recorded`: a remote-write `WriteRequest` (protobuf) of all series
//! with their exact sample bits, zstd-compressed. `loadtest/record-busy-host.sh` runs it
//! after recording a real shipper on a busy host.

use clap::Parser;
use kappie_proto::prometheus as pb;
use kappie_testkit::prometheus::remote_read_samples;
use prost::Message;

#[derive(Parser)]
struct Args {
    /// Remote read endpoint of the collector.
    #[arg(long, default_value = "http://127.0.0.1:9090/api/v1/read")]
    url: String,
    /// First millisecond to save.
    #[arg(long)]
    start: i64,
    /// Last millisecond to save.
    #[arg(long)]
    end: i64,
    /// Where to write the recording (`.pb.zst`).
    #[arg(long)]
    out: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let series = remote_read_samples(
        &args.url,
        &[(pb::label_matcher::Type::Re, "__name__", ".+")],
        args.start,
        args.end,
    )
    .map_err(anyhow::Error::msg)?;
    let samples: usize = series.iter().map(|s| s.1.len()).sum();
    let req = pb::WriteRequest {
        timeseries: series
            .into_iter()
            .map(|(labels, samples)| pb::TimeSeries {
                labels: labels
                    .into_iter()
                    .map(|(name, value)| pb::Label { name, value })
                    .collect(),
                samples: samples
                    .into_iter()
                    .map(|(timestamp, bits)| pb::Sample {
                        value: f64::from_bits(bits),
                        timestamp,
                    })
                    .collect(),
            })
            .collect(),
        ..Default::default()
    };
    let raw = req.encode_to_vec();
    let z = zstd::stream::encode_all(raw.as_slice(), 19)?;
    std::fs::write(&args.out, &z)?;
    eprintln!(
        "{} series, {samples} samples, {} bytes ({} before zstd) written to {}",
        req.timeseries.len(),
        z.len(),
        raw.len(),
        args.out.display()
    );
    Ok(())
}
