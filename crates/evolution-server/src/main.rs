//! The evolution events server.
//!
//! ```text
//! evolution-server [--config FILE]                 run the server
//! evolution-server config check [--config FILE]    print the effective configuration (secrets redacted)
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod api;
mod app;
mod config;
mod error;
mod instances;
mod metrics;
mod openapi;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::app::App;
use crate::config::Config;

const USAGE: &str =
    "usage: evolution-server [--config FILE]\n       evolution-server config check [--config FILE]";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mut config_file: Option<PathBuf> = None;
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config_file = Some(PathBuf::from(path)),
                None => return usage("--config needs a file path"),
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => command.push(other.to_owned()),
        }
    }
    let config = match Config::load(config_file.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("evolution-server: {e}");
            return ExitCode::from(2);
        }
    };
    match command.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => match run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("evolution-server: {e}");
                ExitCode::FAILURE
            }
        },
        ["config", "check"] => {
            print!("{}", config.report());
            println!("# configuration is valid");
            ExitCode::SUCCESS
        }
        other => usage(&format!("unknown command `{}`", other.join(" "))),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("evolution-server: {problem}\n{USAGE}");
    ExitCode::from(2)
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let address = SocketAddr::new(config.host, config.port);
    let shutdown_timeout = config.shutdown_timeout;
    let app = App::start(config).await?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e} (set SERVER_PORT / SERVER_HOST)"))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    // Peer addresses are recorded for WEBSOCKET_ALLOWED_HOSTS.
    let service =
        api::routes(std::sync::Arc::clone(&app)).into_make_service_with_connect_info::<SocketAddr>();
    let websocket = app.websocket.clone();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            if let Some(websocket) = websocket {
                // Ends Socket.IO connections (long-polling requests would hold the HTTP server
                // open); clients reconnect to the next server.
                let _ignored = evolution_events::EventSink::shutdown(&*websocket).await;
            }
        })
        .await?;
    tracing::info!("shutting down: finishing in-flight deliveries");
    let report = app.dispatcher.shutdown(shutdown_timeout).await;
    if !report.drained {
        tracing::warn!("shutdown deadline reached: unfinished deliveries stay pending for the next start");
    }
    for (channel, error) in &report.sink_errors {
        tracing::warn!(%channel, %error, "sink did not shut down cleanly");
    }
    app.close_storage().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
