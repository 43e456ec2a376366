//! `jobrunner cron list` and `jobrunner cron run NAME`.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::{Config, CronConfig};
use crate::ledger::{CronFire, Ledger};

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Show every schedule: its next fire time and its last fire with the job's status.
    List {
        /// Print one JSON document (an array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue the schedule's job now (recorded as a manual fire) and print its id.
    Run {
        /// The schedule's name ([cron.NAME] in the config).
        name: String,
        /// Print one JSON document ({"name", "id"}) instead of the id alone.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: Config, command: CronCommand) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::connect(&config.database).await?;
    match command {
        CronCommand::List { json } => {
            let names: Vec<String> = config.cron.keys().cloned().collect();
            let last = ledger
                .cron_last_fires(&names)
                .await
                .context("reading cron fire times")?;
            let now = Utc::now();
            let rows: Vec<Row> = config
                .cron
                .iter()
                .map(|(name, cron)| Row::new(&config, name, cron, last.get(name), now))
                .collect();
            if json {
                let list: Vec<Value> = rows.iter().map(Row::to_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        CronCommand::Run { name, json } => {
            let id = crate::control::run_cron(&ledger, &config, &name).await?;
            if json {
                println!("{}", json!({ "name": name, "id": id }));
            } else {
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One schedule as `cron list` shows it.
struct Row {
    name: String,
    cron: CronConfig,
    queue: String,
    /// Next fire time in the schedule's zone, and in UTC; `None` when disabled.
    next: Option<(String, DateTime<Utc>)>,
    last: Option<CronFire>,
}

impl Row {
    fn new(
        config: &Config,
        name: &str,
        cron: &CronConfig,
        last: Option<&CronFire>,
        now: DateTime<Utc>,
    ) -> Row {
        let queue = crate::scheduler::queue_of(config, cron);
        let next = crate::scheduler::next_fire(cron, now).and_then(|next| {
            let zone = cron.parse_schedule().ok()?.zone();
            let local = next
                .with_timezone(&zone)
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            Some((local, next))
        });
        Row {
            name: name.to_owned(),
            cron: cron.clone(),
            queue,
            next,
            last: last.cloned(),
        }
    }

    fn to_json(&self) -> Value {
        let utc = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        json!({
            "name": self.name,
            "schedule": self.cron.schedule,
            "timezone": self.cron.timezone,
            "kind": self.cron.kind,
            "queue": self.queue,
            "enabled": self.cron.enabled,
            "catch_up": self.cron.catch_up.as_str(),
            "next_fire": self.next.as_ref().map(|n| &n.0),
            "next_fire_utc": self.next.as_ref().map(|n| utc(&n.1)),
            "last_fire": self.last.as_ref().map(|l| json!({
                "fire_at": l.fire_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "manual": l.manual,
                "job_id": l.job_id,
                "status": l.status,
            })),
        })
    }
}

fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "No cron schedules configured ([cron.NAME] in the config file)\n".to_owned();
    }
    let header = [
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "KIND",
        "QUEUE",
        "NEXT FIRE (ZONE)",
        "NEXT FIRE (UTC)",
        "LAST FIRE (UTC)",
        "LAST JOB",
        "STATUS",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            let (next_local, next_utc) = match &r.next {
                Some((local, utc)) => (
                    local.clone(),
                    utc.to_rfc3339_opts(SecondsFormat::Secs, true),
                ),
                None => ("disabled".to_owned(), "-".to_owned()),
            };
            let (fired, job, status) = match &r.last {
                Some(l) => (
                    format!(
                        "{}{}",
                        l.fire_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                        if l.manual { " (manual)" } else { "" }
                    ),
                    l.job_id.map_or("-".to_owned(), |id| id.to_string()),
                    l.status.clone().unwrap_or_else(|| "-".to_owned()),
                ),
                None => ("never".to_owned(), "-".to_owned(), "-".to_owned()),
            };
            [
                r.name.clone(),
                r.cron.schedule.clone(),
                r.cron.timezone.clone(),
                r.cron.kind.clone(),
                r.queue.clone(),
                next_local,
                next_utc,
                fired,
                job,
                status,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[&str]| {
        let mut text = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(&header);
    for row in &cells {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}
