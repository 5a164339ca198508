//! The `modelcast` binary: parses the configuration, sets up logging, serves until SIGINT or
//! SIGTERM, drains, and exits 0.

use std::process::ExitCode;

use clap::Parser;
use modelcast_server::{Config, LogFormat, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(f) => f,
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: MODELCAST_LOG / --log: invalid filter `{}`: {err}", config.log);
            }
            return ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Each connection is a file descriptor: lift the soft limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < config.max_connections as u64 + 64 => tracing::warn!(
            limit,
            max_connections = config.max_connections,
            "the open-file limit is below WEBSOCKET_MAX_CONNECTIONS; raise it (ulimit -n)"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(%err, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let bind = config.bind;
    let server = Server::bind(config).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => anyhow::anyhow!("invalid configuration: {e}"),
        _ => anyhow::anyhow!("cannot listen on {bind} (MODELCAST_BIND / --bind): {e}"),
    })?;
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down gracefully");
        shutdown.shutdown();
    });
    server.run().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
