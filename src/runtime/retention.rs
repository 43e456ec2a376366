//! The retention loop: deletes final jobs whose `finished_at` is older than their
//! status's TTL (`[retention]`), in batches with a pause between them so a large
//! backlog never holds many locks or crowds out the status writers. Several
//! daemons may run it at once: `SKIP LOCKED` gives each its own rows.
//!
//! The TTLs, interval and batch are read through `Shared::live` on every round, so
//! a reload applies at the next one.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::error_chain;
use crate::ledger::Status;

/// Between two delete batches of one round.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

pub(super) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let interval = shared.live().retention.interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if !prune_round(&shared, &shutdown).await {
            return;
        }
    }
}

/// One round over every status with a TTL; false if shutdown came meanwhile.
async fn prune_round(shared: &Shared, shutdown: &CancellationToken) -> bool {
    let retention = shared.live().retention.clone();
    let batch = retention.batch as i64;
    for (status, ttl) in [
        (Status::Succeeded, retention.succeeded),
        (Status::Dead, retention.dead),
        (Status::Cancelled, retention.cancelled),
    ] {
        let Some(ttl) = ttl else { continue };
        let cutoff = crate::ledger::safe::before(Utc::now(), ttl);
        let mut deleted = 0;
        loop {
            match shared
                .ledger
                .delete_final_batch(status, cutoff, batch)
                .await
            {
                Ok(n) => {
                    deleted += n;
                    if (n as i64) < batch {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%status, error = %error_chain(&error), "Retention prune failed; trying again next round");
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(BATCH_PAUSE) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
        if deleted > 0 {
            tracing::info!(%status, deleted, "Deleted jobs past their retention");
        }
    }
    true
}
