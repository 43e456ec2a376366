//! The command line: clap definitions and one thin function per subcommand.
//!
//! This is the binary's edge: it turns errors into a message on stderr and an exit
//! code (`anyhow` lives here and in `main.rs` only). Exit codes: 0 success, 1 error,
//! 2 usage error (clap), 3 `status --wait` saw the job end other than `succeeded`.
//!
//! **Invariant:** nothing here talks to Redis or Postgres directly; it calls
//! `ledger`, `broker` and `runtime`.

mod admin;
mod control;
mod cron;
mod demo;
mod quarantine;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::broker::{Broker, RedisEnqueue};
use crate::config::{self, Config};
use crate::jobs::Registry;
use crate::ledger::{Job, Ledger, NewJob, Status};
use crate::runtime::Daemon;

/// `jobrunner --version`: the release, the commit it was built from and the
/// newest migration it expects (build.rs finds both).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("JOBRUNNER_GIT_COMMIT"),
    ", schema ",
    env!("JOBRUNNER_SCHEMA_VERSION"),
    ")"
);

/// Printed below every `--help`: the variables that change what a command does.
const ENVIRONMENT_HELP: &str = "\
Environment:
  JOBRUNNER_CONFIG        Config file, as --config
  JOBRUNNER_DATABASE_URL  Postgres URL (else DATABASE_URL); overrides database.url
  JOBRUNNER_REDIS_URL     Redis URL (else REDIS_URL); overrides redis.url
  RUST_LOG                Log filter, e.g. jobrunner=debug; overrides log.level

Exit codes: 0 success, 1 error, 2 usage error, 3 `status --wait` saw the job end other than succeeded";

#[derive(Debug, Parser)]
#[command(
    name = "jobrunner",
    version = VERSION,
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
    /// Set up, enqueue demo jobs of the built-in kinds, run them and show their status.
    Demo {
        /// Where the in-process daemon's log goes (default: jobrunner-demo.log in the
        /// temporary directory); the demo names it, and shows its end when something fails.
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
    /// The commands of the layers above the core (the binary's benchmark).
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
        command: cron::CronCommand,
    },
    /// Cancel a job: a waiting job never runs, a running one is told to stop.
    Cancel(control::CancelArgs),
    /// Pause a queue on every daemon: nothing new starts, running jobs finish.
    Pause(control::QueueArgs),
    /// Resume a paused queue.
    Resume(control::QueueArgs),
    /// Per queue: ready, scheduled, running, retrying and dead jobs, pause, oldest wait, last minute's ends.
    Queues(admin::QueuesArgs),
    /// List jobs, newest first.
    Jobs(admin::JobsArgs),
    /// Show one job in full: every column, each attempt's error, where it is in Redis.
    Inspect(admin::InspectArgs),
    /// Run a dead or cancelled job again, or every dead job with --dead.
    Retry(admin::RetryArgs),
    /// Delete final jobs that ended before a cutoff, in small batches.
    Purge(admin::PurgeArgs),
    /// The daemons running now.
    Workers(admin::WorkersArgs),
    /// Items read from Redis that could not be recorded as jobs, newest first.
    Quarantine(quarantine::QuarantineArgs),
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
    /// The job's kind: a built-in one (noop, sleep, content-generation, …) or one
    /// configured under [kinds.NAME].
    kind: String,
    /// The payload as JSON; `-` reads it from standard input.
    #[arg(long, default_value = "{}", value_name = "JSON")]
    payload: String,
    /// Read the payload from this file (for payloads larger than a command line holds).
    #[arg(long, value_name = "PATH", conflicts_with = "payload")]
    payload_file: Option<PathBuf>,
    /// The queue (default: the kind's configured queue, else `default`).
    #[arg(long)]
    queue: Option<String>,
    /// Higher runs first, from -1000 to 1000.
    #[arg(
        long,
        default_value_t = 0,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(i32).range(-1000..=1000)
    )]
    priority: i32,
    /// Run no earlier than this from now, e.g. 30s or 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Run no earlier than this time, in RFC 3339 (2026-12-01T09:00:00Z); a past
    /// time means now.
    #[arg(long, conflicts_with = "delay", value_parser = parse_rfc3339)]
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Most attempts before the job is dead (default: the kind's max_attempts).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    max_attempts: Option<i32>,
    /// Enqueue through SQL (transactional outbox) or straight into Redis.
    #[arg(long, value_enum, default_value_t = Via::Sql)]
    via: Via,
    /// While an unfinished job holds this key, print its id instead of adding
    /// a job (SQL only).
    #[arg(long)]
    unique_key: Option<String>,
    /// Print one JSON document ({"id", "kind", "queue", "via"}) instead of the id alone.
    #[arg(long)]
    json: bool,
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

/// Subcommands that a layer above the core adds to `jobrunner`: the binary adds
/// the benchmark this way, and a user's own binary can add its commands the same
/// way. They are parsed with the core's, show in its help, completions and man
/// pages, and run after the config is loaded and telemetry is installed.
pub trait Layer: Subcommand + std::fmt::Debug + Send + 'static {
    fn run(self, config: Config) -> impl Future<Output = anyhow::Result<ExitCode>> + Send;
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
    with_notes(Cli::<L>::command())
}

/// Parses the process's arguments; on a usage error prints it and exits 2.
pub fn parse<L: Layer>() -> Cli<L> {
    let matches = command::<L>().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// Runs one subcommand to completion.
pub async fn run<L: Layer>(cli: Cli<L>) -> anyhow::Result<ExitCode> {
    // These two describe the command line itself: no config, no services.
    match &cli.command {
        Command::Completions { shell } => return print_completions::<L>(*shell),
        Command::Manpages { dir } => return write_manpages::<L>(dir),
        // Everything else reads the config.
        _ => {}
    }
    let config = Config::load(cli.config.as_deref(), &crate::jobs::sections())?;
    let quiet = !matches!(cli.command, Command::Run { .. } | Command::Demo { .. });
    let mut log = config.log.clone();
    if quiet && std::env::var_os("RUST_LOG").is_none() {
        log.level = "warn".into();
    }
    // The demo's daemon logs at info to its own file, out of the table's way.
    let demo_log = match &cli.command {
        Command::Demo { log_file } => {
            let path = log_file
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("jobrunner-demo.log"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating the demo's log file {}", path.display()))?;
            // RUST_LOG still overrides this (telemetry reads it first).
            log.level = "info".into();
            crate::telemetry::init_to_file(&log, file);
            path
        }
        _ => {
            crate::telemetry::init(&log);
            PathBuf::new()
        }
    };
    match cli.command {
        Command::Run { migrate } => run_daemon(config, cli.config.as_deref(), migrate).await,
        Command::Migrate { check, json } => migrate(config, check, json).await,
        Command::Enqueue(args) => enqueue(config, args).await,
        Command::Status {
            id,
            json,
            wait,
            timeout,
        } => status(config, id, json, wait, timeout).await,
        Command::Layer(layer) => layer.run(config).await,
        Command::Config { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&config.to_json()?)?);
            } else {
                print!("{}", config.to_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cron { command } => cron::run(config, command).await,
        Command::Cancel(args) => control::cancel(config, args).await,
        Command::Pause(args) => control::pause(config, args).await,
        Command::Resume(args) => control::resume(config, args).await,
        Command::Queues(args) => admin::queues(config, args).await,
        Command::Jobs(args) => admin::jobs(config, args).await,
        Command::Inspect(args) => admin::inspect(config, args).await,
        Command::Retry(args) => admin::retry(config, args).await,
        Command::Purge(args) => admin::purge(config, args).await,
        Command::Workers(args) => admin::workers(config, args).await,
        Command::Quarantine(args) => quarantine::run(config, args).await,
        Command::Demo { .. } => demo::run(config, demo_log).await,
        Command::Completions { shell } => print_completions::<L>(shell),
        Command::Manpages { dir } => write_manpages::<L>(&dir),
    }
}

/// `migrate`: apply pending migrations; `migrate --check`: only say whether any
/// is pending (exit 1 with the reason on one line if so), for deploy scripts.
async fn migrate(config: Config, check: bool, json: bool) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let needed = crate::ledger::schema_version();
    if !check {
        ledger.migrate().await?;
        if json {
            println!("{}", json!({ "schema_version": needed, "current": true }));
        } else {
            println!("Database schema is current (version {needed})");
        }
        return Ok(ExitCode::SUCCESS);
    }
    match ledger.check_schema().await {
        Ok(()) => {
            if json {
                println!("{}", json!({ "schema_version": needed, "current": true }));
            } else {
                println!("Database schema is current (version {needed})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ crate::ledger::Error::SchemaOutdated { .. }) => {
            if json {
                println!(
                    "{}",
                    json!({ "schema_version": needed, "current": false, "reason": error.to_string() })
                );
            } else {
                eprintln!("jobrunner: {error}");
            }
            Ok(ExitCode::FAILURE)
        }
        Err(error) => Err(error).context("checking the database schema"),
    }
}

async fn enqueue(config: Config, args: EnqueueCommand) -> anyhow::Result<ExitCode> {
    if args.unique_key.is_some() && args.via == Via::Redis {
        bail!("--unique-key works only with --via sql: the Redis script has no unique keys");
    }
    let (json_out, via) = (args.json, args.via);
    let job = args.validate(&config)?;
    let id = match via {
        Via::Sql => {
            let ledger = Ledger::connect(&config.database).await?;
            ledger
                .enqueue(&job)
                .await
                .context("enqueueing through SQL")?
        }
        Via::Redis => {
            let broker = Broker::connect(&config.redis).await?;
            let id = broker
                .enqueue(&RedisEnqueue {
                    queue: job.queue.clone().unwrap_or_default(),
                    kind: job.kind.clone(),
                    payload: job.payload.to_string(),
                    priority: job.priority,
                    max_attempts: job.max_attempts.unwrap_or(0),
                    delay_ms: job
                        .run_at
                        .map_or(0, |t| (t - chrono::Utc::now()).num_milliseconds().max(0)),
                })
                .await
                .context("enqueueing through Redis")?;
            broker.quit().await;
            id
        }
    };
    if json_out {
        println!(
            "{}",
            json!({ "id": id, "kind": job.kind, "queue": job.queue, "via": via })
        );
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(
    config: Config,
    id: Uuid,
    json: bool,
    wait: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let job = if wait {
        ledger.wait_final(id, timeout).await?
    } else {
        ledger.job(id).await?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print!("{}", job_table(&job));
    }
    let status = job.status();
    Ok(match (wait, status) {
        (false, _) | (true, Some(Status::Succeeded)) => ExitCode::SUCCESS,
        (true, Some(s)) if s.is_final() => ExitCode::from(3),
        (true, _) => {
            // Waiting longer helps only if a daemon will run the job: say so when
            // the worker registry knows none that serves its queue.
            let serving = live_daemons_serving(&config, &job.queue).await;
            match serving {
                Ok(0) => bail!(
                    "job {id} is still {} after the timeout, and no live daemon serves queue `{}` (see `jobrunner workers`; start one with `jobrunner run`)",
                    job.status,
                    job.queue
                ),
                Ok(_) => bail!("job {id} is still {} after the timeout", job.status),
                Err(error) => bail!(
                    "job {id} is still {} after the timeout (whether a daemon serves queue `{}` is unknown: {})",
                    job.status,
                    job.queue,
                    crate::error_chain(error.as_ref())
                ),
            }
        }
    })
}

/// How many daemons in the worker registry are live, not draining, and fetch
/// from `queue`.
async fn live_daemons_serving(config: &Config, queue: &str) -> anyhow::Result<usize> {
    let broker = Broker::connect(&config.redis).await?;
    let workers = broker.workers().await;
    broker.quit().await;
    let now = chrono::Utc::now();
    Ok(workers?
        .iter()
        .filter(|w| !w.is_stale(now) && !w.draining && w.queues.iter().any(|q| q == queue))
        .count())
}

fn print_completions<L: Layer>(shell: CompletionShell) -> anyhow::Result<ExitCode> {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    // Into memory first: writing to a Vec cannot fail, where clap_complete panics
    // on a closed stdout (`jobrunner completions bash | head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command::<L>(), "jobrunner", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes jobrunner.1 and one page per visible subcommand (jobrunner-enqueue.1, …)
/// into `dir`, which is created if missing.
fn write_manpages<L: Layer>(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command::<L>(), dir)
        .with_context(|| format!("writing the man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// The daemon: start, tell systemd it is ready, reload on SIGHUP, drain on
/// SIGTERM/SIGINT, exit 0.
async fn run_daemon(
    config: Config,
    path: Option<&std::path::Path>,
    migrate: bool,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before anything slow: SIGHUP's default action ends the process, and
    // `systemctl reload` may come early.
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let notifier = crate::runtime::Notifier::from_env();
    if migrate {
        let ledger = Ledger::connect(&config.database).await?;
        ledger.migrate().await.context("applying migrations")?;
        tracing::info!(
            version = crate::ledger::schema_version(),
            "Migrations applied"
        );
    }
    let registry = Registry::builtin(&config);
    let daemon = Daemon::start_notifying(config, registry, notifier.clone()).await?;
    notifier.ready();
    let shutdown = daemon.shutdown_token();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Stop requested; draining (send the signal again to exit at once)");
        shutdown.cancel();
        wait_for_signal().await;
        tracing::warn!("Second stop signal; exiting without draining");
        std::process::exit(130);
    });
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&daemon, path, &notifier),
            _ = draining.cancelled() => break,
        }
    }
    daemon.wait().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: read the same file (and environment) again and apply it. A file that
/// does not load is logged and changes nothing; the daemon keeps running.
fn reload(daemon: &Daemon, path: Option<&std::path::Path>, notifier: &crate::runtime::Notifier) {
    notifier.reloading();
    match Config::load(path, &crate::jobs::sections()) {
        Ok(new) => {
            let origin = new.origin.clone();
            let report = daemon.reload(new);
            tracing::info!(
                config = origin,
                applied = report.applied.len(),
                needs_restart = report.needs_restart.len(),
                "Config reloaded"
            );
        }
        Err(error) => tracing::error!(
            error = %crate::error_chain(&error),
            "Config reload failed; keeping the running config"
        ),
    }
    notifier.ready();
}

/// SIGTERM or SIGINT, whichever comes first: both mean "stop".
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl EnqueueCommand {
    /// Checks the arguments the way the ledger would, but with messages that name
    /// the flag, and fills the queue from the kind's config. (clap has already
    /// checked the ranges of --priority and --max-attempts.)
    fn validate(self, config: &Config) -> anyhow::Result<NewJob> {
        if !config::valid_name(&self.kind) {
            bail!(
                "kind `{}`: use 1 to 64 letters, digits, '-', '_' or '.'",
                self.kind
            );
        }
        let payload = self.read_payload()?;
        if let Some(q) = &self.queue
            && !config::valid_name(q)
        {
            bail!("--queue `{q}`: use 1 to 64 letters, digits, '-', '_' or '.'");
        }
        if self.unique_key.as_deref() == Some("") {
            bail!("--unique-key must not be empty");
        }
        let queue = self
            .queue
            .or_else(|| config.kinds.get(&self.kind).map(|k| k.queue.clone()))
            .or_else(|| Some(config::DEFAULT_QUEUE.to_owned()));
        let run_at = match (self.delay, self.at) {
            (Some(d), _) => Some(
                chrono::Utc::now()
                    + chrono::Duration::from_std(d).context("--delay is too long")?,
            ),
            // A time in the past runs now, as jobrunner.enqueue treats it.
            (None, Some(at)) => Some(at.max(chrono::Utc::now())),
            (None, None) => None,
        };
        Ok(NewJob {
            kind: self.kind,
            payload,
            queue,
            run_at,
            priority: self.priority,
            max_attempts: self.max_attempts,
            unique_key: self.unique_key,
        })
    }

    /// The payload from --payload, standard input (`--payload -`) or
    /// --payload-file, parsed the way the daemon will parse it.
    fn read_payload(&self) -> anyhow::Result<Value> {
        let (text, source) = match (&self.payload_file, self.payload.as_str()) {
            (Some(path), _) => (
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading --payload-file {}", path.display()))?,
                format!("--payload-file {}: ", path.display()),
            ),
            (None, "-") => (
                std::io::read_to_string(std::io::stdin())
                    .context("reading the payload from standard input (--payload -)")?,
                "--payload - (standard input): ".to_owned(),
            ),
            (None, text) => (text.to_owned(), "--".to_owned()),
        };
        crate::jobs::payload::accept(&text).map_err(|message| anyhow::anyhow!("{source}{message}"))
    }
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

/// One job as a two-column table for people.
pub fn job_table(job: &Job) -> String {
    key_value_table(&job_rows(job))
}

/// The rows `status` and `inspect` show for a job, in order.
pub fn job_rows(job: &Job) -> Vec<(&'static str, String)> {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
        })
    };
    vec![
        ("id", job.id.to_string()),
        ("kind", job.kind.clone()),
        ("queue", job.queue.clone()),
        ("status", job.status.clone()),
        (
            "attempts",
            format!("{} of {}", job.attempts, job.max_attempts),
        ),
        ("priority", job.priority.to_string()),
        ("payload", job.payload.to_string()),
        (
            "result",
            job.result.as_ref().map_or("-".into(), Value::to_string),
        ),
        // A job that succeeded after failing keeps its last failure in the
        // ledger; shown as `last_error` it would read as the job's outcome.
        match (job.status(), &job.last_error) {
            (Some(Status::Succeeded), Some(e)) => ("earlier_error", e.clone()),
            (_, e) => ("last_error", e.clone().unwrap_or("-".into())),
        },
        ("unique_key", job.unique_key.clone().unwrap_or("-".into())),
        (
            "progress",
            match (job.progress, &job.progress_message) {
                (Some(p), Some(m)) => format!("{p}% {m}"),
                (Some(p), None) => format!("{p}%"),
                _ => "-".into(),
            },
        ),
        ("run_at", time(Some(job.run_at))),
        ("created_at", time(Some(job.created_at))),
        ("started_at", time(job.started_at)),
        ("finished_at", time(job.finished_at)),
        ("updated_at", time(Some(job.updated_at))),
    ]
}

/// Rows of `key value`, the keys padded to one column (at least 12 wide, so the
/// usual keys line up the same in `status` and `inspect`).
pub fn key_value_table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(12);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$} {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command, with the path of commands leading to it.
    fn all_args(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in command.get_arguments() {
            out.push((path.to_owned(), arg.clone()));
        }
        for sub in command.get_subcommands() {
            all_args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_and_option_has_help_text() {
        let mut command = command::<NoLayer>();
        command.build();
        let mut args = Vec::new();
        all_args(&command, "jobrunner", &mut args);
        let missing: Vec<String> = args
            .iter()
            .filter(|(_, a)| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|(_, a)| a.get_help().is_none() && a.get_long_help().is_none())
            .map(|(path, a)| format!("{path} {}", a.get_id()))
            .collect();
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn every_help_page_names_the_environment_that_matters() {
        let mut command = command::<NoLayer>();
        command.build();
        for sub in command
            .get_subcommands_mut()
            .filter(|s| s.get_name() != "help")
        {
            let help = sub.render_help().to_string();
            for var in [
                "JOBRUNNER_DATABASE_URL",
                "DATABASE_URL",
                "JOBRUNNER_REDIS_URL",
                "REDIS_URL",
                "JOBRUNNER_CONFIG",
                "RUST_LOG",
            ] {
                assert!(help.contains(var), "{} --help lacks {var}", sub.get_name());
            }
        }
    }

    #[test]
    fn the_version_names_the_commit_and_the_schema_the_binary_expects() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")), "{VERSION}");
        assert!(VERSION.contains(" (commit "), "{VERSION}");
        // build.rs reads migrations/ on its own; it must agree with the migrator.
        let schema = format!(", schema {})", crate::ledger::schema_version());
        assert!(VERSION.ends_with(&schema), "{VERSION} vs {schema}");
    }

    #[test]
    fn status_values_on_the_command_line_are_the_ledger_s_statuses() {
        let command = command::<NoLayer>();
        let jobs = command.find_subcommand("jobs").unwrap();
        let status = jobs
            .get_arguments()
            .find(|a| a.get_id() == "status")
            .unwrap();
        let offered: Vec<String> = status
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_owned())
            .collect();
        let statuses: Vec<String> = Status::value_variants()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(offered, statuses);
        // Each name parses back to the ledger's own value.
        for s in Status::value_variants() {
            assert_eq!(s.as_str().parse::<Status>(), Ok(*s));
        }
    }

    #[test]
    fn bad_ids_priorities_and_statuses_are_usage_errors() {
        for args in [
            &["jobrunner", "status", "not-a-uuid"][..],
            &["jobrunner", "inspect", "123"],
            &["jobrunner", "cancel", "x"],
            &["jobrunner", "retry", "nope"],
            &["jobrunner", "enqueue", "noop", "--priority", "1001"],
            &["jobrunner", "enqueue", "noop", "--priority", "-1001"],
            &["jobrunner", "enqueue", "noop", "--max-attempts", "0"],
            &["jobrunner", "jobs", "--status", "finished"],
            &[
                "jobrunner",
                "purge",
                "--status",
                "queued",
                "--older-than",
                "1d",
            ],
        ] {
            let error = command::<NoLayer>().try_get_matches_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
            assert!(
                matches!(
                    error.kind(),
                    clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
                ),
                "{args:?}: {:?}",
                error.kind()
            );
        }
        assert!(
            command::<NoLayer>()
                .try_get_matches_from(["jobrunner", "enqueue", "noop", "--priority", "-1000"])
                .is_ok()
        );
    }

    fn job(status: &str, last_error: Option<&str>) -> Job {
        let now = chrono::Utc::now();
        Job {
            id: Uuid::nil(),
            queue: "default".into(),
            kind: "fail".into(),
            payload: json!({}),
            status: status.into(),
            priority: 0,
            attempts: 2,
            max_attempts: 3,
            run_at: now,
            unique_key: None,
            result: None,
            last_error: last_error.map(str::to_owned),
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            progress: None,
            progress_message: None,
        }
    }

    #[test]
    fn a_job_that_succeeded_after_failing_shows_its_error_as_earlier_not_last() {
        let table = job_table(&job("succeeded", Some("boom")));
        let row = |table: &str, key: &str| {
            table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(key))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        };
        assert_eq!(
            row(&table, "earlier_error").as_deref(),
            Some("boom"),
            "{table}"
        );
        assert_eq!(row(&table, "last_error"), None, "{table}");
        let table = job_table(&job("dead", Some("boom")));
        assert_eq!(
            row(&table, "last_error").as_deref(),
            Some("boom"),
            "{table}"
        );
        assert_eq!(row(&table, "earlier_error"), None, "{table}");
    }
}
