//! The registry of attempts running in this daemon, so a cancel message (or a
//! heartbeat that reports a cancel mark) reaches the attempt's token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Running attempts of this daemon by job id: a cancel message for one of them
/// fires its token. A std mutex: it is held only to insert, remove or look up,
/// never across an await.
#[derive(Default)]
pub(crate) struct Running {
    /// Id → (registration number, token). The number lets an ending attempt
    /// unregister only itself, not a newer attempt of the same job.
    jobs: Mutex<HashMap<Uuid, (u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Running {
    /// Registers an attempt; the guard unregisters it when dropped.
    pub(super) fn register(self: &Arc<Self>, id: Uuid) -> (CancellationToken, CancelRegistration) {
        let token = CancellationToken::new();
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id, (number, token.clone()));
        }
        (
            token,
            CancelRegistration {
                running: self.clone(),
                id,
                number,
            },
        )
    }

    /// Fires the cancel token of a running attempt; false if it does not run here.
    pub(super) fn cancel(&self, id: Uuid) -> bool {
        let token = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.get(&id).map(|(_, t)| t.clone()));
        match token {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

pub(super) struct CancelRegistration {
    running: Arc<Running>,
    id: Uuid,
    number: u64,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.running.jobs.lock()
            && jobs.get(&self.id).is_some_and(|(n, _)| *n == self.number)
        {
            jobs.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_a_registered_attempt_until_it_ends() {
        let running = Arc::new(Running::default());
        let id = Uuid::now_v7();
        let (token, guard) = running.register(id);
        assert!(running.cancel(id));
        assert!(token.is_cancelled());
        drop(guard);
        assert!(!running.cancel(id));
    }

    #[test]
    fn an_older_attempt_ending_leaves_a_newer_one_registered() {
        let running = Arc::new(Running::default());
        let id = Uuid::now_v7();
        let (_, old) = running.register(id);
        let (newer, _guard) = running.register(id);
        drop(old);
        assert!(running.cancel(id));
        assert!(newer.is_cancelled());
    }
}
