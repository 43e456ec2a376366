//! The command line: one thin function per subcommand. The clap definitions are
//! in `args.rs`, the daemon's command in `daemon.rs`, the tables people read in
//! `table.rs`; `jobs.rs` (`jobs`, `inspect`, `retry`, `purge`) and `queues.rs`
//! (`queues`, `workers`) are the admin commands.
//!
//! This is the binary's edge: it turns errors into a message on stderr and an exit
//! code (`anyhow` lives here and in `main.rs` only). Exit codes: 0 success, 1 error,
//! 2 usage error (clap), 3 `status --wait` saw the job end other than `succeeded`.
//!
//! **Invariant:** nothing here talks to Redis or Postgres directly; it calls
//! `ledger`, `broker` and `runtime`. Checked by
//! `tests/integration/invariants.rs::in_the_core_only_ledger_runs_sql` and
//! `::only_broker_names_the_redis_client`.

mod args;
mod control;
mod cron;
mod daemon;
mod jobs;
mod quarantine;
mod queues;
mod table;

pub(crate) use args::parse_job_id;
pub use args::{
    Cli, Command, CompletionShell, EnqueueCommand, Layer, NoLayer, Via, command, parse, registry,
    version,
};
pub use table::{job_rows, job_table, key_value_table};

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::broker::{Broker, RedisEnqueue};
use crate::config::{self, Config};
use crate::ledger::{Ledger, NewJob, Status};

/// Runs one subcommand to completion.
pub async fn run<L: Layer>(cli: Cli<L>) -> anyhow::Result<ExitCode> {
    // These two describe the command line itself: no config, no services.
    match &cli.command {
        Command::Completions { shell } => return print_completions::<L>(*shell),
        Command::Manpages { dir } => return write_manpages::<L>(dir),
        // Everything else reads the config.
        _ => {}
    }
    let config = Config::load(cli.config.as_deref(), &sections::<L>())?;
    let log_file = match &cli.command {
        Command::Layer(layer) => layer.log_file(),
        _ => None,
    };
    let quiet = !matches!(cli.command, Command::Run { .. }) && log_file.is_none();
    let mut log = config.log.clone();
    if quiet && std::env::var_os("RUST_LOG").is_none() {
        log.level = "warn".into();
    }
    match log_file {
        // A layer's daemon (the demo's) logs at info to its own file, out of the
        // way of what the command prints.
        Some(path) => {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating the log file {}", path.display()))?;
            // RUST_LOG still overrides this (telemetry reads it first).
            log.level = "info".into();
            crate::telemetry::init_to_file(&log, file);
        }
        None => crate::telemetry::init(&log),
    }
    match cli.command {
        Command::Run { migrate } => {
            daemon::run_daemon::<L>(config, cli.config.as_deref(), migrate).await
        }
        Command::Migrate { check, json } => migrate(config, &L::migrations(), check, json).await,
        Command::Enqueue(args) => enqueue(config, args).await,
        Command::Status {
            id,
            json,
            wait,
            timeout,
        } => status(config, id, json, wait, timeout).await,
        Command::Layer(layer) => layer.run(config).await,
        Command::Config { json } => {
            // Validated at load, so the URL reads; the topology is shown beside
            // the settings, not as one of them.
            let topology = crate::config::RedisTopology::of_url(config.redis.url.expose()).ok();
            if json {
                let mut doc = config.to_json()?;
                if let (Some(t), Some(map)) = (&topology, doc.as_object_mut()) {
                    map.insert("redis_topology".into(), serde_json::to_value(t)?);
                }
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                if let Some(t) = &topology {
                    println!("# Redis: {t}");
                }
                print!("{}", config.to_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cron { command } => cron::run(config, command).await,
        Command::Cancel(args) => control::cancel(config, args).await,
        Command::Pause(args) => control::pause(config, args).await,
        Command::Resume(args) => control::resume(config, args).await,
        Command::Queues(args) => queues::queues(config, args).await,
        Command::Jobs(args) => jobs::jobs(config, args).await,
        Command::Inspect(args) => jobs::inspect(config, args).await,
        Command::Retry(args) => jobs::retry(config, args).await,
        Command::Purge(args) => jobs::purge(config, args).await,
        Command::Workers(args) => queues::workers(config, args).await,
        Command::Quarantine(args) => quarantine::run(config, args).await,
        Command::Completions { shell } => print_completions::<L>(shell),
        Command::Manpages { dir } => write_manpages::<L>(&dir),
    }
}

/// `migrate`: apply pending migrations; `migrate --check`: only say whether any
/// is pending (exit 1 with the reason on one line if so), for deploy scripts.
async fn migrate(
    config: Config,
    layers: &[sqlx::migrate::Migration],
    check: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    let needed = crate::ledger::schema_version(layers);
    if !check {
        ledger.migrate(layers).await?;
        if json {
            println!("{}", json!({ "schema_version": needed, "current": true }));
        } else {
            println!("Database schema is current (version {needed})");
        }
        return Ok(ExitCode::SUCCESS);
    }
    match ledger.check_schema(layers).await {
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
    let mut job = if wait {
        ledger.wait_final(id, timeout).await?
    } else {
        ledger.job(id).await?
    };
    crate::redact::job(&crate::redact::Redaction::new(&config.redaction), &mut job);
    if json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print!("{}", job_table(&job));
    }
    Ok(match (wait, job.status) {
        (false, _) | (true, Status::Succeeded) => ExitCode::SUCCESS,
        (true, s) if s.is_final() => ExitCode::from(3),
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

/// The config sections the command line reads besides the core's own: the
/// layer's (its kinds') and `[arq]`.
pub fn sections<L: Layer>() -> Vec<crate::config::Claim> {
    let mut claims = L::sections();
    claims.extend(crate::arq::sections());
    claims
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;
    use crate::ledger::Job;

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
                "JOBRUNNER_DATABASE_PASSWORD_FILE",
                "JOBRUNNER_REDIS_PASSWORD_FILE",
                "CREDENTIALS_DIRECTORY",
                "PGSSLMODE",
                "RUST_LOG",
            ] {
                assert!(help.contains(var), "{} --help lacks {var}", sub.get_name());
            }
        }
    }

    #[test]
    fn the_version_names_the_commit_and_the_schema_the_binary_expects() {
        let version = version::<NoLayer>();
        assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
        assert!(version.contains(" (commit "), "{version}");
        let schema = format!(", schema {})", crate::ledger::schema_version(&[]));
        assert!(version.ends_with(&schema), "{version} vs {schema}");
        let mut command = command::<NoLayer>();
        command.build();
        assert_eq!(command.get_version(), Some(version.as_str()));
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
            status: status.parse().unwrap(),
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
