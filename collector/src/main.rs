use clap::Parser;
use kappie_collector::config::{Cli, Config};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// One glibc malloc arena per core instead of glibc's eight per core, unless
/// `MALLOC_ARENA_MAX` says otherwise; set before any thread starts. Memory that the ingest
/// of a first round of definitions allocated and freed stays with the arena that held it,
/// so more arenas keep more of it: cluster-sim at N = 1,000 (519k series) ended at 695 MiB
/// RSS with glibc's default and 558 MiB with two arenas, CPU per sample not higher (issue
/// 15, docs/BENCHMARKS.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a malloc setting; no other thread runs yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

async fn run() -> anyhow::Result<()> {
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
