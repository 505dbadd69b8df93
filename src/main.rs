//! The `hookflow` command line: `serve`, `migrate`, workspace and key
//! management. The only place that uses `anyhow`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hookflow::config::{Config, Overrides};
use hookflow::domain::{ApiKeyId, Scope, millis_to_rfc3339};
use hookflow::store::{self, Store};

/// mimalloc rather than glibc's allocator: under the upsert benchmark glibc's
/// malloc, free and consolidation took about a tenth of the server's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookflow",
    version,
    about = "Marketing automation built around webhooks"
)]
struct Cli {
    /// A TOML config file (settings: listen, database_url, max_body_bytes, …).
    #[arg(long, global = true, env = "HOOKFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH (default sqlite://hookflow.db) or postgres://…
    #[arg(long, global = true)]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (creates the database and a first key if needed).
    Serve {
        /// Address to listen on (default 127.0.0.1:8420).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage workspaces.
    #[command(subcommand)]
    Workspaces(WorkspaceCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeyCmd),
}

#[derive(Subcommand)]
enum WorkspaceCmd {
    /// Create a workspace.
    Create { name: String },
    /// List workspaces.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeArg {
    Admin,
    Ingest,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key; the key is printed alone on the last line, once.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long, value_enum)]
        scope: ScopeArg,
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Revoke a key by id; requests with it get 401 from then on.
    Revoke { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen = match &cli.command {
        Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let overrides = Overrides {
        listen,
        database_url: cli.database.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hookflow: {e}");
            return ExitCode::from(2);
        }
    };
    hookflow::telemetry::init_logging(&config.log_format, &config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookflow: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open_store(config: &Config) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    store::connect(&config.database_url, &config.store_options())
        .await
        .with_context(|| format!("opening {}", store::redact_url(&config.database_url)))
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let result = match command {
        Command::Serve { .. } => return serve(store, config).await,
        Command::Migrate => {
            println!(
                "migrations applied to {}",
                store::redact_url(&config.database_url)
            );
            Ok(())
        }
        Command::Workspaces(cmd) => workspaces(&*store, cmd).await,
        Command::Keys(cmd) => keys(&*store, cmd).await,
    };
    store.close().await;
    result
}

async fn serve(store: std::sync::Arc<dyn Store>, config: Config) -> anyhow::Result<()> {
    if let Some(key) = hookflow::bootstrap::ensure_default_workspace(&*store).await? {
        println!(
            "Created workspace `{}` and an admin API key:",
            hookflow::bootstrap::DEFAULT_WORKSPACE
        );
        println!("{}", key.secret);
        println!("This key will not be shown again. Store it now.");
    }
    let listener = tokio::net::TcpListener::bind(config.listen_addr())
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("hookflow listening on http://{addr}");
    tracing::info!(%addr, store = store.kind(), "listening");
    hookflow::server::serve(
        store,
        listener,
        config.max_body_bytes,
        hookflow::server::shutdown_signal(),
        Duration::from_secs(config.shutdown_grace_secs),
    )
    .await?;
    Ok(())
}

async fn workspaces(store: &dyn Store, cmd: WorkspaceCmd) -> anyhow::Result<()> {
    match cmd {
        WorkspaceCmd::Create { name } => {
            let name = name.trim();
            anyhow::ensure!(
                !name.is_empty() && name.len() <= 200,
                "a workspace name must be 1 to 200 characters"
            );
            let ws = store.create_workspace(name).await?;
            println!("{}\t{}", ws.id, ws.name);
        }
        WorkspaceCmd::List => {
            for ws in store.list_workspaces().await? {
                println!(
                    "{}\t{}\t{}",
                    ws.id,
                    ws.name,
                    millis_to_rfc3339(ws.created_at)
                );
            }
        }
    }
    Ok(())
}

async fn keys(store: &dyn Store, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create {
            workspace,
            scope,
            name,
        } => {
            let scope = match scope {
                ScopeArg::Admin => Scope::Admin,
                ScopeArg::Ingest => Scope::Ingest,
            };
            let key = hookflow::bootstrap::issue_key(store, &workspace, scope, name).await?;
            println!(
                "Created {} key {} in workspace `{workspace}`. It will not be shown again:",
                scope.as_str(),
                key.record.id
            );
            println!("{}", key.secret);
        }
        KeyCmd::List { workspace } => {
            let ws = match workspace {
                Some(name) => Some(store.workspace_by_name(&name).await?.id),
                None => None,
            };
            for k in store.list_api_keys(ws.as_ref()).await? {
                let state = k.revoked_at.map_or("active".to_owned(), |t| {
                    format!("revoked {}", millis_to_rfc3339(t))
                });
                println!(
                    "{}\t{}\t{}\t{}…\t{}\t{}",
                    k.id,
                    k.workspace_name,
                    k.scope.as_str(),
                    k.prefix,
                    k.name.unwrap_or_default(),
                    state
                );
            }
        }
        KeyCmd::Revoke { id } => {
            let id = ApiKeyId::parse(&id)?;
            let k = store.revoke_api_key(&id).await?;
            println!("revoked {}", k.id);
        }
    }
    Ok(())
}
