//! `backfill-server`: parses flags and environment, then runs [`backfill_server::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use backfill_server::clock::SystemClock;
use backfill_server::config::{
    Config, DEFAULT_DATABASE_POOL_SIZE, DatabaseUrl, ProjectCredential, parse_max_event_age_days,
};
use clap::Parser;

/// The Backfill ingestion server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "BACKFILL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = "BACKFILL_DATA_DIR", default_value = "./backfill-data")]
    data_dir: PathBuf,
    /// Age window in whole days (1 to 90): older events are rejected.
    #[arg(long, env = "BACKFILL_MAX_EVENT_AGE_DAYS", default_value_t = 5,
          value_parser = |s: &str| s.parse::<u32>().map_err(|e| e.to_string()).and_then(parse_max_event_age_days))]
    max_event_age_days: u32,
    /// A project as <client-id>:<secret>; repeat for several.
    #[arg(
        long = "project",
        env = "BACKFILL_PROJECTS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    projects: Vec<ProjectCredential>,
    /// A PostgreSQL database shared by several server nodes
    /// (`postgres://user:password@host:port/database`); without it, the embedded store in
    /// --data-dir.
    #[arg(long, env = "BACKFILL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<DatabaseUrl>,
    /// Most connections to the PostgreSQL database this node opens.
    #[arg(long, env = "BACKFILL_DATABASE_POOL_SIZE", default_value_t = DEFAULT_DATABASE_POOL_SIZE,
          value_parser = parse_pool_size)]
    database_pool_size: usize,
}

fn parse_pool_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!(
            "the pool size is a whole number of connections from 1 to 1000, not {s:?}"
        )),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        max_event_age_days: args.max_event_age_days,
        projects: args.projects,
        database_url: args.database_url,
        database_pool_size: args.database_pool_size,
    };
    let server = backfill_server::start(&config, Arc::new(SystemClock), None)
        .await
        .context("starting the server")?;
    println!("listening on {}", server.url());
    if let Some(p) = &server.created_project {
        println!("created project (shown once; keep the secret):");
        println!("  client id:     {}", p.client_id);
        println!("  client secret: {}", p.secret);
    }
    tracing::info!(
        store = if config.database_url.is_some() { "postgresql" } else { "embedded" },
        data_dir = %config.data_dir.display(),
        max_event_age_days = config.max_event_age_days,
        "serving"
    );
    shutdown_signal().await;
    tracing::info!("shutting down; finishing in-flight requests");
    server.stop().await.context("serving")?;
    Ok(())
}
