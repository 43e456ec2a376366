//! What the daemon tells systemd while it runs: a `STATUS=` summary every few
//! seconds, and `WATCHDOG=1` at half the watchdog timeout, sent only while Redis
//! and Postgres answer in time and the essential loops are alive. When a check
//! fails the pings stop, so systemd restarts a daemon that is stuck rather than
//! one that is merely busy.
//!
//! Design note: this task holds the daemon's shared state only until the drain
//! is over (`stop`), so it never delays the status writer's final flush.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::notify::Notifier;

/// How often `STATUS=` is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// How many of the loops the daemon cannot work without are still running. A
/// loop that returned or panicked before the drain means the daemon is broken:
/// the watchdog stops pinging and `/readyz` answers 503 from then on.
#[derive(Clone)]
pub(super) struct Liveness {
    alive: Arc<AtomicUsize>,
    expected: Arc<AtomicUsize>,
    /// The daemon's shutdown token: a loop ending after it is not a failure.
    shutdown: CancellationToken,
    /// Cancelled when a loop ends before the shutdown.
    ended_early: CancellationToken,
}

impl Liveness {
    pub(super) fn new(shutdown: CancellationToken) -> Liveness {
        Liveness {
            alive: Arc::default(),
            expected: Arc::default(),
            shutdown,
            ended_early: CancellationToken::new(),
        }
    }

    /// Cancelled once a watched loop ended before the shutdown.
    pub(super) fn ended_early(&self) -> CancellationToken {
        self.ended_early.clone()
    }

    /// Wraps a loop so it counts as alive until it ends, however it ends.
    pub(super) fn watch<F: Future<Output = ()>>(
        &self,
        name: &'static str,
        f: F,
    ) -> impl Future<Output = ()> + use<F> {
        struct Alive {
            alive: Arc<AtomicUsize>,
            name: &'static str,
            shutdown: CancellationToken,
            ended_early: CancellationToken,
        }
        impl Drop for Alive {
            fn drop(&mut self) {
                self.alive.fetch_sub(1, Ordering::SeqCst);
                if !self.shutdown.is_cancelled() {
                    tracing::error!(
                        task = self.name,
                        "A daemon loop ended before shutdown; the daemon is no longer ready"
                    );
                    self.ended_early.cancel();
                }
            }
        }
        // Counted now, not when the task first runs, so no check sees it missing.
        self.alive.fetch_add(1, Ordering::SeqCst);
        self.expected.fetch_add(1, Ordering::SeqCst);
        let alive = Alive {
            alive: self.alive.clone(),
            name,
            shutdown: self.shutdown.clone(),
            ended_early: self.ended_early.clone(),
        };
        async move {
            let _alive = alive;
            f.await
        }
    }

    fn missing(&self) -> usize {
        self.expected
            .load(Ordering::SeqCst)
            .saturating_sub(self.alive.load(Ordering::SeqCst))
    }
}

/// Sends status lines and watchdog pings until `stop` fires.
pub(super) async fn run(
    shared: Arc<Shared>,
    notifier: Notifier,
    loops: Liveness,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let ping_every = notifier.watchdog_timeout().map(|t| t / 2);
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let mut ping_tick = tokio::time::interval(ping_every.unwrap_or(STATUS_INTERVAL));
    let mut problem: Option<String> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = status_tick.tick() => {
                notifier.status(&summary(&shared, draining.is_cancelled(), problem.as_deref()));
            }
            _ = ping_tick.tick(), if ping_every.is_some() => {
                let timeout = ping_every.unwrap_or(STATUS_INTERVAL);
                let now = check(&shared, &loops, draining.is_cancelled(), timeout).await;
                match &now {
                    None => notifier.watchdog(),
                    Some(reason) if problem.as_ref() != Some(reason) => tracing::error!(
                        reason, "Unhealthy; no longer pinging the systemd watchdog, which will restart the daemon"),
                    Some(_) => {}
                }
                if now.is_none() && problem.is_some() {
                    tracing::info!("Healthy again; pinging the systemd watchdog");
                }
                if now != problem {
                    problem = now;
                    notifier.status(&summary(&shared, draining.is_cancelled(), problem.as_deref()));
                }
            }
        }
    }
}

/// None when healthy, else what is wrong.
async fn check(
    shared: &Shared,
    loops: &Liveness,
    draining: bool,
    timeout: Duration,
) -> Option<String> {
    // Loops end on purpose during the drain; only the services matter then.
    let missing = loops.missing();
    if !draining && missing > 0 {
        return Some(format!("{missing} daemon loop(s) ended unexpectedly"));
    }
    let (redis, postgres) = tokio::join!(
        tokio::time::timeout(timeout, shared.broker.ping()),
        tokio::time::timeout(timeout, shared.ledger.probe()),
    );
    let within = humantime::format_duration(timeout);
    match (redis, postgres) {
        (Ok(Ok(())), Ok(Ok(()))) => None,
        (Err(_), _) => Some(format!("Redis did not answer within {within}")),
        (Ok(Err(e)), _) => Some(format!("Redis ping failed: {}", crate::error_chain(&e))),
        (_, Err(_)) => Some(format!("Postgres did not answer within {within}")),
        (_, Ok(Err(e))) => Some(format!("Postgres check failed: {}", crate::error_chain(&e))),
    }
}

/// e.g. `running 3 jobs; queues default, mail; 1234 done`.
fn summary(shared: &Shared, draining: bool, problem: Option<&str>) -> String {
    let running = shared.stats.running.load(Ordering::Relaxed);
    let done = shared.stats.done.load(Ordering::Relaxed);
    let queues: Vec<&str> = shared.config.queues.keys().map(String::as_str).collect();
    let mut line = String::new();
    if let Some(problem) = problem {
        line.push_str(&format!("unhealthy ({problem}); "));
    }
    if draining {
        line.push_str("draining; ");
    }
    let jobs = if running == 1 { "job" } else { "jobs" };
    line.push_str(&format!(
        "running {running} {jobs}; queues {}; {done} done",
        queues.join(", ")
    ));
    line
}
