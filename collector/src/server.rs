//! Starts and stops the collector's servers.

use crate::api::{self, ApiLimits, ApiState};
use crate::ingest::{IngestLimits, IngestService};
use crate::Config;
use anyhow::Context;
use kappie_proto::ingest_server::IngestServer;
use kappie_storage::{Storage, StorageConfig};
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A collector that is serving.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub store: Storage,
    http: JoinHandle<std::io::Result<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    maintenance: JoinHandle<()>,
    writers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits until both servers have stopped (after the shutdown future resolved), then
    /// closes the store.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.stop_within(None).await
    }

    /// Like [`Running::wait`], but waits for the servers (open connections, requests in
    /// flight) at most `grace`; the store is closed either way. Closing is safe beside a
    /// request still running: it takes the store's write lock, and the store stays usable.
    pub async fn stop_within(self, grace: Option<std::time::Duration>) -> anyhow::Result<()> {
        let Running {
            store,
            http,
            grpc,
            maintenance,
            writers,
            ..
        } = self;
        let servers = async move {
            http.await.context("HTTP server task")??;
            grpc.await.context("gRPC server task")??;
            maintenance.await.context("maintenance task")?;
            for w in writers {
                w.await.context("remote write task")?;
            }
            anyhow::Ok(())
        };
        match grace {
            None => servers.await?,
            Some(g) => match tokio::time::timeout(g, servers).await {
                Ok(r) => r?,
                Err(_) => tracing::warn!(
                    grace_s = g.as_secs(),
                    "connections still open after the grace period (--shutdown-grace-seconds); \
                     closing the store anyway"
                ),
            },
        }
        // Closing cuts every head chunk and fsyncs: blocking work, off the async runtime.
        tokio::task::spawn_blocking(move || store.close())
            .await
            .context("store close task")??;
        Ok(())
    }
}

/// Opens the store and starts the HTTP and gRPC servers; both stop gracefully when
/// `shutdown` resolves.
pub async fn serve(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    if config.block_cache_capacity_bytes != Config::default().block_cache_capacity_bytes {
        tracing::warn!(
            "block_cache_capacity_bytes has no effect since staged chunks live in files; remove the setting"
        );
    }
    let threads =
        crate::promql::set_query_concurrency(config.query_max_concurrency).map_err(|e| {
            anyhow::anyhow!(
                "cannot start {} query threads ({} MiB of stack each): {e}; lower \
                 --query-max-concurrency",
                config.query_max_concurrency,
                crate::promql::QUERY_STACK_BYTES >> 20
            )
        })?;
    if threads != config.query_max_concurrency {
        tracing::warn!(
            query_threads = threads,
            query_max_concurrency = config.query_max_concurrency,
            "the query threads were started before; the setting applies at the next start"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let store = Storage::open(
        &config.data_dir,
        &StorageConfig {
            cache_capacity_bytes: config.cache_capacity_bytes,
            retention_ms: (config.retention_seconds as i64).saturating_mul(1000),
            retention_bytes: (config.retention_bytes > 0).then_some(config.retention_bytes),
            wal_hold_max_bytes: config.remote_write_max_backlog_bytes,
            wal_segment_bytes: config.wal_segment_bytes,
            wal_preallocate: config.wal_preallocate,
            ..StorageConfig::default()
        },
    )
    .map_err(|e| {
        let hint = match &e {
            // Says what to do itself.
            kappie_storage::StorageError::Corrupt(_) | kappie_storage::StorageError::Config(_) => {
                String::new()
            }
            e if e.to_string().contains("could not acquire lock") => {
                "; another collector is using it: stop that one first".to_string()
            }
            _ => "; if another collector is using it, stop that one first; if the data \
                  directory is damaged, restore it from a backup or start with an empty one"
                .to_string(),
        };
        anyhow::anyhow!(
            "cannot open the store in {}: {e}{hint}",
            config.data_dir.display()
        )
    })?;

    let shippers = std::sync::Arc::new(
        crate::shippers::Inventory::load(&store).context("cannot read the shipper inventory")?,
    );

    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_listen))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;

    let (stop_writers, stop_rx) = tokio::sync::watch::channel(false);
    let (destinations, writers) =
        crate::remote::write::spawn(&store, &config.data_dir, &config.destinations(), stop_rx)
            .map_err(anyhow::Error::msg)
            .context("remote write configuration")?;

    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut rx_http = tx.subscribe();
    let mut rx_grpc = tx.subscribe();
    let tx_maint = tx.subscribe();
    let rx_scrape = tx.subscribe();
    let (shipper_auth, token_keys) = config.shipper_auth()?;
    if let Some(keys) = token_keys {
        tokio::spawn(keys.refresh_until(tx.subscribe()));
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(());
        let _ = stop_writers.send(true);
    });

    let state = ApiState {
        store: store.clone(),
        limits: ApiLimits {
            labels: config.label_limits(),
            max_concurrent_requests: config.http_max_concurrent_requests,
            request_timeout: std::time::Duration::from_secs(config.http_request_timeout_seconds),
            max_remote_write_bytes: config.max_remote_write_bytes,
            query: config.query_limits(),
            remote_read: config.remote_read_limits()?,
        },
        query_stats: Default::default(),
        remote_write: std::sync::Arc::new(destinations),
        remote_read_gate: std::sync::Arc::new(tokio::sync::Semaphore::new(
            config.remote_read_concurrency.max(1),
        )),
        shippers: shippers.clone(),
        auth: api::auth::HttpAuth::new(
            config.http_auth_token_file.as_deref(),
            config.http_auth_users_file.as_deref(),
        )?,
    };
    if config.self_scrape_interval_seconds > 0 {
        crate::telemetry::spawn(
            state.clone(),
            crate::telemetry::SelfScrape {
                interval: std::time::Duration::from_secs(config.self_scrape_interval_seconds),
                instance: config.self_scrape_instance(),
            },
            rx_scrape,
        );
    }
    let app = api::router(state);
    let header_timeout = std::time::Duration::from_secs(config.http_header_timeout_seconds);
    let cert = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(c), Some(k)) => Some(crate::tls::ReloadingCert::new(c, k)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert-file and --tls-key-file are set together or not at all"),
    };
    if config.tls_client_ca_file.is_some() && cert.is_none() {
        anyhow::bail!("--tls-client-ca-file needs --tls-cert-file and --tls-key-file");
    }
    let http_tls = cert
        .clone()
        .map(|c| crate::tls::acceptor(c, &[b"h2", b"http/1.1"], None))
        .transpose()?;
    let grpc_tls = cert
        .map(|c| crate::tls::acceptor(c, &[b"h2"], config.tls_client_ca_file.as_deref()))
        .transpose()?;
    let http = tokio::spawn(serve_http(
        http_listener,
        app,
        http_tls,
        header_timeout,
        async move {
            let _ = rx_http.recv().await;
        },
    ));

    let ingest = IngestService::new(
        store.clone(),
        IngestLimits {
            max_series_per_shipper: config.max_series_per_shipper,
            max_future_skew_ms: (config.max_future_skew_seconds as i64).saturating_mul(1000),
            labels: config.label_limits(),
            max_concurrency: config.ingest_max_concurrency,
        },
        shippers,
        shipper_auth,
    )
    .with_rate_limit(crate::limits::ShipperRateLimit::new(
        config.max_samples_per_shipper_per_second,
        config.shipper_burst_samples,
    ));
    let svc = IngestServer::new(ingest).max_decoding_message_size(config.grpc_max_message_bytes);
    let grpc_timeout = std::time::Duration::from_secs(config.grpc_request_timeout_seconds);
    let grpc_calls = config.grpc_max_concurrent_calls_per_connection;
    let server = tonic::transport::Server::builder()
        .timeout(grpc_timeout)
        .concurrency_limit_per_connection(grpc_calls)
        // Dead peers' connections are found and closed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .add_service(svc);
    let stopped = async move {
        let _ = rx_grpc.recv().await;
    };
    let grpc = match grpc_tls {
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, stopped))
        }
        Some(acceptor) => {
            // Handshakes on tasks of their own, so one slow client holds up no other.
            let (tx_conn, rx_conn) = tokio::sync::mpsc::channel(64);
            tokio::spawn(async move {
                loop {
                    let tcp = tokio::select! {
                        a = accept(&grpc_listener, "gRPC") => match a {
                            Some(tcp) => tcp,
                            None => continue,
                        },
                        () = tx_conn.closed() => break,
                    };
                    let (acceptor, tx_conn) = (acceptor.clone(), tx_conn.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx_conn.send(Ok::<_, std::io::Error>(tls)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                            Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                        }
                    });
                }
            });
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx_conn);
            tokio::spawn(server.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    let maintenance = tokio::spawn(maintain_every(
        store.clone(),
        std::time::Duration::from_secs(config.maintenance_interval_seconds.max(1)),
        tx_maint,
    ));
    tracing::info!(%http_addr, %grpc_addr, data_dir = %config.data_dir.display(), "collector serving");
    Ok(Running {
        http_addr,
        grpc_addr,
        store,
        http,
        grpc,
        maintenance,
        writers,
    })
}

/// Housekeeping (idle chunks, write-ahead truncation, retention) every `every`, off the
/// async runtime, until shutdown.
async fn maintain_every(
    store: Storage,
    every: std::time::Duration,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        match tokio::task::spawn_blocking(move || s.maintain(now)).await {
            Ok(Ok(r)) => tracing::debug!(?r, "store maintenance"),
            Ok(Err(e)) => tracing::error!(error = %e, "store maintenance failed; will retry"),
            Err(e) => tracing::error!(error = %e, "store maintenance panicked"),
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` (through TLS when `tls` is set) until
/// `shutdown`, then waits for the open connections to finish. Written out (not
/// `axum::serve`) for the header read timeout and TLS.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = std::sync::Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = accept(&listener, "HTTP") => match accepted {
                Some(tcp) => tcp,
                None => continue,
            },
            () = &mut shutdown => break,
        };
        let (app, builder, watcher, tls) = (
            app.clone(),
            builder.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            match tls {
                None => serve_conn(&builder, stream, app, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_conn(&builder, s, app, watcher).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP TLS handshake failed"),
                        Err(_) => tracing::debug!("HTTP TLS handshake timed out"),
                    }
                }
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

async fn serve_conn<IO>(
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    io: IO,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// The next connection on `listener`; `None` after a failed accept (out of file descriptors
/// and the like), logged and after a short pause, so the caller goes on accepting.
async fn accept(listener: &TcpListener, what: &str) -> Option<tokio::net::TcpStream> {
    match listener.accept().await {
        Ok((tcp, _)) => Some(tcp),
        Err(e) => {
            tracing::warn!(error = %e, "{what} accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            None
        }
    }
}
