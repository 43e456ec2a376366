//! One writer shard's loop: when it writes what it received, and when it
//! answers the admissions that came with it.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::{StatusUpdate, StatusWriter, admit};

/// How long a shard holding fewer than [`LINGER_BELOW`] changes waits for more
/// before it commits them. At moderate rates changes arrive one or two at a
/// time, and each commit costs Postgres a transaction and a flush; lingering
/// makes them share one. Admissions do not wait for it, and the ledger's lag
/// grows by at most this.
pub(super) const LINGER: Duration = Duration::from_millis(5);

/// This many waiting changes are written at once, without lingering.
const LINGER_BELOW: usize = 32;

impl StatusWriter {
    /// Writes until every handle is dropped and the channel is empty. A batch that
    /// fails for a reason that may pass (Postgres down, a conflict) is retried with
    /// backoff, so an outage delays statuses but loses none; `give_up` bounds that
    /// wait once the daemon is stopping. A batch that fails because of what one
    /// job carries is split until that job is found: it is recorded `dead` with
    /// the reason, and the rest are written at once (see [`crate::batch`]).
    ///
    /// A few changes wait up to [`LINGER`] for more before they are written;
    /// an admission that came meanwhile is answered at once, after writing
    /// first the changes of its own job if any wait (see [`admit`]), so it
    /// always sees every earlier write of its job.
    pub async fn run(mut self, give_up: tokio_util::sync::CancellationToken) {
        let mut buf = Vec::with_capacity(self.batch_max);
        let mut held: Vec<admit::Held> = Vec::new();
        // Changes received and not written yet, and when the first of them came.
        let mut pending: Vec<StatusUpdate> = Vec::new();
        let mut since: Option<Instant> = None;
        loop {
            let linger = since.map(|t| t + LINGER);
            let hold = held.iter().map(admit::Held::due).min();
            let room = self.batch_max.saturating_sub(pending.len()).max(1);
            let received = match linger.into_iter().chain(hold).min() {
                None => self.rx.recv_many(&mut buf, room).await,
                // `recv_many` is cancel safe: nothing is lost when the timer wins.
                Some(at) => tokio::select! {
                    n = self.rx.recv_many(&mut buf, room) => n,
                    _ = tokio::time::sleep_until(at) => usize::MAX,
                },
            };
            let closing = received == 0;
            let now = Instant::now();
            let mut admissions = Vec::new();
            for e in buf.drain(..) {
                match e.verdict {
                    Some((claim, tx)) => admissions.push((e.update, claim, tx)),
                    None => pending.push(e.update),
                }
            }
            if since.is_none() && !pending.is_empty() {
                since = Some(now);
            }
            // An admission must see every earlier change of its own job, so one
            // waiting here is written first; other jobs' changes may linger.
            let asked: HashSet<Uuid> = admissions.iter().map(|(u, _, _)| u.id).collect();
            // A held write that is due takes the waiting changes with it: the
            // job's end may be among them, and one commit carries both.
            // `linger` and `hold` were read before the wait and still hold: a
            // `since` set just now is not due yet, and `held` did not change.
            let write = closing
                || pending.len() >= LINGER_BELOW
                || linger.is_some_and(|at| now >= at)
                || pending.iter().any(|u| asked.contains(&u.id))
                || hold.is_some_and(|at| now >= at);
            if write {
                let news: HashSet<Uuid> = pending.iter().map(|u| u.id).collect();
                let (due, waiting) = admit::release_held(held, &news, now, closing);
                held = waiting;
                // Held writes arrived before the pending changes: they go first.
                let mut round = due;
                round.append(&mut pending);
                since = None;
                self.write_round(round, &give_up).await;
            }
            if !admissions.is_empty() {
                self.answer(admissions, &mut held, &give_up).await;
            }
            if closing {
                break;
            }
        }
    }
}
