//! One queue's trouble stays that queue's: on a single Redis, a queue whose keys
//! the daemon may not touch (an ACL user without them, as a misconfigured
//! managed Redis would give) holds up no other queue's jobs, and shows in
//! `/metrics` and `jobrunner queues`. On a cluster, a master that stops
//! answering holds up only the queues whose slots it serves.

use std::time::{Duration, Instant};

use jobrunner::config::QueueConfig;
use jobrunner::ledger::{NewJob, Status};
use jobrunner::runtime::Daemon;
use serde_json::json;
use uuid::Uuid;

use crate::cluster::{redis_job, sql_job};
use crate::failover::{Runs, all_succeeded_once, app_with_counter_and};
use crate::helpers::{TestApp, spawn_app};
use crate::topology::{Cluster, cli};

/// Enqueues `n` `noop` jobs on `queue` through SQL.
async fn enqueue_on(app: &TestApp, queue: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let job = NewJob {
            kind: "noop".into(),
            payload: json!({ "i": i }),
            queue: Some(queue.into()),
            ..NewJob::default()
        };
        ids.push(app.ledger.enqueue(&job).await.expect("enqueue"));
    }
    ids
}

/// The value of one series in a Prometheus text page, if it is there.
fn series(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_redis_keys_are_refused_holds_up_no_other_queue() {
    let mut app = spawn_app().await;
    let prefix = app.config.redis.key_prefix.clone();
    let port = app.redis.port();
    // A Redis user that may touch every key of the daemon but those of `stuck`.
    let acl = cli(
        port,
        &[
            "acl",
            "setuser",
            "jobs",
            "on",
            ">secret",
            &format!("~{prefix}:{{fine}}:*"),
            &format!("~{prefix}:workers"),
            "&*",
            "+@all",
        ],
    );
    assert_eq!(acl, "OK");
    app.config.redis.url = format!("redis://jobs:secret@127.0.0.1:{port}/0").into();
    for queue in ["stuck", "fine"] {
        app.config.queues.insert(
            queue.into(),
            QueueConfig {
                concurrency: 4,
                ..QueueConfig::default()
            },
        );
    }
    let daemon = app.start_daemon().await;

    // The stuck queue's jobs go first, more than two outbox batches of them, so
    // they head every batch unless the dispatcher passes over a queue that waits.
    let stuck: Vec<Uuid> = sqlx::query_scalar(
        "SELECT unnest(jobrunner.enqueue_many('noop',
             ARRAY(SELECT jsonb_build_object('i', g) FROM generate_series(1, 2500) g),
             queue => 'stuck'))",
    )
    .fetch_all(app.ledger.pool())
    .await
    .unwrap();
    let started = Instant::now();
    let fine = enqueue_on(&app, "fine", 20).await;
    for id in &fine {
        assert_eq!(app.wait_final(*id, 10).await.status, Status::Succeeded);
    }
    let took = started.elapsed();
    println!("20 jobs of the healthy queue succeeded {took:?} after the first enqueue");
    assert!(
        took < Duration::from_secs(3),
        "the healthy queue waited {took:?} behind the stuck one"
    );
    let waiting = app.ledger.job(stuck[0]).await.expect("read job");
    assert_eq!(waiting.status, Status::Queued, "{waiting:?}");

    // Ops see which queue is in trouble.
    let page = metrics_page(&daemon).await;
    let errors = series(
        &page,
        r#"jobrunner_redis_errors_total{queue="stuck",path="dispatch"}"#,
    );
    assert!(errors.is_some_and(|n| n >= 1.0), "{page}");
    assert_eq!(
        series(&page, r#"jobrunner_queue_redis_up{queue="stuck"}"#),
        Some(0.0)
    );
    assert_eq!(
        series(&page, r#"jobrunner_queue_redis_up{queue="fine"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(
            &page,
            r#"jobrunner_redis_errors_total{queue="fine",path="dispatch"}"#
        ),
        None
    );
    let (code, out, err) = app.cli(&["queues"]);
    assert_eq!(code, 0, "{err}");
    let row = |queue: &str| {
        out.lines()
            .find(|l| l.starts_with(queue))
            .unwrap_or_else(|| panic!("no row for {queue} in\n{out}"))
            .to_owned()
    };
    assert!(row("stuck").contains("error: "), "{out}");
    assert!(row("stuck").contains("NOPERM"), "{out}");
    assert!(row("fine").ends_with("ok"), "{out}");

    // Once the user may touch the queue's keys, its jobs run without a restart.
    let grant = cli(
        port,
        &["acl", "setuser", "jobs", &format!("~{prefix}:{{stuck}}:*")],
    );
    assert_eq!(grant, "OK");
    for id in &stuck {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    daemon.stop().await;
}

/// The daemon's `/metrics` page.
async fn metrics_page(daemon: &jobrunner::runtime::Daemon) -> String {
    let addr = daemon.admin_addr().expect("the admin listener is on");
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The `jobrunner_queue_redis_up` gauge of each of `queues` on `/metrics`.
async fn redis_up(daemon: &jobrunner::runtime::Daemon, queues: &[String]) -> Vec<Option<f64>> {
    let page = metrics_page(daemon).await;
    queues
        .iter()
        .map(|q| {
            series(
                &page,
                &format!(r#"jobrunner_queue_redis_up{{queue="{q}"}}"#),
            )
        })
        .collect()
}

/// The command timeout of the stopped-master tests: long, so a queue that
/// waited for it would show.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A cluster of its own (about 2 s to form) with one queue per master (names
/// starting `prefix`), whose first queue's master (the victim) no replica
/// replaces, and a daemon serving the queues with [`COMMAND_TIMEOUT`].
async fn cluster_with_a_victim(prefix: &str) -> (Cluster, Vec<String>, u16, TestApp, Daemon, Runs) {
    let cluster = Cluster::start();
    println!("cluster logs in {}", cluster.dir().display());
    let queues = cluster.queue_per_master(prefix);
    let victim = cluster.master_of(&queues[0]);
    // No replica takes over while the test watches: the master is just gone.
    cluster.forbid_failover_of(victim);
    let (app, daemon, runs) = app_with_counter_and(cluster.url(), &queues, |c| {
        c.redis.command_timeout = COMMAND_TIMEOUT;
    })
    .await;
    (cluster, queues, victim, app, daemon, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_that_stops_answering_holds_up_only_its_own_queue() {
    let (cluster, queues, victim, app, daemon, runs) = cluster_with_a_victim("h").await;
    let mut ids = Vec::new();
    for q in &queues {
        ids.push(sql_job(&app, q, "count", 0).await);
    }
    for id in &ids {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    assert_eq!(redis_up(&daemon, &queues).await, vec![Some(1.0); 3]);

    // SIGSTOP: the master's sockets stay open and nothing answers on them.
    cluster.node(victim).pause();
    let stopped = Instant::now();
    let mut waiting = Vec::new();
    let mut healthy = Vec::new();
    for i in 1..=10 {
        waiting.push(sql_job(&app, &queues[0], "count", i).await);
        for q in &queues[1..] {
            healthy.push(sql_job(&app, q, "count", i).await);
            healthy.push(redis_job(&app, q, "count", i).await);
        }
    }
    let enqueued = stopped.elapsed();
    for id in &healthy {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    let took = stopped.elapsed();
    println!(
        "{} jobs of the healthy queues enqueued in {enqueued:?} and done {took:?} after the stop",
        healthy.len()
    );
    assert!(
        took < Duration::from_secs(3),
        "the healthy queues waited {took:?} for the stopped master (command timeout {COMMAND_TIMEOUT:?})"
    );
    for id in &waiting {
        let job = app.ledger.job(*id).await.expect("read job");
        assert!(!job.status.is_final(), "{job:?}");
    }
    let up = redis_up(&daemon, &queues).await;
    assert_eq!(up, vec![Some(0.0), Some(1.0), Some(1.0)], "{queues:?}");
    // `jobrunner queues` (a process of its own, connecting while the master
    // is stopped) names the queue in trouble, and only that one.
    let asked = Instant::now();
    let (code, out, err) = tokio::task::block_in_place(|| app.cli(&["queues"]));
    assert_eq!(code, 0, "{err}");
    println!("`jobrunner queues` answered in {:?}", asked.elapsed());
    for (i, q) in queues.iter().enumerate() {
        let row = out
            .lines()
            .find(|l| l.starts_with(q.as_str()))
            .unwrap_or_else(|| panic!("no row for {q} in\n{out}"));
        if i == 0 {
            assert!(row.contains("error: "), "{out}");
        } else {
            assert!(row.ends_with("ok"), "{out}");
        }
    }

    // The master answers again: its queue's jobs run, none lost, none twice.
    cluster.node(victim).resume();
    let resumed = Instant::now();
    all_succeeded_once(&app, &waiting, &runs).await;
    println!(
        "the stopped queue's jobs done {:?} after SIGCONT",
        resumed.elapsed()
    );
    ids.extend(waiting);
    ids.extend(healthy);
    let runs = runs.lock().unwrap().clone();
    for id in &ids {
        assert_eq!(
            runs.get(id),
            Some(&1),
            "job {id} ran {:?} times",
            runs.get(id)
        );
    }
    assert_eq!(redis_up(&daemon, &queues).await, vec![Some(1.0); 3]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_that_answers_late_runs_its_jobs_once() {
    // A master that stops answering for longer than the outbox waits, then
    // answers: the dispatch the outbox gave up on reaches Redis after all, and
    // its rows, set aside meanwhile, go back and are sent again. Each job still
    // runs once.
    let (cluster, queues, victim, app, daemon, runs) = cluster_with_a_victim("late").await;
    let first = sql_job(&app, &queues[0], "count", 0).await;
    assert_eq!(app.wait_final(first, 20).await.status, Status::Succeeded);

    cluster.node(victim).pause();
    let mut late = Vec::new();
    let mut healthy = Vec::new();
    for i in 1..=10 {
        late.push(sql_job(&app, &queues[0], "count", i).await);
        healthy.push(sql_job(&app, &queues[1], "count", i).await);
    }
    for id in &healthy {
        assert_eq!(app.wait_final(*id, 20).await.status, Status::Succeeded);
    }
    // Longer than the outbox's patience, well inside the command timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.node(victim).resume();
    all_succeeded_once(&app, &late, &runs).await;
    let runs = runs.lock().unwrap().clone();
    for id in late.iter().chain(&healthy).chain([&first]) {
        assert_eq!(
            runs.get(id),
            Some(&1),
            "job {id} ran {:?} times",
            runs.get(id)
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_set_aside_by_a_daemon_that_stopped_go_out_with_the_next_one() {
    // A daemon stopped while a queue's jobs waited aside (its Redis was down):
    // the next daemon to start puts them back in the outbox, and they run.
    let app = spawn_app().await;
    // A first daemon marks the queue's Redis as known, so the next one has no
    // reason to dispatch every unfinished job again at start.
    app.start_daemon().await.stop().await;
    let ids = enqueue_on(&app, "default", 3).await;
    let pool = app.ledger.pool();
    sqlx::query(
        "WITH aside AS (DELETE FROM jobrunner.outbox WHERE id = ANY($1) RETURNING id)
         INSERT INTO jobrunner.outbox_held (id, queue) SELECT id, 'default' FROM aside",
    )
    .bind(&ids)
    .execute(pool)
    .await
    .unwrap();
    let daemon = app.start_daemon().await;
    for id in &ids {
        assert_eq!(app.wait_final(*id, 10).await.status, Status::Succeeded);
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobrunner.outbox_held")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    daemon.stop().await;
}
