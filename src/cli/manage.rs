//! Command implementations.

use std::io::Write;

use anyhow::{bail, Context};

use super::{Command, ConfigArg, KeyAction, ProjectAction, UsageAction};
use crate::auth::generate_api_key;
use crate::config::{load_config, LoadedConfig};
use crate::store::{NewKey, Store};

pub fn run(command: Command) -> i32 {
    let result = match command {
        Command::Serve(arg) => serve(&arg),
        Command::CheckConfig(arg) => return check_config(&arg),
        Command::Migrate(arg) => with_store(&arg, |store| async move {
            store.migrate().await?;
            eprintln!("migrations applied");
            Ok(())
        }),
        Command::Project { action } => project(action),
        Command::Key { action } => key(action),
        Command::Usage { action } => usage(action),
        Command::Rollup { action } => super::rollup::run(action),
        Command::ProviderKey { action } => super::provider_keys::run(action),
        Command::Cache { action } => super::cache_settings::run(action),
        Command::MockUpstream { listen, latency_ms, chunk_delay_ms } => mock_upstream(&listen, latency_ms, chunk_delay_ms),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            // The log lines before the error come first.
            super::log_buffer::flush();
            eprintln!("error: {e:#}");
            1
        }
    }
}

pub(super) fn load(arg: &ConfigArg) -> anyhow::Result<LoadedConfig> {
    load_config(&arg.config).map_err(|e| anyhow::anyhow!("{e}"))
}

fn init_logging(json: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;

    let requested = std::env::var("WATCHLLM_LOG").unwrap_or_else(|_| "info".into());
    // Pingora's proxy logs whole request and response bodies at debug level, and those hold
    // prompts and completions, so its level stays at info unless a directive names it.
    let directives = if requested.contains("pingora") { requested } else { format!("{requested},pingora_proxy=info,pingora_core=info") };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    // Lines go out in batches, without a `write` per request. Without the flush thread, each
    // line is written at once.
    let builder = match super::log_buffer::BufferedStderr::start() {
        Ok(buffered) => builder.with_writer(BoxMakeWriter::new(buffered)),
        Err(error) => {
            eprintln!("failed to start the log flush thread, so every log line is written at once: {error}");
            builder.with_writer(BoxMakeWriter::new(std::io::stderr))
        }
    };
    // A terminal gets the default format with colors. The journal or a file gets the same line
    // without them, written by the cheaper `LogLine`.
    let _ = if json {
        builder.json().try_init()
    } else if ansi {
        builder.try_init()
    } else {
        builder.event_format(super::log_line::LogLine).try_init()
    };
}

fn serve(arg: &ConfigArg) -> anyhow::Result<()> {
    let loaded = load(arg)?;
    init_logging(loaded.runtime.log_json);
    crate::server::run(loaded)
}

fn check_config(arg: &ConfigArg) -> i32 {
    match load_config(&arg.config) {
        Ok(loaded) => {
            let runtime = &loaded.runtime;
            println!(
                "{} is valid: {} model(s), listen {}, admin {}, version {}",
                arg.config.display(),
                runtime.models.len(),
                runtime.listen,
                runtime.admin_listen,
                runtime.version
            );
            0
        }
        Err(e) => {
            eprint!("{e}");
            2
        }
    }
}

/// Runs `work` against the configured store on a small runtime, after applying migrations.
pub(super) fn with_store<F, Fut>(arg: &ConfigArg, work: F) -> anyhow::Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let loaded = load(arg)?;
    let url = loaded.runtime.database_url.clone();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&loaded.runtime.state_dir)
            .with_context(|| format!("failed to create the state directory {}", loaded.runtime.state_dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let store = Store::connect(&url).await.context("failed to connect to the database")?;
        store.migrate().await.context("failed to apply database migrations")?;
        let result = work(store.clone()).await;
        store.close().await;
        result
    })
}

pub(super) fn print_json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn project(action: ProjectAction) -> anyhow::Result<()> {
    match action {
        ProjectAction::Create { name, plan, config } => {
            // A project's plan must be one of the plans in the config, which set its limits.
            let plans = load(&config)?.runtime.limits.plan_names();
            if !plans.contains(&plan) {
                bail!("unknown plan {plan:?}; the config's limits.plans has {}", plans.join(", "));
            }
            if name.trim().is_empty() {
                bail!("project name must not be empty");
            }
            with_store(&config, |store| async move { print_json_line(&store.create_project(&name, &plan).await?) })
        }
        ProjectAction::List { config } => with_store(&config, |store| async move {
            for project in store.list_projects().await? {
                print_json_line(&project)?;
            }
            Ok(())
        }),
    }
}

fn key(action: KeyAction) -> anyhow::Result<()> {
    match action {
        KeyAction::Create { project, config } => with_store(&config, |store| async move {
            let Some(found) = store.find_project(&project).await? else {
                bail!("project {project:?} not found; `watchllm project list` shows the projects");
            };
            let key = generate_api_key();
            let record = NewKey { id: key.id.clone(), project_id: found.id.clone(), key_hash: key.hash.clone(), prefix: key.display_prefix.clone() };
            store.insert_key(&record).await?;
            eprintln!("created key {} for project {}; it is shown once, store it now", key.id, found.name);
            println!("{}", key.secret);
            Ok(())
        }),
        KeyAction::Revoke { key_id, config } => with_store(&config, |store| async move {
            if !store.revoke_key(&key_id).await? {
                bail!("no active key with id {key_id:?}");
            }
            eprintln!("revoked key {key_id}");
            Ok(())
        }),
        KeyAction::List { project, config } => with_store(&config, |store| async move {
            let Some(found) = store.find_project(&project).await? else {
                bail!("project {project:?} not found");
            };
            for key in store.list_keys(&found.id).await? {
                print_json_line(&key)?;
            }
            Ok(())
        }),
    }
}

fn usage(action: UsageAction) -> anyhow::Result<()> {
    let UsageAction::List { project, limit, config } = action;
    with_store(&config, |store| async move {
        let project_id = match project {
            Some(name) => match store.find_project(&name).await? {
                Some(found) => Some(found.id),
                None => bail!("project {name:?} not found"),
            },
            None => None,
        };
        for event in store.list_usage_events(project_id.as_deref(), limit).await? {
            print_json_line(&event)?;
        }
        Ok(())
    })
}

fn mock_upstream(listen: &str, latency_ms: u64, chunk_delay_ms: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("failed to bind {listen}"))?;
        let address = listener.local_addr()?;
        println!("mock upstream listening on http://{address}/v1");
        std::io::stdout().flush()?;
        crate::mock::serve(listener, crate::mock::MockOptions { latency_ms, chunk_delay_ms }).await?;
        Ok(())
    })
}
