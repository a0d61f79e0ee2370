//! The `slotmux` binary: parse the configuration, set up logging, run until a signal.

use slotmux::Config;
use tracing_subscriber::EnvFilter;

fn main() {
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or pipe gets plain text.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(tty);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    // The control thread: accepting clients, the topology refresher and the HTTP endpoint.
    // Client sessions run on the worker threads that `serve` starts (`--threads`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slotmux: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        let mut listeners = slotmux::Listeners::default();
        for (addr, tls) in [(Some(&config.listen), false), (config.tls_listen.as_ref(), true)] {
            let Some(addr) = addr.filter(|a| *a != "off") else {
                continue;
            };
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) if tls => listeners.tls = Some(l),
                Ok(l) => listeners.plain = Some(l),
                Err(e) => {
                    tracing::error!(listen = %addr, error = %e, "cannot listen");
                    return 1;
                }
            }
        }
        if listeners.plain.is_none() && listeners.tls.is_none() {
            tracing::error!("--listen off needs --tls-listen: nothing to listen on");
            return 2;
        }
        tracing::info!(config = %config.redacted(), "slotmux {} starting", env!("CARGO_PKG_VERSION"));
        let shared = match slotmux::Shared::start(config.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return 2;
            }
        };
        if config.metrics_listen != "off" {
            match tokio::net::TcpListener::bind(&config.metrics_listen).await {
                Ok(l) => {
                    tokio::spawn(slotmux::http::serve(l, shared.clone()));
                }
                Err(e) => {
                    tracing::error!(listen = %config.metrics_listen, error = %e, "cannot listen for metrics");
                    return 1;
                }
            }
        }
        slotmux::serve_on(listeners, shared, shutdown_signal()).await;
        0
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
