//! The `modelcast` binary: parses the configuration, sets up logging, serves until SIGINT or
//! SIGTERM, drains, and exits 0.

use std::process::ExitCode;

use clap::Parser;
use modelcast_server::{Config, LogFormat, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `modelcast push-keys`: a new VAPID key pair for Web Push.
    if std::env::args().nth(1).as_deref() == Some("push-keys") {
        return push_keys();
    }
    let config = Config::parse();
    if config.check_config {
        return check_config(&config);
    }
    let filter = match EnvFilter::try_new(&config.log) {
        // redis-rs says each retry of a failover at warn; the engine says the event once
        // (its own target, `modelcast_redis`). A filter naming `redis=` decides for itself.
        Ok(f) if config.log.split(',').any(|d| d.trim().starts_with("redis=")) => f,
        Ok(f) => f.add_directive("redis=error".parse().expect("a valid directive")),
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: MODELCAST_LOG / --log: invalid filter `{}`: {err}", config.log);
            }
            return ExitCode::from(2);
        }
    };
    init_logging(filter, config.log_format);
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

/// `modelcast push-keys`: the private key as PEM on stdout; the public key, for reference, and
/// what to do with them on stderr.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn push_keys() -> ExitCode {
    let (pem, public) = modelcast_server::new_push_keys();
    print!("{pem}");
    eprintln!(
        "# the public key (GET /api/push/vapid-public-key serves it): {public}\n\
         # save the private key, e.g. `modelcast push-keys > /etc/modelcast/vapid.pem`, and set\n\
         # MODELCAST_VAPID_PRIVATE_KEY to that file and MODELCAST_VAPID_SUBJECT to your contact"
    );
    ExitCode::SUCCESS
}

/// `--check-config`: the summary and "valid", or the problem.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn check_config(config: &Config) -> ExitCode {
    match modelcast_server::check_config(config) {
        Ok(summary) => {
            println!("{summary}\nthe configuration is valid");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("error: invalid configuration: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stdout through `filter`. A failed write (the pipe's reader went away) is dropped,
/// never reported on stderr — that report panics the task that logged, the signal handler's
/// too, which then never shut down. (No layer logs frames: an `auth` frame carries a token.)
fn init_logging(filter: EnvFilter, format: LogFormat) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let layer = tracing_subscriber::fmt::layer().with_ansi(ansi).log_internal_errors(false);
    let layer = match format {
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Text => layer.boxed(),
    };
    tracing_subscriber::registry().with(filter).with(layer).init();
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Each start-up error names its own cause: the listener, Redis, or a setting.
    let server = Server::bind(config).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => anyhow::anyhow!("invalid configuration: {e}"),
        _ => anyhow::anyhow!("{e}"),
    })?;
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        // First the shutdown, then the word: nothing a log does can stop the shutdown.
        shutdown.shutdown();
        tracing::info!("signal received: shutting down gracefully");
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
