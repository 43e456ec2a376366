//! The command line's clap definitions: the global options, every core
//! subcommand's arguments, the [`Layer`] hook through which layers above the core
//! add theirs, and the value parsers that make bad input a usage error (exit 2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use uuid::Uuid;

use sqlx::migrate::Migration;

use crate::config::{Claim, Config};
use crate::jobs::Registry;

/// `jobrunner --version`: the release, the commit it was built from (build.rs
/// finds it) and the newest migration it expects, the layer's included.
pub fn version<L: Layer>() -> String {
    format!(
        "{} (commit {}, schema {})",
        env!("CARGO_PKG_VERSION"),
        env!("JOBRUNNER_GIT_COMMIT"),
        crate::ledger::schema_version(&L::migrations())
    )
}

/// Printed below every `--help`: the variables that change what a command does.
const ENVIRONMENT_HELP: &str = "\
Environment:
  JOBRUNNER_CONFIG        Config file, as --config
  JOBRUNNER_DATABASE_URL  Postgres URL (else DATABASE_URL); overrides database.url
  JOBRUNNER_REDIS_URL     Redis URL (else REDIS_URL); overrides redis.url
  JOBRUNNER_DATABASE_PASSWORD_FILE, JOBRUNNER_REDIS_PASSWORD_FILE
                          Password files; override database/redis.password_file
  CREDENTIALS_DIRECTORY   Set by systemd (LoadCredential=): a password_file
                          given as a bare name is read from it
  PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY
                          Postgres TLS, for what the URL does not say
  RUST_LOG                Log filter, e.g. jobrunner=debug; overrides log.level

Exit codes: 0 success, 1 error, 2 usage error, 3 `status --wait` saw the job end other than succeeded";

#[derive(Debug, Parser)]
#[command(
    name = "jobrunner",
    about = "A background job-runner daemon: Postgres ledger, Redis dispatch",
    after_help = ENVIRONMENT_HELP
)]
pub struct Cli<L: Layer = NoLayer> {
    /// Config file (default: ./config/jobrunner.toml, then /etc/jobrunner/jobrunner.toml).
    #[arg(long, global = true, env = "JOBRUNNER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command<L>,
}

#[derive(Debug, Subcommand)]
pub enum Command<L: Layer = NoLayer> {
    /// Run the daemon until SIGTERM or SIGINT (a second signal exits at once);
    /// SIGHUP reloads the config file.
    Run {
        /// Apply pending migrations before starting.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations, or check that none is pending.
    Migrate {
        /// Apply nothing: exit 0 when the schema is current, 1 with the reason otherwise.
        #[arg(long)]
        check: bool,
        /// Print one JSON document instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a job and print its id.
    Enqueue(EnqueueCommand),
    /// Show one job.
    Status {
        /// The job's id (a UUID).
        #[arg(value_parser = parse_job_id)]
        id: Uuid,
        /// Print a JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Wait until the job ends; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long, e.g. 30s (exit 1).
        #[arg(long, value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Option<Duration>,
    },
    /// The commands of the layers above the core (the binary's demo and benchmark).
    #[command(flatten)]
    Layer(L),
    /// Print the effective configuration (passwords hidden).
    Config {
        /// Print one JSON document instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Cron schedules ([cron.NAME]): list them, or run one now.
    Cron {
        #[command(subcommand)]
        command: super::cron::CronCommand,
    },
    /// Cancel a job: a waiting job never runs, a running one is told to stop.
    Cancel(super::control::CancelArgs),
    /// Pause a queue on every daemon: nothing new starts, running jobs finish.
    Pause(super::control::QueueArgs),
    /// Resume a paused queue.
    Resume(super::control::QueueArgs),
    /// Per queue: ready, scheduled, running, retrying and dead jobs, pause, oldest wait, last minute's ends.
    Queues(super::queues::QueuesArgs),
    /// List jobs, newest first.
    Jobs(super::jobs::JobsArgs),
    /// Show one job in full: every column, each attempt's error, where it is in Redis.
    Inspect(super::jobs::InspectArgs),
    /// Run a dead or cancelled job again, or every dead job with --dead.
    Retry(super::jobs::RetryArgs),
    /// Delete final jobs that ended before a cutoff, in small batches.
    Purge(super::jobs::PurgeArgs),
    /// The daemons running now.
    Workers(super::queues::WorkersArgs),
    /// Items read from Redis that could not be recorded as jobs, newest first.
    Quarantine(super::quarantine::QuarantineArgs),
    /// Print a shell completion script (bash, zsh or fish) to standard output.
    #[command(hide = true)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Write the man pages (jobrunner.1, jobrunner-SUBCOMMAND.1) into a directory.
    #[command(hide = true)]
    Manpages {
        /// The directory to write them into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct EnqueueCommand {
    /// The job's kind: a built-in one (noop, sleep, …), one the binary adds, or
    /// one configured under [kinds.NAME].
    pub(super) kind: String,
    /// The payload as JSON; `-` reads it from standard input.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    pub(super) payload: String,
    /// Read the payload from this file (for payloads larger than a command line holds).
    #[arg(long, value_name = "PATH", conflicts_with = "payload")]
    pub(super) payload_file: Option<PathBuf>,
    /// The queue (default: the kind's configured queue, else `default`).
    #[arg(long)]
    pub(super) queue: Option<String>,
    /// Higher runs first, from -1000 to 1000.
    #[arg(
        long,
        default_value_t = 0,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(i32).range(-1000..=1000)
    )]
    pub(super) priority: i32,
    /// Run no earlier than this from now, e.g. 30s or 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(super) delay: Option<Duration>,
    /// Run no earlier than this time, in RFC 3339 (2026-12-01T09:00:00Z); a past
    /// time means now.
    #[arg(long, conflicts_with = "delay", value_parser = parse_rfc3339)]
    pub(super) at: Option<chrono::DateTime<chrono::Utc>>,
    /// Most attempts before the job is dead (default: the kind's max_attempts).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub(super) max_attempts: Option<i32>,
    /// Enqueue through SQL (transactional outbox) or straight into Redis.
    #[arg(long, value_enum, default_value_t = Via::Sql)]
    pub(super) via: Via,
    /// While an unfinished job holds this key, print its id instead of adding
    /// a job (SQL only).
    #[arg(long)]
    pub(super) unique_key: Option<String>,
    /// Print one JSON document ({"id", "kind", "queue", "via"}) instead of the id alone.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Sql,
    Redis,
}

/// The shells `jobrunner completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// What a layer above the core adds to `jobrunner`: subcommands, and kinds with
/// their config sections and tables. The binary adds the demo, the benchmark and
/// the business kinds this way, and a user's own binary can add its own the same
/// way. The subcommands are parsed with the core's, show in its help, completions
/// and man pages, and run after the config is loaded and telemetry is installed.
pub trait Layer: Subcommand + std::fmt::Debug + Send + 'static {
    /// Where this command's log goes, at info, when it runs a daemon whose lines
    /// would get in the way of what it prints (the demo); `None`: stderr, at warn
    /// unless `RUST_LOG` says otherwise.
    fn log_file(&self) -> Option<PathBuf> {
        None
    }

    fn run(self, config: Config) -> impl Future<Output = anyhow::Result<ExitCode>> + Send;

    /// The top-level config sections the layer's kinds read; the file may hold
    /// them (and no other unknown table).
    fn sections() -> Vec<Claim> {
        Vec::new()
    }

    /// Adds the layer's kinds to the registry the daemon runs, after the core's
    /// own and before the kinds an admin configured with a generic handler.
    fn register(_config: &Config, _registry: &mut Registry) {}

    /// The migrations of the layer's own tables: `jobrunner migrate` applies them
    /// with the ledger's, and the daemon does not start until they are applied.
    fn migrations() -> Vec<Migration> {
        Vec::new()
    }
}

/// The registry of the daemon that `run` starts: the core's kinds and the layer's,
/// with the layer's migrations.
pub fn registry<L: Layer>(config: &Config) -> Registry {
    Registry::builtin_with(config, |registry| {
        L::register(config, registry);
        registry.add_migrations(L::migrations());
    })
}

/// The command line of the core alone, with no layer's commands.
#[derive(Debug, Subcommand)]
pub enum NoLayer {}

impl Layer for NoLayer {
    async fn run(self, _config: Config) -> anyhow::Result<ExitCode> {
        match self {}
    }
}

/// The command line as clap sees it, with the environment and exit-code notes
/// below every subcommand's help too. Completions and man pages come from it.
pub fn command<L: Layer>() -> clap::Command {
    fn with_notes(command: clap::Command) -> clap::Command {
        command
            .after_help(ENVIRONMENT_HELP)
            .mut_subcommands(with_notes)
    }
    with_notes(Cli::<L>::command().version(version::<L>()))
}

/// Parses the process's arguments; on a usage error prints it and exits 2.
pub fn parse<L: Layer>() -> Cli<L> {
    let matches = command::<L>().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// A job id argument: a UUID, or a usage error (exit 2) that says so.
pub(crate) fn parse_job_id(text: &str) -> Result<Uuid, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not a job id (a UUID such as 01a2032f-77c1-7992-99ca-a1aa94ed1ed1)")
    })
}

/// `--at`: an RFC 3339 time with its offset, e.g. 2026-12-01T09:00:00Z.
fn parse_rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!("`{text}` is not an RFC 3339 time like 2026-12-01T09:00:00Z or 2026-12-01T10:00:00+01:00 ({e})")
        })
}
