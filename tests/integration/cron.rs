//! Cron schedules: one job per fire time across several daemon processes,
//! catch-up after downtime, and the `cron list` / `cron run` commands.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use jobrunner::config::{CatchUp, Config, CronConfig};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use jobrunner::ledger::Status;

fn cron(schedule: &str, kind: &str) -> CronConfig {
    CronConfig {
        schedule: schedule.into(),
        timezone: "UTC".into(),
        kind: kind.into(),
        payload: json!({}),
        queue: None,
        priority: None,
        catch_up: CatchUp::Skip,
        enabled: true,
    }
}

async fn fires(app: &TestApp, schedule: &str) -> Vec<(DateTime<Utc>, Option<Uuid>, bool)> {
    sqlx::query_as(
        "SELECT fire_at, job_id, manual FROM jobrunner.cron_fires
         WHERE schedule = $1 ORDER BY fire_at",
    )
    .bind(schedule)
    .fetch_all(app.ledger.pool())
    .await
    .expect("read cron_fires")
}

async fn job_ids(app: &TestApp, kind: &str) -> HashSet<Uuid> {
    sqlx::query_scalar::<_, Uuid>("SELECT id FROM jobrunner.jobs WHERE kind = $1")
        .bind(kind)
        .fetch_all(app.ledger.pool())
        .await
        .expect("read jobs")
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_enqueue_one_job_per_fire_time_of_a_per_second_schedule() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    let mut tick = cron("* * * * * *", "noop");
    tick.payload = json!({"from": "tick"});
    config.cron.insert("tick".into(), tick);
    let mut daemons: Vec<_> = (0..3).map(|_| app.spawn_daemon(&config)).collect();

    // About four seconds of firing once every daemon is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fires(&app, "tick").await.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedule never fired 5 times: {}",
            daemons[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for d in &daemons {
        d.signal("TERM");
    }
    for d in &mut daemons {
        assert!(d.wait_exit(15).expect("drains").success());
    }

    let fired = fires(&app, "tick").await;
    let jobs = job_ids(&app, "noop").await;
    assert!(fired.len() >= 5, "{fired:?}");
    let fired_jobs: HashSet<Uuid> = fired.iter().filter_map(|f| f.1).collect();
    assert_eq!(
        fired_jobs.len(),
        fired.len(),
        "every fire time has its own job"
    );
    assert_eq!(
        fired_jobs, jobs,
        "the jobs are exactly the fire times' jobs: no fire time enqueued twice"
    );
    // Whole seconds, each one after the first, none missed while daemons ran.
    for pair in fired.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            chrono::Duration::seconds(1),
            "{fired:?}"
        );
    }
    assert!(
        fired
            .iter()
            .all(|f| !f.2 && f.0.timestamp_subsec_nanos() == 0)
    );
    let any = *jobs.iter().next().expect("a job");
    assert_eq!(
        app.ledger.job(any).await.unwrap().payload,
        json!({"from": "tick"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_fire_times_are_skipped_or_run_once_and_a_new_schedule_does_not_backfill() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    let mut once = cron("0 0 1 1 *", "noop");
    once.catch_up = CatchUp::RunOnce;
    once.payload = json!({"from": "once"});
    config
        .cron
        .insert("yearly-skip".into(), cron("0 0 1 1 *", "noop"));
    config.cron.insert("yearly-once".into(), once.clone());
    config.cron.insert("yearly-new".into(), once);
    // The daemons last ran these two in 2020.
    let old = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    let skip_job = Uuid::now_v7();
    for name in ["yearly-skip", "yearly-once"] {
        sqlx::query(
            "INSERT INTO jobrunner.cron_fires (schedule, fire_at, job_id) VALUES ($1, $2, $3)",
        )
        .bind(name)
        .bind(old)
        .bind(skip_job)
        .execute(app.ledger.pool())
        .await
        .unwrap();
    }
    let mut daemon = app.spawn_daemon(&config);

    let latest = Utc
        .with_ymd_and_hms(Utc::now().year(), 1, 1, 0, 0, 0)
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !fires(&app, "yearly-once").await.iter().any(|f| f.0 > old) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "run_once never caught up: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One round handles every schedule; give it one more to be sure.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // (The 2020 row itself may be pruned by now: only the latest is kept.)
    let once: Vec<_> = fires(&app, "yearly-once")
        .await
        .into_iter()
        .filter(|f| f.0 > old)
        .collect();
    assert_eq!(once.len(), 1, "one job for all the missed years: {once:?}");
    assert_eq!(once[0].0, latest, "for the latest missed fire time");
    let job = app.wait_final(once[0].1.expect("job id"), 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.result, Some(json!({"from": "once"})));

    assert_eq!(
        fires(&app, "yearly-skip").await,
        vec![(old, Some(skip_job), false)],
        "skip enqueues nothing for missed times, and its last fire is kept"
    );
    assert!(
        fires(&app, "yearly-new").await.is_empty(),
        "a schedule never fired before starts from now"
    );
    assert_eq!(app.count_jobs().await, 1);
    daemon.signal("TERM");
    assert!(daemon.wait_exit(10).expect("drains").success());
    let log = daemon.log_text();
    let skipped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("skipping them"))
        .collect();
    assert_eq!(skipped.len(), 1, "logged once: {log}");
    assert!(
        skipped[0].contains("yearly-skip") && skipped[0].contains("2021-01-01"),
        "{log}"
    );
}

/// A config with one enabled schedule in Berlin and one disabled one.
fn listed(app: &TestApp) -> Config {
    let mut config = app.config.clone();
    let mut report = cron("30 2 * * *", "noop");
    report.timezone = "Europe/Berlin".into();
    report.payload = json!({"report": "nightly"});
    config.cron.insert("report".into(), report);
    let mut paused = cron("@hourly", "sleep");
    paused.enabled = false;
    paused.queue = Some("batch".into());
    config.cron.insert("paused".into(), paused);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_run_enqueues_a_job_that_succeeds_and_cron_list_shows_it() {
    let mut app = spawn_app().await;
    app.config = listed(&app);

    let (code, out, err) = app.cli(&["cron", "list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for column in [
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
    ] {
        assert!(lines[0].contains(column), "{out}");
    }
    let paused: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        paused,
        [
            "paused", "@hourly", "UTC", "sleep", "batch", "disabled", "-", "never", "-", "-"
        ]
    );
    let report: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(report[..6], ["report", "30", "2", "*", "*", "*"]);
    assert_eq!(report[6..9], ["Europe/Berlin", "noop", "default"]);
    assert!(report[9].ends_with("T02:30:00+01:00"), "{out}");
    assert!(report[10].ends_with("T01:30:00Z"), "{out}");
    assert_eq!(report[11], "never");

    let (code, out, err) = app.cli(&["cron", "run", "report"]);
    assert_eq!(code, 0, "{err}");
    let id: Uuid = out.trim().parse().expect("prints the job id");
    let daemon = app.start_daemon().await;
    let job = app.wait_final(id, 10).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.result, Some(json!({"report": "nightly"})));
    let fired = fires(&app, "report").await;
    assert_eq!(fired.len(), 1);
    assert_eq!(
        (fired[0].1, fired[0].2),
        (Some(id), true),
        "recorded as manual"
    );

    let (code, out, err) = app.cli(&["cron", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).expect("JSON");
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    let report = &list[1];
    assert_eq!(report["name"], "report");
    assert_eq!(report["schedule"], "30 2 * * *");
    assert_eq!(report["timezone"], "Europe/Berlin");
    assert_eq!(report["kind"], "noop");
    assert_eq!(report["queue"], "default");
    assert_eq!(report["enabled"], true);
    assert_eq!(report["catch_up"], "skip");
    let local = DateTime::parse_from_rfc3339(report["next_fire"].as_str().unwrap()).unwrap();
    let utc = DateTime::parse_from_rfc3339(report["next_fire_utc"].as_str().unwrap()).unwrap();
    assert_eq!(local, utc, "the same instant twice");
    assert!(local > Utc::now() && local < Utc::now() + chrono::Duration::days(1));
    assert_eq!(report["last_fire"]["job_id"], id.to_string());
    assert_eq!(report["last_fire"]["status"], "succeeded");
    assert_eq!(report["last_fire"]["manual"], true);
    assert_eq!(list[0]["name"], "paused");
    assert_eq!(list[0]["next_fire"], Value::Null);
    assert_eq!(list[0]["last_fire"], Value::Null);

    let (_, out, _) = app.cli(&["cron", "list"]);
    let report = out.lines().nth(2).expect("the report row");
    assert!(
        report.contains(&format!("(manual)  {id}  succeeded")),
        "{out}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_run_of_an_unknown_name_lists_the_names() {
    let mut app = spawn_app().await;
    app.config = listed(&app);
    let (code, out, err) = app.cli(&["cron", "run", "reprot"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("no cron schedule named `reprot`") && err.contains("paused, report"),
        "{err}"
    );
    assert_eq!(app.count_jobs().await, 0);
}
