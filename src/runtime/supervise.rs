//! The daemon's life after start-up: spawns every loop in order, then performs
//! the two-stage drain once the shutdown token fires (fetching stops, running
//! jobs get `drain_timeout`, the rest are handed back, then the ackers, the
//! status writers, the publisher and the admin listener finish in that order).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Shared, events, ingest, outbox, presence, producer, recovery, retention, wakeup, watchdog,
};
use crate::ledger::StatusWriter;

/// How long the status writer keeps retrying after the workers are done, when
/// Postgres is unreachable at shutdown.
const WRITER_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin listener's parts, from start-up to the supervisor.
pub(super) struct AdminParts {
    pub(super) listener: Option<tokio::net::TcpListener>,
    /// Ends the listener, its SSE streams and the relay, after the drain.
    pub(super) stop: CancellationToken,
    /// The task feeding `/events` from the Redis channel, awaited at the end.
    pub(super) relay: Option<tokio::task::JoinHandle<()>>,
    /// TLS on the listener, when `[admin]` configures it.
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Runs the loops, then performs the ordered drain once `shutdown` fires.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    writers: Vec<StatusWriter>,
    acker_tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: CancellationToken,
    admin: AdminParts,
    admin_state: Option<crate::http::HttpState>,
) {
    // The loops the daemon cannot work without; the watchdog stops pinging
    // systemd, and `/readyz` fails, if one of them ends early. (The subscriber
    // may end on purpose: the daemon then polls.)
    let alive = watchdog::Liveness::new(shutdown.clone());
    // The admin listener serves through the drain (readiness says 503 then).
    let admin_task = match (admin.listener, admin_state) {
        (Some(listener), Some(state)) => Some(tokio::spawn(crate::http::serve(
            listener,
            state.with_broken(alive.ended_early()),
            admin.stop.clone(),
            admin.tls,
        ))),
        _ => None,
    };

    // The writers hand committed batches' events to one publisher task, which ends
    // after the last writer.
    let (event_tx, publisher_task) = if shared.publisher.enabled() {
        let (tx, rx) = tokio::sync::mpsc::channel(events::BUFFER);
        let task = tokio::spawn(events::publish_loop(shared.publisher.clone(), rx));
        (Some(tx), Some(task))
    } else {
        (None, None)
    };
    let writer_give_up = CancellationToken::new();
    let writer_tasks: Vec<_> = writers
        .into_iter()
        .map(|w| match &event_tx {
            Some(tx) => w.with_events(tx.clone()),
            None => w,
        })
        .map(|w| tokio::spawn(w.run(writer_give_up.clone())))
        .collect();
    drop(event_tx);

    // Workers get their own tracker so the drain can wait for them alone.
    let workers = TaskTracker::new();
    // Cancelled when the drain deadline passes: unfinished jobs are handed back.
    let hard_stop = CancellationToken::new();
    let loops = TaskTracker::new();

    // Ends the status and watchdog task once the drain is over.
    let watchdog_stop = CancellationToken::new();
    let watchdog = shared.notifier.is_enabled().then(|| {
        tokio::spawn(watchdog::run(
            shared.clone(),
            shared.notifier.clone(),
            alive.clone(),
            shutdown.clone(),
            watchdog_stop.clone(),
        ))
    });

    // Before any loop dispatches or fetches: see `recovery::initial_epoch`.
    let epoch = recovery::initial_epoch(&shared).await;
    loops.spawn(wakeup::subscriber(shared.clone(), shutdown.clone()));
    loops.spawn(alive.watch("outbox", outbox::outbox(shared.clone(), shutdown.clone())));
    loops.spawn(alive.watch(
        "reaper",
        recovery::reaper(shared.clone(), epoch, shutdown.clone()),
    ));
    loops.spawn(alive.watch(
        "orphan_sweep",
        recovery::orphan_sweep(shared.clone(), shutdown.clone()),
    ));
    loops.spawn(alive.watch(
        "scheduler",
        crate::scheduler::run(
            shared.ledger.clone(),
            shared.live.subscribe(),
            shutdown.clone(),
        ),
    ));
    loops.spawn(alive.watch(
        "retention",
        retention::run(shared.clone(), shutdown.clone()),
    ));
    loops.spawn(presence::heartbeat(shared.clone(), shutdown.clone()));
    let arq = shared.config.section::<crate::arq::ArqConfig>();
    if arq.enabled() {
        match crate::arq::check(&shared.config) {
            Ok(()) => {
                let bridge = crate::arq::Bridge::new(
                    arq,
                    shared.broker.clone(),
                    shared.ledger.clone(),
                    shared.config.events.clone(),
                );
                loops.spawn(alive.watch("arq", bridge.run(shutdown.clone())));
            }
            Err(error) => tracing::error!(%error, "arq bridge is off"),
        }
    }
    for queue in shared.config.queues.keys() {
        // One ingester per queue: a second one was measured to starve the status
        // writers of Postgres time (ledger lag went from ~70ms to seconds).
        loops.spawn(alive.watch(
            "ingest",
            ingest::ingest(shared.clone(), queue.clone(), shutdown.clone()),
        ));
        loops.spawn(alive.watch(
            "fetch",
            producer::fetch(
                shared.clone(),
                queue.clone(),
                shutdown.clone(),
                hard_stop.clone(),
                workers.clone(),
            ),
        ));
    }
    loops.close();

    shutdown.cancelled().await;
    shared.notifier.stopping();
    let drain = shared.config.runtime.drain_timeout;
    tracing::info!(drain_timeout = ?drain, "Draining: fetching stopped, waiting for running jobs");
    loops.wait().await;
    workers.close();
    if tokio::time::timeout(drain, workers.wait()).await.is_err() {
        tracing::warn!("Drain deadline passed; handing unfinished jobs back");
        hard_stop.cancel();
        workers.wait().await;
    }
    // Nothing runs here any more: leave the registry of live daemons.
    if let Err(error) = shared.broker.remove_workers(&[shared.daemon_id]).await {
        tracing::warn!(error = %crate::error_chain(&error), "Removing the worker registry entry failed");
    }

    // Every worker and loop has ended; dropping the last handles lets the ackers
    // and then the writer finish what is left and stop.
    watchdog_stop.cancel();
    if let Some(task) = watchdog {
        let _ = task.await;
    }
    drop(shared);
    for task in acker_tasks {
        let _ = task.await;
    }
    let flush = tokio::spawn(async move {
        tokio::time::sleep(WRITER_FLUSH_TIMEOUT).await;
        writer_give_up.cancel();
    });
    for task in writer_tasks {
        if let Err(error) = task.await {
            tracing::error!(%error, "Status writer failed");
        }
    }
    flush.abort();
    if let Some(task) = publisher_task {
        let _ = task.await;
    }
    admin.stop.cancel();
    for task in admin_task.into_iter().chain(admin.relay) {
        let _ = task.await;
    }
    tracing::info!("Daemon stopped");
}
