//! The `hookflow` command line: `serve`, `migrate`, workspace and key
//! management. The only place that uses `anyhow`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hookflow::config::{Config, Overrides};
use hookflow::domain::{ApiKeyId, Scope, millis_to_rfc3339};
use hookflow::store::{self, FlowRecord, Store};

/// mimalloc rather than glibc's allocator: under the upsert benchmark glibc's
/// malloc, free and consolidation took about a tenth of the server's CPU.
/// Built with `no_thp`: mimalloc otherwise asks for transparent huge pages,
/// whose 2 MiB granularity kept freed request bodies resident (peak RSS
/// under 100 concurrent 1 MB inbound calls: 231 → 209 MiB, inbound
/// benchmark 89 → 53 MiB, at the same CPU per call).
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
    #[arg(long, global = true, env = "HOOKFLOW_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH (default sqlite://hookflow.db, in the
    /// current folder) or postgres://…; also HOOKFLOW_DATABASE_URL.
    #[arg(long, global = true, value_name = "URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (creates the database and a first key if needed).
    Serve {
        /// Address to listen on (default 127.0.0.1:8420; port 0 lets the
        /// system choose a free port, printed at start).
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<String>,
    },
    /// Create the database if needed, apply migrations and exit.
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

/// The workspace a command works in; `default` is the one the first start
/// of `hookflow serve` creates.
#[derive(clap::Args)]
struct WorkspaceArg {
    /// The workspace, by name.
    #[arg(long, default_value = hookflow::bootstrap::DEFAULT_WORKSPACE, value_name = "NAME")]
    workspace: String,
}

#[derive(Subcommand)]
enum FlowCmd {
    /// Create or update flows from flow documents (`.yaml`/`.yml` files are
    /// YAML, others JSON), matched by name, so flows can live in version
    /// control. Every file is checked first; if any
    /// is invalid, nothing is applied. Unchanged documents make no version.
    Apply {
        #[command(flatten)]
        workspace: WorkspaceArg,
        /// Activate every applied flow too, and print inbound URLs.
        #[arg(long)]
        activate: bool,
        /// Flow document files.
        #[arg(required = true, value_name = "FILE")]
        paths: Vec<PathBuf>,
    },
    /// Activate flows by name; prints each inbound flow's URL.
    Activate {
        #[command(flatten)]
        workspace: WorkspaceArg,
        /// Flow names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Pause flows by name: no new entries; their runs wait where they are.
    Pause {
        #[command(flatten)]
        workspace: WorkspaceArg,
        /// Flow names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// List a workspace's flows (id, name, status, version, inbound URL).
    List {
        #[command(flatten)]
        workspace: WorkspaceArg,
    },
}

#[derive(Subcommand)]
enum WorkspaceCmd {
    /// Create a workspace.
    Create {
        /// The new workspace's name (1 to 200 characters).
        name: String,
    },
    /// List workspaces.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeArg {
    /// Every API call.
    Admin,
    /// Only inbound calls (`POST /hooks/…`) and the events API.
    Ingest,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key; the key is printed alone on the last line, once.
    Create {
        #[command(flatten)]
        workspace: WorkspaceArg,
        /// What the key may do.
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// A label to recognise the key by in `keys list`.
        #[arg(long, value_name = "LABEL")]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        /// Only this workspace's keys (default: every workspace's).
        #[arg(long, value_name = "NAME")]
        workspace: Option<String>,
    },
    /// Revoke a key by id (`key_…`, from `keys list`). When this command
    /// returns, every server on this database refuses the key (401).
    Revoke {
        /// The key's id.
        #[arg(value_name = "KEY_ID")]
        id: String,
    },
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
    if matches!(cli.command, Command::Serve { .. }) {
        hookflow::server::raise_open_file_limit();
    }
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

/// Opens the configured database, saying on stderr which one. Only `serve`
/// and `migrate` may create it: any other command run in the wrong folder
/// (or with the wrong URL) is refused with what it looked for.
async fn open_store(
    config: &Config,
    command: &str,
    create: bool,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let shown = store::redact_url(&config.database_url);
    eprintln!("hookflow: database {shown}");
    let options = store::StoreOptions {
        create,
        ..config.store_options()
    };
    match store::connect(&config.database_url, &options).await {
        Ok(s) => Ok(s),
        Err(store::StoreError::NoDatabase(found)) => Err(anyhow::anyhow!(
            "no hookflow database at {shown} ({found}); `hookflow {command}` does not create one. \
             Point at the database your server uses with --database URL or HOOKFLOW_DATABASE_URL \
             (`hookflow serve` keeps it in hookflow.db in the folder it was started in), \
             or create one with `hookflow migrate`"
        )),
        Err(e) => Err(anyhow::Error::new(e).context(format!("opening {shown}"))),
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let name = match &command {
        Command::Serve { .. } => return serve(config).await,
        Command::Migrate => "migrate",
        Command::Workspaces(_) => "workspaces",
        Command::Keys(_) => "keys",
        Command::Flows(_) => "flows",
    };
    let store = open_store(&config, name, matches!(command, Command::Migrate)).await?;
    let result = match command {
        Command::Serve { .. } => unreachable!("handled above"),
        Command::Migrate => {
            println!(
                "migrations applied to {}",
                store::redact_url(&config.database_url)
            );
            Ok(())
        }
        Command::Workspaces(cmd) => workspaces(&*store, cmd).await,
        Command::Keys(cmd) => keys(&*store, cmd).await,
        Command::Flows(cmd) => flows(&*store, cmd, &config).await,
    };
    store.close().await;
    result
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // The address first: a port already taken fails at once, before a
    // database or a key is created in this folder.
    let listener = tokio::net::TcpListener::bind(config.listen_addr())
        .await
        .with_context(|| match config.listen_addr().port() {
            0 => format!("cannot listen on {}", config.listen),
            port => format!(
                "cannot listen on {} (is another hookflow, or another program, using port {port}? \
                 stop it, or choose another address with --listen IP:PORT; port 0 picks a free one)",
                config.listen
            ),
        })?;
    let store = open_store(&config, "serve", true).await?;
    if let Some(key) = hookflow::bootstrap::ensure_default_workspace(&*store).await? {
        println!(
            "Created workspace `{}` and an admin API key:",
            hookflow::bootstrap::DEFAULT_WORKSPACE
        );
        println!("{}", key.secret);
        println!("This key will not be shown again. Store it now.");
    }
    let addr = listener.local_addr()?;
    // Signal handlers first: from the moment the address is printed, SIGTERM
    // means a graceful stop.
    let shutdown = hookflow::server::shutdown_on_signal();
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
            let workspace = workspace.workspace;
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
                Some(name) => Some(workspace_id(store, &name).await?),
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
            // Servers in other processes cache keys for KEY_CACHE_TTL: wait
            // it out, so that from our return on no server accepts the key.
            tokio::time::sleep(store::KEY_CACHE_TTL + Duration::from_millis(50)).await;
            println!("revoked {}", k.id);
        }
    }
    Ok(())
}

/// The workspace named `name`, or an error listing the ones there are.
async fn workspace_id(
    store: &dyn Store,
    name: &str,
) -> anyhow::Result<hookflow::domain::WorkspaceId> {
    match store.workspace_by_name(name).await {
        Ok(ws) => Ok(ws.id),
        Err(store::StoreError::NotFound { .. }) => {
            let names: Vec<String> = store
                .list_workspaces()
                .await?
                .into_iter()
                .map(|w| format!("`{}`", w.name))
                .collect();
            anyhow::bail!(
                "workspace `{name}` does not exist in this database (it has: {}); choose one with --workspace NAME",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// The workspace and the flows `names` name, all of them found before
/// anything is changed: a typo changes nothing.
async fn named_flows(
    store: &dyn Store,
    workspace: &str,
    names: &[String],
) -> anyhow::Result<(hookflow::domain::WorkspaceId, Vec<FlowRecord>)> {
    let ws = workspace_id(store, workspace).await?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match store.flow_by_name(&ws, name.trim()).await {
            Ok(f) => found.push(f),
            Err(store::StoreError::NotFound { .. }) => missing.push(format!("`{name}`")),
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "no flow named {} in workspace `{workspace}` (see `hookflow flows list`); nothing was changed",
        missing.join(", ")
    );
    Ok((ws, found))
}

/// One line for a flow's state: `active <id> <name> version N`, then its
/// inbound URL (where other systems send calls) if it has one.
fn print_flow_state(f: &FlowRecord, base: &str) {
    println!(
        "{} {}\t{}\tversion {}",
        f.status.as_str(),
        f.id,
        f.name,
        f.version
    );
    if let Some(token) = &f.inbound_token {
        println!("  inbound URL: {base}/hooks/{token}");
    }
    if let Some(secret) = f.inbound_secret.as_ref().filter(|_| f.inbound_secret_new) {
        println!(
            "  signing secret (shown once; rotating the token makes a new one): {}",
            secret.as_str()
        );
    }
}

async fn flows(store: &dyn Store, cmd: FlowCmd, config: &Config) -> anyhow::Result<()> {
    use hookflow::flows::save;
    let base = config.public_base();
    match cmd {
        FlowCmd::Apply {
            workspace,
            activate,
            paths,
        } => {
            let ws = workspace_id(store, &workspace.workspace).await?;
            for f in apply_files(store, &ws, &paths, config).await? {
                if activate {
                    let active = save::activate(store, &ws, &f.id).await?;
                    print_flow_state(&active, &base);
                }
            }
        }
        FlowCmd::Activate { workspace, names } => {
            let (ws, found) = named_flows(store, &workspace.workspace, &names).await?;
            for f in found {
                print_flow_state(&save::activate(store, &ws, &f.id).await?, &base);
            }
        }
        FlowCmd::Pause { workspace, names } => {
            let (ws, found) = named_flows(store, &workspace.workspace, &names).await?;
            for f in found {
                print_flow_state(&save::pause(store, &ws, &f.id).await?, &base);
            }
        }
        FlowCmd::List { workspace } => {
            let ws = workspace_id(store, &workspace.workspace).await?;
            let mut page = hookflow::domain::PageRequest::first(hookflow::domain::page::MAX_LIMIT);
            loop {
                let got = store.list_flows(&ws, &page).await?;
                for f in &got.items {
                    let url = f
                        .inbound_token
                        .as_ref()
                        .map_or(String::new(), |t| format!("\t{base}/hooks/{t}"));
                    println!(
                        "{}\t{}\t{}\tversion {}{url}",
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

/// `flows apply`: checks every file, then saves them all (or none); the
/// saved flows.
async fn apply_files(
    store: &dyn Store,
    ws: &hookflow::domain::WorkspaceId,
    paths: &[PathBuf],
    config: &Config,
) -> anyhow::Result<Vec<FlowRecord>> {
    use hookflow::flows::save::{Applied, SaveError, apply, check};
    let outbound = config.outbound_settings();
    let policy = hookflow::outbound::guard::TargetPolicy {
        allow: outbound.allow.clone(),
    };
    // Check every file first: a directory of flows is applied whole or not
    // at all.
    let mut checked = Vec::new();
    let mut failed = 0;
    for path in paths {
        let parsed = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|text| hookflow::flows::file::parse(path, &text).map_err(anyhow::Error::msg));
        let doc = match parsed {
            Ok(doc) => doc,
            Err(e) => {
                eprintln!("hookflow: {e:#}");
                failed += 1;
                continue;
            }
        };
        let replaces = hookflow::flows::save::Replaces::Name(doc.name.trim());
        match check(store, ws, &doc, &policy, replaces).await {
            Ok(c) => checked.push(c),
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
    let mut saved = Vec::new();
    for c in checked {
        let (doc, value) = c
            .keep_inline(
                store,
                ws,
                outbound.verification,
                hookflow::flows::Clock::now(&hookflow::flows::SystemClock),
            )
            .await
            .map_err(|e| match e {
                SaveError::Store(e) => anyhow::Error::from(e),
                _ => anyhow::anyhow!("the flow's inline webhooks could not be kept"),
            })?;
        let (f, what) = apply(store, ws, &doc, value).await?;
        let f = hookflow::flows::save::ensure_inbound_url(store, ws, f).await?;
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
        saved.push(f);
    }
    Ok(saved)
}
