//! The `watchllm` command line.

mod cache_settings;
mod log_buffer;
mod log_line;
mod manage;
pub mod provider_keys;
mod rollup;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "watchllm", version, about = "An LLM API gateway: auth, limits, caching, routing and cost accounting in front of OpenAI-compatible providers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path of the YAML config file.
    #[arg(long, short = 'c', env = "WATCHLLM_CONFIG", default_value = "conf/watchllm.yaml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (applies database migrations first).
    Serve(ConfigArg),
    /// Validate a config file and print every problem with its path in the file.
    CheckConfig(ConfigArg),
    /// Apply database migrations and exit.
    Migrate(ConfigArg),
    /// Manage projects.
    Project {
        #[command(subcommand)]
        action: ProjectAction,
    },
    /// Manage project API keys.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Read recorded usage events.
    Usage {
        #[command(subcommand)]
        action: UsageAction,
    },
    /// Maintain the hourly and daily usage rollups that analytics read.
    Rollup {
        #[command(subcommand)]
        action: RollupAction,
    },
    /// Manage the projects' own provider keys (BYOK), encrypted under the master secret.
    ProviderKey {
        #[command(subcommand)]
        action: provider_keys::ProviderKeyAction,
    },
    /// Show and change a project's response cache settings in the store.
    Cache {
        #[command(subcommand)]
        action: cache_settings::CacheAction,
    },
    /// Run an OpenAI-compatible fake provider, for demos, tests and benchmarks.
    MockUpstream {
        /// Address to listen on, as HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: String,
        /// Delay before each response's headers, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Delay between streamed chunks, in milliseconds.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectAction {
    /// Create a project and print it as JSON.
    Create {
        name: String,
        /// Plan name, one of the config's limits.plans (free, pro and enterprise by default).
        #[arg(long, default_value = "free")]
        plan: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List projects as JSON lines.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create an API key for a project (name or id). Prints the key alone on stdout; only its
    /// SHA-256 hash is stored, so it cannot be shown again.
    Create {
        project: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a key by its id (key_...). Gateways stop accepting it within the refresh interval.
    Revoke {
        key_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List a project's keys (ids and prefixes, never the keys) as JSON lines.
    List {
        project: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsageAction {
    /// Print the newest usage events as JSON lines.
    List {
        /// Project name or id; all projects when omitted.
        #[arg(long)]
        project: Option<String>,
        /// Number of events to print.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum RollupAction {
    /// Recompute the rollups of whole UTC days from the raw usage events, in one transaction.
    Rebuild {
        /// First day to rebuild, as YYYY-MM-DD (UTC).
        #[arg(long)]
        from: String,
        /// Last day to rebuild, inclusive, as YYYY-MM-DD (UTC).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs a parsed command and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    manage::run(cli.command)
}
