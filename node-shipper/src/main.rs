use clap::Parser;
use kappie_node_shipper::config::{Cli, Config};
use std::io::IsTerminal;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::resolve(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kappie-shipper: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(&config.log_format);
    tracing::info!(node = %config.node_name, cluster = %config.cluster, collector = %config.collector,
        interval_s = config.interval.as_secs_f64(), "kappie-shipper starting");
    match kappie_node_shipper::agent::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // In the log format the operator chose, and with every cause.
            tracing::error!(error = format!("{e:#}"), "kappie-shipper stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal; files and log collectors get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

#[cfg(unix)]
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}

/// Windows has no SIGTERM: a console's Ctrl-C, and the shutdown event a service or a
/// HostProcess container gets when it is stopped. Not yet run on a Windows node.
#[cfg(windows)]
async fn shutdown_signal() {
    let mut shutdown = match tokio::signal::windows::ctrl_shutdown() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for the shutdown event; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = shutdown.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}
