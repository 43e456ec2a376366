//! Batched completion: workers of one queue hand their finished leases to one task
//! that settles whatever has accumulated with a single `COMPLETE` script call, the
//! way the status writer group-commits to Postgres. Each worker still learns
//! whether its own lease was accepted.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::retry::retry_redis;
use crate::broker::{Broker, Leased};
use crate::metrics::Metrics;

/// Most leases settled in one script call.
const BATCH_MAX: usize = 512;

/// One finished lease waiting for its answer.
type Request = (Leased, oneshot::Sender<bool>);

/// The workers' side: cloned into each worker of the queue.
#[derive(Clone, Debug)]
pub(super) struct Acker {
    tx: mpsc::Sender<Request>,
}

impl Acker {
    /// Starts the batching task for `queue`; it ends when every [`Acker`] is dropped.
    pub(super) fn spawn(
        broker: Broker,
        metrics: Arc<Metrics>,
        queue: String,
    ) -> (Acker, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BATCH_MAX * 4);
        let task = tokio::spawn(run(broker, metrics, queue, rx));
        (Acker { tx }, task)
    }

    /// Ends the job in Redis; false when the lease is no longer this attempt's (or
    /// Redis stayed unreachable: the lease then expires and the reaper re-runs it).
    pub(super) async fn complete(&self, job: Leased) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((job, reply)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

async fn run(
    broker: Broker,
    metrics: Arc<Metrics>,
    queue: String,
    mut rx: mpsc::Receiver<Request>,
) {
    let what = format!("Completing jobs of queue {queue}");
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let jobs: Vec<&Leased> = batch.iter().map(|(job, _)| job).collect();
        let answers = retry_redis(&metrics, &queue, &what, || {
            broker.complete_many(&queue, &jobs)
        })
        .await
        .unwrap_or_else(|| vec![false; batch.len()]);
        for ((_, reply), accepted) in batch.drain(..).zip(answers) {
            let _ = reply.send(accepted);
        }
    }
}
