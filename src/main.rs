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
    /// Manage flows.
    #[command(subcommand)]
    Flows(FlowCmd),
}

#[derive(Subcommand)]
enum FlowCmd {
    /// Create or update flows from flow documents (`.yaml`/`.yml` files are
    /// YAML, others JSON), matched by name, so flows can live in version
    /// control. Every file is checked first; if any
    /// is invalid, nothing is applied. Unchanged documents make no version.
    Apply {
        #[arg(long)]
        workspace: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List a workspace's flows.
    List {
        #[arg(long)]
        workspace: String,
    },
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
        Command::Flows(cmd) => flows(&*store, cmd).await,
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
    // Signal handlers first: from the moment the address is printed, SIGTERM
    // means a graceful stop.
    let shutdown = hookflow::server::shutdown_signal();
    println!("hookflow listening on http://{addr}");
    tracing::info!(%addr, store = store.kind(), "listening");
    let engine = hookflow::flows::Engine::new(
        store.clone(),
        std::sync::Arc::new(hookflow::flows::SystemClock),
        config.engine_config(),
    );
    hookflow::server::serve(
        store,
        listener,
        config.api_options(),
        shutdown,
        Duration::from_secs(config.shutdown_grace_secs),
        engine,
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

async fn flows(store: &dyn Store, cmd: FlowCmd) -> anyhow::Result<()> {
    use hookflow::flows::save::{Applied, SaveError, apply, check};
    match cmd {
        FlowCmd::Apply { workspace, paths } => {
            let ws = store.workspace_by_name(&workspace).await?.id;
            // Check every file first: a directory of flows is applied whole
            // or not at all.
            let mut checked = Vec::new();
            let mut failed = 0;
            for path in &paths {
                let parsed = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))
                    .and_then(|text| {
                        hookflow::flows::file::parse(path, &text).map_err(anyhow::Error::msg)
                    });
                let doc = match parsed {
                    Ok(doc) => doc,
                    Err(e) => {
                        eprintln!("hookflow: {e:#}");
                        failed += 1;
                        continue;
                    }
                };
                match check(store, &ws, &doc).await {
                    Ok(value) => checked.push((doc, value)),
                    Err(SaveError::Invalid(errors)) => {
                        for e in &errors {
                            let at = e
                                .step
                                .as_ref()
                                .map_or(String::new(), |s| format!("step `{s}`, "));
                            eprintln!("{}: {at}`{}`: {}", path.display(), e.setting, e.message);
                        }
                        failed += 1;
                    }
                    Err(SaveError::Nul(at)) => {
                        eprintln!(
                            "{}: `{at}`: text may not contain the NUL character",
                            path.display()
                        );
                        failed += 1;
                    }
                    Err(SaveError::Store(e)) => return Err(e.into()),
                }
            }
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} flow file(s) are invalid; nothing was applied",
                paths.len()
            );
            for (doc, value) in checked {
                let (f, what) = apply(store, &ws, &doc, value).await?;
                let verb = match what {
                    Applied::Created => "created",
                    Applied::Updated => "updated",
                    Applied::Unchanged => "unchanged",
                };
                println!("{verb} {}\t{}\tversion {}", f.id, f.name, f.version);
                if let Some(secret) = f.inbound_secret.as_ref().filter(|_| f.inbound_secret_new) {
                    println!(
                        "signing secret of {} (shown once; rotating the token makes a new one):\n{}",
                        f.name,
                        secret.as_str()
                    );
                }
            }
        }
        FlowCmd::List { workspace } => {
            let ws = store.workspace_by_name(&workspace).await?.id;
            let mut page = hookflow::domain::PageRequest::first(hookflow::domain::page::MAX_LIMIT);
            loop {
                let got = store.list_flows(&ws, &page).await?;
                for f in &got.items {
                    println!(
                        "{}\t{}\t{}\tversion {}",
                        f.id,
                        f.name,
                        f.status.as_str(),
                        f.version
                    );
                }
                match got.next {
                    Some(next) => {
                        page = hookflow::domain::PageRequest {
                            after: Some(next),
                            limit: page.limit,
                        }
                    }
                    None => break,
                }
            }
        }
    }
    Ok(())
}
