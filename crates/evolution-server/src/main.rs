//! The evolution events server: `evolution-server --help` lists its commands and the groups of
//! variables that configure it (docs/configuration.md describes each one).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod api;
mod app;
mod asyncapi;
mod config;
mod console;
mod error;
mod evolution;
mod instances;
mod metrics;
mod openapi;
mod reference;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::Config;

/// Delivers application events to webhooks, Socket.IO, RabbitMQ, Amazon SQS, Kafka, NATS and
/// Pusher, at least once, through a durable outbox.
#[derive(Debug, Parser)]
#[command(name = "evolution-server", version, after_help = configuration_help())]
struct Cli {
    /// A TOML file of settings: flat keys named like the variables (any case); the environment
    /// overrides it.
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve,
    /// `config check`: check the configuration and print every variable's effective value.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration and print every variable's effective value, secrets redacted
    /// (exit status 2 and every problem, by variable, when it is invalid).
    Check,
}

/// The groups of variables, after the options in `--help`.
fn configuration_help() -> String {
    let channels: Vec<&str> = evolution_sinks::build::AVAILABLE
        .iter()
        .map(|c| c.as_str())
        .collect();
    format!(
        "Configuration: environment variables, or the same names in the --config file (the environment
wins). The groups, each described in docs/configuration.md:
  SERVER_*                            listener, public URL, name, data directory
  DATABASE_CONNECTION_URI, OUTBOX_*   SQLite (the default) or PostgreSQL; durability, retention
  AUTHENTICATION_*                    the API key
  EVENT_NAMING, EVENT_FORMAT, EVENTS_*
                                      naming profile; format (evolution, cloudevents); limits
  WEBHOOK_*                           webhooks: global URL, retries, signing, allowed networks
  WEBSOCKET_*, CACHE_REDIS_*          Socket.IO, and Socket.IO across replicas (Redis)
  RABBITMQ_*, SQS_*, KAFKA_*, NATS_*, PUSHER_*
                                      the broker channels
  <CHANNEL>_EVENTS_<EVENT>            the events of a channel's global destination
  LOG_LEVEL                           log filter (e.g. info, or evolution_sinks=debug)
  OTEL_EXPORTER_OTLP_*, OTEL_*        OTLP export of spans (standard OpenTelemetry variables)
`evolution-server config check` prints every variable with its effective value.
Channels in this build: {}; storage: {}.",
        channels.join(", "),
        if cfg!(feature = "postgres") {
            "SQLite, PostgreSQL"
        } else {
            "SQLite"
        }
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    // Wrong arguments: clap's message and exit status 2; --help and --version: exit status 0.
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("evolution-server: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("evolution-server: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Config(ConfigCommand::Check) => {
            print!("{}", config.report());
            println!("# configuration is valid");
            ExitCode::SUCCESS
        }
    }
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
    #[cfg(feature = "websocket")]
    let websocket = app.websocket.clone();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            #[cfg(feature = "websocket")]
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
    app.telemetry.shutdown().await;
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
