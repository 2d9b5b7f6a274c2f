//! `watchllm provider-key`: the projects' own provider keys (BYOK), encrypted under the master
//! secret that `provider_keys` in the config names.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use zeroize::Zeroizing;

use super::ConfigArg;
use crate::config::{load_config, RuntimeConfig};
use crate::keys::manage::{check_provider, delete_key, list_keys, rotate_master, set_key, MAX_PROVIDER_KEY_LEN};
use crate::keys::MasterSecret;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum ProviderKeyAction {
    /// Store a project's own key for a provider, read from stdin, replacing any previous one.
    Set {
        /// Project name or id.
        project: String,
        /// Provider name from the config.
        provider: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the stored keys as JSON lines, masked to their last four characters.
    List {
        /// Project name or id; all projects when omitted.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Delete a project's key for a provider; its requests use the global key again.
    Delete {
        project: String,
        provider: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-encrypt every stored key under a new master secret, all or nothing. The new secret is
    /// read from stdin, or from --new-secret-file. Afterwards, put the new secret where the config
    /// reads it. Running gateways read a master_key_file again within
    /// provider_keys.refresh_interval_ms. A secret in an environment variable needs a restart.
    RotateMaster {
        /// File holding the new master secret.
        #[arg(long)]
        new_secret_file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs a provider-key command.
pub fn run(action: ProviderKeyAction) -> anyhow::Result<()> {
    match action {
        ProviderKeyAction::Set { project, provider, config } => {
            let runtime = load(&config)?;
            let configured: Vec<String> = runtime.routing.providers.iter().map(|p| p.name.clone()).collect();
            check_provider(&provider, &configured)?;
            let master = require_master(&runtime)?;
            let key = read_stdin("the provider key")?;
            with_store(&runtime, |store| async move {
                let info = set_key(&store, &master, &project, &provider, &key).await?;
                eprintln!("stored the key of project {} for provider {provider}; gateways use it within the refresh interval", info.project_name);
                print_json_line(&info)
            })
        }
        ProviderKeyAction::List { project, config } => {
            let runtime = load(&config)?;
            with_store(&runtime, |store| async move {
                for info in list_keys(&store, project.as_deref()).await? {
                    print_json_line(&info)?;
                }
                Ok(())
            })
        }
        ProviderKeyAction::Delete { project, provider, config } => {
            let runtime = load(&config)?;
            with_store(&runtime, |store| async move {
                if !delete_key(&store, &project, &provider).await? {
                    bail!("project {project:?} has no key for provider {provider:?}");
                }
                eprintln!("deleted the key of project {project} for provider {provider}");
                Ok(())
            })
        }
        ProviderKeyAction::RotateMaster { new_secret_file, config } => {
            let runtime = load(&config)?;
            let old = require_master(&runtime)?;
            let new_bytes = match &new_secret_file {
                Some(path) => Zeroizing::new(std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?),
                None => Zeroizing::new(read_stdin("the new master secret")?.as_bytes().to_vec()),
            };
            let new = MasterSecret::new(new_bytes.to_vec()).context("invalid new master secret")?;
            let source = runtime.routing.master_secret.describe();
            let environment: std::collections::HashMap<String, String> = std::env::vars().collect();
            let next_step = match runtime.routing.master_secret.file_path(&environment) {
                Some(_) => "running gateways read it from there within provider_keys.refresh_interval_ms",
                None => "then restart the gateways",
            };
            with_store(&runtime, |store| async move {
                let count = rotate_master(&store, &old, &new).await?;
                eprintln!("re-encrypted {count} provider key(s) under the new master secret; put it in the {source}: {next_step}");
                Ok(())
            })
        }
    }
}

fn load(arg: &ConfigArg) -> anyhow::Result<std::sync::Arc<RuntimeConfig>> {
    Ok(load_config(&arg.config).map_err(|e| anyhow::anyhow!("{e}"))?.runtime)
}

fn require_master(runtime: &RuntimeConfig) -> anyhow::Result<MasterSecret> {
    let source = &runtime.routing.master_secret;
    source
        .load_from_process()?
        .with_context(|| format!("no master secret is configured; set the {} (at least 16 bytes)", source.describe()))
}

/// Reads stdin whole, up to a limit, so that a secret never appears in the process list.
fn read_stdin(description: &str) -> anyhow::Result<Zeroizing<String>> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("enter {description}, then press Ctrl-D:");
    }
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .take(MAX_PROVIDER_KEY_LEN as u64 + 2)
        .read_to_string(&mut text)
        .with_context(|| format!("failed to read {description} from stdin"))?;
    if text.trim().is_empty() {
        bail!("{description} is empty; pass it on stdin, for example `printf %s \"$KEY\" | watchllm provider-key set ...`");
    }
    Ok(text)
}

fn print_json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Runs `work` against the configured store after applying migrations.
fn with_store<F, Fut>(runtime: &RuntimeConfig, work: F) -> anyhow::Result<()>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if runtime.database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&runtime.state_dir)
            .with_context(|| format!("failed to create the state directory {}", runtime.state_dir.display()))?;
    }
    let url = runtime.database_url.clone();
    let executor = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    executor.block_on(async move {
        let store = Store::connect(&url).await.context("failed to connect to the database")?;
        store.migrate().await.context("failed to apply database migrations")?;
        let result = work(store.clone()).await;
        store.close().await;
        result
    })
}
