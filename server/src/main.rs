//! `backfill-server`: parses flags and environment, then runs [`backfill_server::start`], or,
//! with `project ...`, administers the clients of the configured store.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use backfill_server::admin::{self, CreateOptions};
use backfill_server::auth::NewProject;
use backfill_server::clock::{Clock, SystemClock};
use backfill_server::config::{
    ClientMode, Config, DEFAULT_DATABASE_POOL_SIZE, DatabaseUrl, ProjectCredential,
    parse_max_event_age_days,
};
use backfill_server::metrics::Metrics;
use clap::{Parser, Subcommand, ValueEnum};
use uuid::Uuid;

/// The Backfill ingestion server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on, as host:port (e.g. 127.0.0.1:8080, localhost:8080, [::]:8080);
    /// port 0 picks a free port.
    #[arg(long, env = "BACKFILL_LISTEN", default_value = "127.0.0.1:8080", value_parser = resolve)]
    listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(
        long,
        env = "BACKFILL_DATA_DIR",
        default_value = "./backfill-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Age window in whole days (1 to 90): older events are rejected.
    #[arg(long, env = "BACKFILL_MAX_EVENT_AGE_DAYS", default_value_t = 5,
          value_parser = |s: &str| s.parse::<u32>().map_err(|e| e.to_string()).and_then(parse_max_event_age_days))]
    max_event_age_days: u32,
    /// A client as <client-id>:<secret>[:write|read|root] (root when no mode is given); the
    /// client id is a UUID. Repeat, or separate with commas in BACKFILL_PROJECTS. When given,
    /// only these clients are accepted.
    #[arg(
        long = "project",
        env = "BACKFILL_PROJECTS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    projects: Vec<String>,
    /// A PostgreSQL database shared by several server nodes
    /// (`postgres://user:password@host:port/database`); without it, the embedded store in
    /// --data-dir. The `project` commands then administer the clients stored there.
    #[arg(
        long,
        env = "BACKFILL_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    database_url: Option<DatabaseUrl>,
    /// Most connections to the PostgreSQL database this node opens.
    #[arg(long, env = "BACKFILL_DATABASE_POOL_SIZE", default_value_t = DEFAULT_DATABASE_POOL_SIZE,
          value_parser = parse_pool_size)]
    database_pool_size: usize,
    /// Log format on stderr: `text` (colours only when stderr is a terminal) or `json` (one
    /// object a line). RUST_LOG sets the level (default info).
    #[arg(
        long,
        env = "BACKFILL_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Administer the clients (keys) of the store in --data-dir; a running server sees changes
    /// within seconds.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Write a consistent, compacted copy of the store in --data-dir to a new file, while the
    /// server keeps running (SQLite's VACUUM INTO). Restore by stopping the server and putting
    /// the copy in place of backfill.db.
    Backup {
        /// The new file to write; an existing file is never overwritten.
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Create a client and print its id and secret (shown once: only a hash is stored).
    Create {
        /// What the client may do: write (ingest only; what apps ship), read (read API only),
        /// root (both).
        #[arg(long, default_value = "write", value_parser = |s: &str| s.parse::<ClientMode>())]
        mode: ClientMode,
        /// A label for operators.
        #[arg(long, default_value = "")]
        name: String,
        /// Issue the key for the project of this existing client (same data); without it, a
        /// new project.
        #[arg(long = "for", value_name = "CLIENT_ID")]
        for_client: Option<Uuid>,
    },
    /// List the clients: id, mode, project, state; never secrets.
    List,
    /// Give a client a new secret, printed once; the old one keeps working for --grace-hours.
    Rotate {
        /// The client id.
        client_id: Uuid,
        /// Hours the old secret stays valid (0: refused at once, with any older one).
        #[arg(long, default_value_t = 24)]
        grace_hours: u32,
        /// Rotate even while the secret a previous rotation replaced is still accepted: that
        /// secret is then refused at once (one old secret is kept).
        #[arg(long)]
        force: bool,
    },
    /// Revoke a client: its secrets are refused from then on. Its project's data stays.
    Revoke {
        /// The client id.
        client_id: Uuid,
    },
}

fn parse_pool_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!(
            "the pool size is a whole number of connections from 1 to 1000, not {s:?}"
        )),
    }
}

/// Resolves `host:port` (names included) to one address: the first IPv4 one it names, else the
/// first. `localhost` is then 127.0.0.1, which clients of `localhost` try too.
fn resolve(s: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?} as host:port: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} names no address"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
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

fn print_secret(p: &NewProject) {
    println!("  client id:     {}", p.client_id);
    println!("  client secret: {}", p.secret);
    println!("  mode:          {}", p.mode);
}

/// The address, and the client created on a first start, on stdout.
fn print_start(server: &backfill_server::RunningServer) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.url())?;
    if let Some(p) = &server.created_project {
        writeln!(
            out,
            "created a root client (the secret is shown once; keep it):"
        )?;
        writeln!(out, "  client id:     {}", p.client_id)?;
        writeln!(out, "  client secret: {}", p.secret)?;
        writeln!(out, "  mode:          {}", p.mode)?;
        writeln!(
            out,
            "root keys can read every stored event: give apps a write key \
             (backfill-server project create --mode write --for {})",
            p.client_id
        )?;
    }
    out.flush()
}

async fn project(config: &Config, command: ProjectCommand) -> anyhow::Result<()> {
    // Only `create` may start a store (to provision keys before a first start): on a mistyped
    // --data-dir, the others say so rather than show an empty, new store.
    let db = config.data_dir.join(backfill_server::DATABASE_FILE);
    if config.database_url.is_none()
        && !matches!(command, ProjectCommand::Create { .. })
        && !db.exists()
    {
        anyhow::bail!("no store at {}; is --data-dir right?", db.display());
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = backfill_server::open_store(config, Arc::clone(&clock), &Metrics::default())
        .await
        .with_context(|| match &config.database_url {
            Some(url) => format!("opening the database {url:?}"),
            None => format!("opening the store in {}", config.data_dir.display()),
        })?;
    let store = store.as_ref();
    let now = clock.now_ms();
    match command {
        ProjectCommand::Create {
            mode,
            name,
            for_client,
        } => {
            let p = admin::create(
                store,
                CreateOptions {
                    name,
                    mode,
                    for_client,
                },
                now,
            )
            .await?;
            println!("created client (the secret is shown once; keep it):");
            print_secret(&p);
        }
        ProjectCommand::List => {
            let records = admin::list(store).await?;
            let ids: std::collections::HashMap<i64, &str> = records
                .iter()
                .map(|r| (r.key, r.client_id.as_str()))
                .collect();
            println!(
                "{:<36}  {:<5}  {:<36}  {:<24}  {:<10}  NAME",
                "CLIENT ID", "MODE", "PROJECT", "CREATED", "STATE"
            );
            for r in &records {
                let state = match (&r.revoked_at, &r.previous) {
                    (Some(_), _) => "revoked".to_owned(),
                    (None, Some(p)) if p.valid_until_ms > now => format!(
                        "rotating (old secret until {})",
                        backfill_protocol::time::format_iso_ms(p.valid_until_ms)
                    ),
                    _ => "active".to_owned(),
                };
                println!(
                    "{:<36}  {:<5}  {:<36}  {:<24}  {:<10}  {}",
                    r.client_id,
                    r.mode,
                    ids.get(&r.data_key()).copied().unwrap_or("?"),
                    backfill_protocol::time::format_iso_ms(r.created_at),
                    state,
                    r.name
                );
            }
        }
        ProjectCommand::Rotate {
            client_id,
            grace_hours,
            force,
        } => {
            let grace_ms = i64::from(grace_hours) * 3_600_000;
            let options = admin::RotateOptions { grace_ms, force };
            let p = admin::rotate(store, client_id, options, now).await?;
            if grace_hours == 0 {
                println!(
                    "rotated client (the new secret is shown once; the old ones are refused from now):"
                );
            } else {
                println!(
                    "rotated client (the new secret is shown once; the old one works for {grace_hours} more hours):"
                );
            }
            print_secret(&p);
        }
        ProjectCommand::Revoke { client_id } => {
            admin::revoke(store, client_id, now).await?;
            println!("revoked client {client_id}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    // Parsed here rather than by clap, whose error would repeat the value, secret included.
    let projects = args
        .projects
        .iter()
        .map(|p| p.parse::<ProjectCredential>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("invalid --project or BACKFILL_PROJECTS: {e}"))?;
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        max_event_age_days: args.max_event_age_days,
        projects,
        database_url: args.database_url,
        database_pool_size: args.database_pool_size,
    };
    match args.command {
        Some(Command::Project(command)) => return project(&config, command).await,
        Some(Command::Backup { .. }) if config.database_url.is_some() => {
            anyhow::bail!(
                "backup copies the embedded store; back up a PostgreSQL database with pg_dump"
            );
        }
        Some(Command::Backup { to }) => {
            let db = config.data_dir.join(backfill_server::DATABASE_FILE);
            backfill_server::store::sqlite::backup(&db, &to)?;
            println!("backed up {} to {}", db.display(), to.display());
            return Ok(());
        }
        None => {}
    }
    let server = backfill_server::start(&config, Arc::new(SystemClock), None)
        .await
        .context("starting the server")?;
    // A closed stdout (`backfill-server | head -1`) must not stop a running server, as a
    // `println!` would by panicking; what could not be shown is said on stderr, never a secret.
    if let Err(e) = print_start(&server) {
        tracing::error!(error = %e, "cannot write the start-up lines to stdout");
        if let Some(p) = &server.created_project {
            tracing::error!(
                client = %p.client_id,
                "the root client created on this first start could not be shown; create another \
                 with `backfill-server project create --mode root` and revoke this one"
            );
        }
    }
    tracing::info!(
        store = if config.database_url.is_some() { "postgresql" } else { "embedded" },
        addr = %server.addr,
        data_dir = %config.data_dir.display(),
        max_event_age_days = config.max_event_age_days,
        "serving"
    );
    shutdown_signal().await;
    tracing::info!("shutting down; finishing in-flight requests");
    server.stop().await.context("serving")?;
    Ok(())
}
