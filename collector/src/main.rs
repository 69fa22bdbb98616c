use clap::Parser;
use kappie_collector::config::{Cli, Config};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::resolve(Cli::parse())?;
    init_tracing(&config.log_format);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = kappie_collector::serve(&config, async move {
        let _ = stop_rx.await;
    })
    .await?;
    println!(
        "kappie-collector: Prometheus API on http://{}  gRPC ingest on {}",
        running.http_addr, running.grpc_addr
    );
    shutdown_signal().await;
    let _ = stop_tx.send(());
    // Open shipper connections could hold a graceful shutdown forever; the store is
    // consistent at every acknowledged write, so a bounded wait is safe.
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    running.stop_within(Some(grace)).await?;
    tracing::info!("collector stopped");
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in logs that go to a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}
