//! Redis failing over under load: a cluster master SIGKILLed with its replica
//! promoted, a master down with no replica to take over, and a Sentinel
//! failover. Each starts its own servers (it changes their shape), and the
//! daemon follows without a restart: no job is lost, none runs more than once
//! more, and the outcome kept is always the last attempt's (fencing).
//!
//! The orphan sweep runs every second here (60 s by default): it is what
//! dispatches again the jobs a promoted replica never received.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobrunner::config::{Config, QueueConfig};
use jobrunner::jobs::{JobContext, JobResult, Registry};
use jobrunner::ledger::{Job, Status};
use jobrunner::runtime::Daemon;
use serde_json::json;
use uuid::Uuid;

use crate::cluster::sql_job;
use crate::helpers::{TestApp, spawn_app_on};
use crate::topology::{Cluster, Sentinels, cli, wait_until};

/// How many times the handler ran each job.
pub type Runs = Arc<Mutex<HashMap<Uuid, u32>>>;

/// An app on `url` serving `queues`, with a `count` kind that records its runs
/// and returns the attempt it ran as.
async fn app_with_counter(url: String, queues: &[String]) -> (TestApp, Daemon, Runs) {
    app_with_counter_and(url, queues, |_| {}).await
}

/// [`app_with_counter`], with `tweak` applied to the daemon's config.
pub async fn app_with_counter_and(
    url: String,
    queues: &[String],
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, Daemon, Runs) {
    let mut app = spawn_app_on(Some(url)).await;
    app.config.queues.clear();
    for q in queues {
        app.config.queues.insert(
            q.clone(),
            QueueConfig {
                concurrency: 8,
                ..QueueConfig::default()
            },
        );
    }
    app.config.runtime.lease = Duration::from_secs(5);
    app.config.runtime.orphan_sweep_interval = Duration::from_secs(1);
    tweak(&mut app.config);
    let runs: Runs = Arc::default();
    let mut registry = Registry::builtin(&app.config);
    let seen = runs.clone();
    registry.register("count", move |ctx: JobContext| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            *seen.lock().unwrap().entry(ctx.id).or_default() += 1;
            JobResult::Ok(json!({ "attempt": ctx.attempt }))
        }
    });
    let daemon = app.start_daemon_with(app.config.clone(), registry).await;
    (app, daemon, runs)
}

/// Every job succeeded, ran at most twice, and the outcome kept is the last
/// attempt's (a late acknowledgement of an older attempt was refused).
pub async fn all_succeeded_once(app: &TestApp, ids: &[Uuid], runs: &Runs) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        let job = app.wait_final(*id, 60).await;
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
        let kept = job.result.as_ref().and_then(|r| r["attempt"].as_i64());
        assert_eq!(kept, Some(job.attempts as i64), "{job:?}");
        jobs.push(job);
    }
    let runs = runs.lock().unwrap();
    let again = ids.iter().filter(|id| runs.get(id) > Some(&1)).count();
    let most = ids.iter().filter_map(|id| runs.get(id)).max().copied();
    println!("{} jobs, {again} run again after the failover", ids.len());
    assert!(most <= Some(2), "a job ran {most:?} times");
    jobs
}

/// Enqueues `n` jobs per queue through SQL, spread over about `over`.
async fn load(app: &TestApp, queues: &[String], n: usize, over: Duration) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let pause = over / n as u32;
    for i in 0..n {
        for q in queues {
            ids.push(sql_job(app, q, "count", i).await);
        }
        tokio::time::sleep(pause).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_mid_load_fails_over_and_no_job_is_lost() {
    // Forms a cluster of its own (about 2 s) and waits for a failover (1-3 s).
    let mut cluster = Cluster::start();
    println!("cluster logs in {}", cluster.dir().display());
    let queues = cluster.queue_per_master("f");
    let (app, daemon, runs) = app_with_counter(cluster.url(), &queues).await;
    let victim = cluster.master_of(&queues[0]);

    let loader = {
        let (app, queues) = (&app, &queues);
        async move { load(app, queues, 100, Duration::from_secs(3)).await }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed_at = Instant::now();
        let at = chrono::Utc::now();
        cluster.node_mut(victim).kill();
        (killed_at, at)
    };
    let (ids, (killed_at, at)) = tokio::join!(loader, killer);
    let promoted = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.serving(&queues[0]).is_none_or(|m| m == victim) {
            assert!(
                Instant::now() < deadline,
                "no replica took over from {victim}:\n{}",
                cluster.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        killed_at.elapsed()
    });
    let jobs = all_succeeded_once(&app, &ids, &runs).await;
    // Recovery: from the kill to the first job of the failed queue that finished
    // on the promoted replica.
    let first_after = jobs
        .iter()
        .filter(|j| j.queue == queues[0])
        .filter_map(|j| j.finished_at)
        .filter(|t| *t > at + chrono::Duration::milliseconds(200))
        .min()
        .expect("jobs of the failed queue finished after the kill");
    println!(
        "replica promoted {promoted:?} after the kill; the queue ran again {:?} after it",
        (first_after - at).to_std().unwrap_or_default()
    );
    // The other queues kept running meanwhile: most of their jobs enqueued
    // between the kill and the failed queue's recovery also ran in that window
    // (those enqueued in its last moments may finish just after it).
    let window = |t: &chrono::DateTime<chrono::Utc>| *t > at && *t < first_after;
    let others: Vec<&Job> = jobs.iter().filter(|j| j.queue != queues[0]).collect();
    let enqueued = others.iter().filter(|j| window(&j.created_at)).count();
    let during = others
        .iter()
        .filter(|j| j.finished_at.as_ref().is_some_and(window))
        .count();
    println!(
        "jobs of the other queues enqueued during the failover: {enqueued}, finished: {during}"
    );
    assert!(
        enqueued > 0 && during * 2 >= enqueued,
        "the other queues waited for the failover: {during} of {enqueued} jobs ran"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_with_no_replica_taking_over_loses_no_job_until_a_manual_failover() {
    // Forms a cluster of its own (about 2 s).
    let mut cluster = Cluster::start();
    println!("cluster logs in {}", cluster.dir().display());
    let queues = cluster.queue_per_master("d");
    let (app, daemon, runs) = app_with_counter(cluster.url(), &queues).await;
    let victim = cluster.master_of(&queues[0]);
    // Its replica must not take over by itself: the master stays down.
    let replica = cluster.forbid_failover_of(victim);
    cluster.node_mut(victim).kill();
    let mut down = Vec::new();
    let mut up = Vec::new();
    for i in 0..20 {
        down.push(sql_job(&app, &queues[0], "count", i).await);
        for q in &queues[1..] {
            up.push(sql_job(&app, q, "count", i).await);
        }
    }
    // While the master is down its queue's jobs wait in the ledger, none lost
    // and none run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &down {
        let job = app.ledger.job(*id).await.expect("read job");
        assert_eq!(job.status, Status::Queued, "{job:?}");
    }
    // The healthy queues did not wait for it: their jobs ran in those 2 s.
    for id in &up {
        let job = app.ledger.job(*id).await.expect("read job");
        assert_eq!(job.status, Status::Succeeded, "{job:?}");
    }

    // An operator promotes the replica; the daemon follows without a restart.
    assert_eq!(cli(replica, &["cluster", "failover", "takeover"]), "OK");
    let promoted = Instant::now();
    all_succeeded_once(&app, &down, &runs).await;
    all_succeeded_once(&app, &up, &runs).await;
    println!("every job done {:?} after the takeover", promoted.elapsed());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_load_loses_no_job() {
    // Starts its own master, replica and sentinels, and waits for a failover
    // (sentinels notice a master gone after 1 s, then elect and promote).
    let mut set = Sentinels::start();
    println!("sentinel logs in {}", set.dir().display());
    let queues = vec!["s0".to_owned(), "s1".to_owned()];
    let (app, daemon, runs) = app_with_counter(set.url(), &queues).await;
    let old = set.master.port;
    let loader = {
        let (app, queues) = (&app, &queues);
        async move { load(app, queues, 100, Duration::from_secs(3)).await }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed_at = Instant::now();
        set.master.kill();
        killed_at
    };
    let (ids, killed_at) = tokio::join!(loader, killer);
    tokio::task::block_in_place(|| {
        wait_until(
            "the sentinels promoted no one",
            Duration::from_secs(30),
            || set.current_master().is_some_and(|p| p != old),
        )
    });
    println!(
        "sentinels switched masters {:?} after the kill",
        killed_at.elapsed()
    );
    all_succeeded_once(&app, &ids, &runs).await;
    println!("every job done {:?} after the kill", killed_at.elapsed());
    daemon.stop().await;
}
