//! Failure isolation for batched writes: one poison item must not hold back the
//! items sent with it.
//!
//! A batch statement or script fails as a whole. [`isolate`] tells the two kinds of
//! failure apart through the caller's `is_transient` (by error class: SQLSTATE,
//! the client's error kind, the server's error code; never by message text):
//! - a transient failure (connection lost, timeout, serialization conflict) leaves
//!   what is not done yet as `pending`, for the caller to retry after a pause;
//! - a permanent failure splits the range in halves until the single items that
//!   fail on their own are found. Those are the `poison`; every other item is
//!   written within the same call.
//!
//! It never retries a permanent failure and never calls with an empty range.
//! [`Backoff`] is the pause before the caller retries: the status writer and
//! every runtime loop wait with it after a failure that may pass.

use std::future::Future;
use std::ops::Range;
use std::time::Duration;

/// What became of a batch after [`isolate`].
#[derive(Debug)]
pub struct Isolated<R, E> {
    /// The result of every call that succeeded, with the range it covered.
    pub done: Vec<(Range<usize>, R)>,
    /// Items that fail on their own with a permanent error.
    pub poison: Vec<(usize, E)>,
    /// Ranges not written because a transient error stopped the work; retry them.
    pub pending: Vec<Range<usize>>,
    /// The transient error that stopped the work, if one did.
    pub transient: Option<E>,
}

/// Runs `call` over each range of `todo`, splitting ranges that fail permanently
/// until the poison items are alone. Ranges are tried in order, left half first,
/// so items keep their relative order.
pub async fn isolate<R, E, F, Fut>(
    todo: impl IntoIterator<Item = Range<usize>>,
    is_transient: impl Fn(&E) -> bool,
    mut call: F,
) -> Isolated<R, E>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let mut out = Isolated {
        done: Vec::new(),
        poison: Vec::new(),
        pending: Vec::new(),
        transient: None,
    };
    // A stack, so the left half is tried first.
    let mut stack: Vec<Range<usize>> = todo.into_iter().filter(|r| !r.is_empty()).collect();
    stack.reverse();
    while let Some(range) = stack.pop() {
        match call(range.clone()).await {
            Ok(r) => out.done.push((range, r)),
            Err(e) if is_transient(&e) => {
                out.pending.push(range);
                out.pending.extend(stack.drain(..).rev());
                out.transient = Some(e);
                break;
            }
            Err(e) if range.len() == 1 => out.poison.push((range.start, e)),
            Err(_) => {
                let mid = range.start + range.len() / 2;
                stack.push(mid..range.end);
                stack.push(range.start..mid);
            }
        }
    }
    out
}

/// A delay that doubles after each failure, up to a cap, and starts over after
/// a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// After an error that may pass: 100 ms, doubling to 2 s.
    pub(crate) const fn errors() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// For a service that is away (Postgres for the ingester, Redis for one
    /// queue's dispatch): 100 ms, doubling to 5 s.
    pub(crate) const fn outage() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub(crate) fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(self.max);
        now
    }

    /// Starts over from the first delay.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Debug, PartialEq)]
    enum Fail {
        Poison,
        Down,
    }

    fn run(
        n: usize,
        bad: &[usize],
        down_after: Option<usize>,
    ) -> (Isolated<Vec<usize>, Fail>, usize) {
        let calls = RefCell::new(0);
        let out = futures::executor::block_on(isolate(
            std::iter::once(0..n),
            |e: &Fail| *e == Fail::Down,
            |r: Range<usize>| {
                *calls.borrow_mut() += 1;
                let fail = if down_after.is_some_and(|d| *calls.borrow() > d) {
                    Some(Fail::Down)
                } else if r.clone().any(|i| bad.contains(&i)) {
                    Some(Fail::Poison)
                } else {
                    None
                };
                async move {
                    match fail {
                        Some(f) => Err(f),
                        None => Ok(r.collect::<Vec<_>>()),
                    }
                }
            },
        ));
        (out, calls.into_inner())
    }

    #[test]
    fn a_clean_batch_is_one_call() {
        let (out, calls) = run(100, &[], None);
        assert_eq!(calls, 1);
        assert_eq!(out.done.len(), 1);
        assert!(out.poison.is_empty() && out.pending.is_empty());
    }

    #[test]
    fn poison_items_are_found_and_every_other_item_is_written_in_order() {
        let (out, _) = run(100, &[3, 64, 99], None);
        let poison: Vec<usize> = out.poison.iter().map(|(i, _)| *i).collect();
        assert_eq!(poison, [3, 64, 99]);
        let written: Vec<usize> = out.done.into_iter().flat_map(|(_, r)| r).collect();
        let expected: Vec<usize> = (0..100).filter(|i| ![3, 64, 99].contains(i)).collect();
        assert_eq!(written, expected);
        assert!(out.transient.is_none());
    }

    #[test]
    fn a_transient_error_leaves_the_rest_pending_without_splitting() {
        let (out, calls) = run(100, &[50], Some(1));
        assert_eq!(calls, 2, "the first split call fails transiently and stops");
        assert_eq!(out.transient, Some(Fail::Down));
        let pending: usize = out.pending.iter().map(|r| r.len()).sum();
        assert_eq!(pending, 100);
        assert!(out.poison.is_empty());
    }

    #[test]
    fn an_empty_batch_makes_no_call() {
        let (out, calls) = run(0, &[], None);
        assert_eq!(calls, 0);
        assert!(out.done.is_empty());
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn the_delay_doubles_to_its_cap_and_starts_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let ms: Vec<u128> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(100));
    }
}
