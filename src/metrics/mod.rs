//! The process's metrics: counters and histograms that the runtime, the ledger and
//! the broker's callers record into, rendered in the Prometheus text format (0.0.4)
//! by `http` at `/metrics`.
//!
//! Storage and rendering are `metrics-exporter-prometheus`'s. Each [`Metrics`]
//! owns its own recorder and is passed explicitly; nothing is installed as the
//! process-global recorder, so several daemons in one process (as in the tests)
//! never see each other's counts. Every metric is declared once in [`DEFS`]
//! (`defs.rs`) with its type and help text, and recording goes through one typed method per event,
//! so a name or label is never spelled at a call site.
//!
//! Design note (timed, not asserted, by `timing::print_the_cost_of_recording`):
//! recording a job's outcome, duration or wait takes no lock and
//! builds no labels: the series of every registered kind and served queue are
//! slots made at start-up and filled on first use (a series appears once it has a
//! value, as before). A counter is an atomic add; a histogram sample goes into the
//! exporter's lock-free buffer until [`Metrics::upkeep`] or a scrape folds it into
//! buckets. Only a kind the daemon does not know pays for a registry lookup. Nothing here does I/O; gauges that need Redis or Postgres are read at
//! scrape time by `http` and passed to [`Metrics::render`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

mod defs;

pub use defs::*;

/// How often recorded histogram samples are folded into their buckets when no
/// scrape does it; until then each sample costs a few bytes.
const UPKEEP: Duration = Duration::from_secs(5);

/// The registry. One per daemon, shared through an `Arc`.
pub struct Metrics {
    /// Holds every recorded series; this daemon's own, never the global recorder.
    recorder: PrometheusRecorder,
    /// Per registered kind: its series, made on first use.
    kinds: HashMap<Box<str>, KindSeries>,
    /// Per served queue: its series, made on first use.
    queues: HashMap<Box<str>, QueueSeries>,
    status_batch: OnceLock<Histogram>,
    status_write: OnceLock<Histogram>,
    pg_acquire: OnceLock<Histogram>,
    /// Published and dropped, per [`Channel`] in [`Channel::ALL`] order.
    events: [(OnceLock<Counter>, OnceLock<Counter>); 3],
    /// Poison items, per [`Path`] in [`Path::ALL`] order.
    poison: [OnceLock<Counter>; 3],
    /// Ends the upkeep task as the registry is dropped, not at its next tick,
    /// so a stopped daemon leaves no task behind.
    _upkeep: Option<tokio_util::sync::DropGuard>,
}

#[derive(Default)]
struct KindSeries {
    succeeded: OnceLock<Counter>,
    finished_dead: OnceLock<Counter>,
    dead: OnceLock<Counter>,
    retries: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
}

#[derive(Default)]
struct QueueSeries {
    wait: OnceLock<Histogram>,
    lease_expired: OnceLock<Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// A registry with no kinds or queues known in advance (each is looked up).
    fn default() -> Self {
        Metrics::with_series(std::iter::empty(), std::iter::empty())
    }
}

/// What every series is registered with; the exporter ignores it.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Metrics {
    /// A registry with slots for `kinds` and `queues`, folding its histograms
    /// every [`UPKEEP`] from a task that ends when the registry is dropped.
    pub fn new<'a>(
        kinds: impl IntoIterator<Item = &'a str>,
        queues: impl IntoIterator<Item = &'a str>,
    ) -> Arc<Metrics> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Arc::new(Metrics::with_series(kinds, queues));
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let metrics = Arc::new(Metrics {
            _upkeep: Some(stop.clone().drop_guard()),
            ..Metrics::with_series(kinds, queues)
        });
        runtime.spawn(upkeep(Arc::downgrade(&metrics), stop));
        metrics
    }

    fn with_series<'a>(
        kinds: impl IntoIterator<Item = &'a str>,
        queues: impl IntoIterator<Item = &'a str>,
    ) -> Metrics {
        Metrics {
            recorder: recorder(),
            kinds: kinds
                .into_iter()
                .map(|k| (k.into(), KindSeries::default()))
                .collect(),
            queues: queues
                .into_iter()
                .map(|q| (q.into(), QueueSeries::default()))
                .collect(),
            status_batch: OnceLock::new(),
            status_write: OnceLock::new(),
            pg_acquire: OnceLock::new(),
            events: Default::default(),
            poison: Default::default(),
            _upkeep: None,
        }
    }

    /// A job of `kind` ended `succeeded`.
    pub fn job_succeeded(&self, kind: &str) {
        let slot = self.kinds.get(kind).map(|s| &s.succeeded);
        self.counter(slot, JOBS_FINISHED, || finished_labels(kind, "succeeded"))
            .increment(1);
    }

    /// A job of `kind` ended `dead`: counted as finished and as dead.
    pub fn job_dead(&self, kind: &str) {
        let series = self.kinds.get(kind);
        self.counter(series.map(|s| &s.finished_dead), JOBS_FINISHED, || {
            finished_labels(kind, "dead")
        })
        .increment(1);
        self.counter(series.map(|s| &s.dead), DEAD, || kind_labels(kind))
            .increment(1);
    }

    /// A failed attempt of `kind` was scheduled to run again.
    pub fn job_retried(&self, kind: &str) {
        let slot = self.kinds.get(kind).map(|s| &s.retries);
        self.counter(slot, RETRIES, || kind_labels(kind))
            .increment(1);
    }

    /// One attempt's handler of `kind` ran this long.
    pub fn job_duration(&self, kind: &str, d: Duration) {
        let slot = self.kinds.get(kind).map(|s| &s.duration);
        self.histogram(slot, JOB_DURATION, || kind_labels(kind))
            .record(d.as_secs_f64());
    }

    /// A first attempt in `queue` was leased this many seconds after it became due.
    pub fn queue_wait(&self, queue: &str, seconds: f64) {
        let slot = self.queues.get(queue).map(|s| &s.wait);
        self.histogram(slot, QUEUE_WAIT, || queue_labels(queue))
            .record(seconds);
    }

    /// The reaper found `n` expired leases in `queue`.
    pub fn leases_expired(&self, queue: &str, n: u64) {
        let slot = self.queues.get(queue).map(|s| &s.lease_expired);
        self.counter(slot, LEASE_EXPIRED, || queue_labels(queue))
            .increment(n);
    }

    /// One status-writer statement wrote `rows` rows.
    pub fn status_batch(&self, rows: usize) {
        self.histogram(Some(&self.status_batch), STATUS_BATCH, Vec::new)
            .record(rows as f64);
    }

    /// One status-writer batch took this long in Postgres.
    pub fn status_write(&self, d: Duration) {
        self.histogram(Some(&self.status_write), STATUS_WRITE, Vec::new)
            .record(d.as_secs_f64());
    }

    /// Waiting for a pooled Postgres connection took this long.
    pub fn postgres_acquire(&self, d: Duration) {
        self.histogram(Some(&self.pg_acquire), PG_ACQUIRE, Vec::new)
            .record(d.as_secs_f64());
    }

    /// `n` job events went out on `channel`.
    pub fn events_published(&self, channel: Channel, n: u64) {
        self.events_counter(channel, false, EVENTS_PUBLISHED, n);
    }

    /// `n` job events were not published on `channel`.
    pub fn events_dropped(&self, channel: Channel, n: u64) {
        self.events_counter(channel, true, EVENTS_DROPPED, n);
    }

    /// A batch on `path` found an item it could not write for a reason of its own.
    pub fn batch_poison(&self, path: Path) {
        let i = Path::ALL.iter().position(|p| *p == path).unwrap_or(0);
        self.counter(Some(&self.poison[i]), POISON, || {
            vec![Label::from_static_parts("path", path.label())]
        })
        .increment(1);
    }

    /// A Redis call of `queue` on `path` failed. Off the hot path, so the series
    /// is looked up each time rather than cached.
    pub fn redis_error(&self, queue: &str, path: RedisPath) {
        self.counter(None, REDIS_ERRORS, || {
            vec![
                Label::new("queue", queue.to_owned()),
                Label::from_static_parts("path", path.label()),
            ]
        })
        .increment(1);
    }

    /// An item read from `source` was kept in `jobrunner.quarantine`. Rare, so the
    /// series is looked up each time rather than cached.
    pub fn quarantined(&self, source: &'static str) {
        self.counter(None, QUARANTINED, || {
            vec![Label::from_static_parts("source", source)]
        })
        .increment(1);
    }

    /// Every metric in the Prometheus text format (version 0.0.4). `samples` are
    /// the gauges (and externally kept counters) read at scrape time; they go
    /// through a registry of their own, so a value that could not be read this
    /// time is absent rather than stale.
    pub fn render(&self, samples: &[Sample]) -> String {
        let scrape = recorder();
        for (name, labels, value) in samples {
            let labels: Vec<Label> = labels
                .iter()
                .map(|(k, v)| Label::new(*k, v.clone()))
                .collect();
            let key = Key::from_parts(*name, labels);
            match DEFS.iter().find(|d| d.name == *name).map(|d| d.kind) {
                Some(Type::Counter) => scrape
                    .register_counter(&key, &METADATA)
                    .absolute(*value as u64),
                _ => scrape.register_gauge(&key, &METADATA).set(*value),
            }
        }
        let mut out = self.recorder.handle().render();
        out.push_str(&scrape.handle().render());
        out
    }

    /// Folds recorded histogram samples into their buckets.
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    fn events_counter(&self, channel: Channel, dropped: bool, name: &'static str, by: u64) {
        if by == 0 {
            return;
        }
        let i = Channel::ALL.iter().position(|c| *c == channel).unwrap_or(0);
        let slot = if dropped {
            &self.events[i].1
        } else {
            &self.events[i].0
        };
        self.counter(Some(slot), name, || {
            vec![Label::from_static_parts("channel", channel.label())]
        })
        .increment(by);
    }

    /// The counter in `slot`, registered on first use; without a slot (a kind
    /// or queue not known at start-up), looked up in the recorder each time.
    fn counter<'s>(
        &self,
        slot: Option<&'s OnceLock<Counter>>,
        name: &'static str,
        labels: impl FnOnce() -> Vec<Label>,
    ) -> Handle<'s, Counter> {
        let register = || {
            self.recorder
                .register_counter(&Key::from_parts(name, labels()), &METADATA)
        };
        match slot {
            Some(slot) => Handle::Cached(slot.get_or_init(register)),
            None => Handle::Fresh(register()),
        }
    }

    fn histogram<'s>(
        &self,
        slot: Option<&'s OnceLock<Histogram>>,
        name: &'static str,
        labels: impl FnOnce() -> Vec<Label>,
    ) -> Handle<'s, Histogram> {
        let register = || {
            self.recorder
                .register_histogram(&Key::from_parts(name, labels()), &METADATA)
        };
        match slot {
            Some(slot) => Handle::Cached(slot.get_or_init(register)),
            None => Handle::Fresh(register()),
        }
    }
}

/// A series handle, borrowed from its slot or registered for this one use.
enum Handle<'s, T> {
    Cached(&'s T),
    Fresh(T),
}

impl<T> std::ops::Deref for Handle<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Handle::Cached(h) => h,
            Handle::Fresh(h) => h,
        }
    }
}

fn kind_labels(kind: &str) -> Vec<Label> {
    vec![Label::new("kind", kind.to_owned())]
}

fn finished_labels(kind: &str, state: &'static str) -> Vec<Label> {
    vec![
        Label::new("kind", kind.to_owned()),
        Label::from_static_parts("state", state),
    ]
}

fn queue_labels(queue: &str) -> Vec<Label> {
    vec![Label::new("queue", queue.to_owned())]
}

/// A recorder with every metric's help text and every histogram's buckets.
fn recorder() -> PrometheusRecorder {
    let mut builder = PrometheusBuilder::new();
    for def in DEFS
        .iter()
        .filter(|d| d.kind == Type::Histogram && !d.buckets.is_empty())
    {
        // The builder refuses only an empty bucket list, and the filter leaves
        // those out, so this cannot fail.
        builder = builder
            .set_buckets_for_metric(Matcher::Full(def.name.to_owned()), def.buckets)
            .expect("a non-empty bucket list is accepted");
    }
    let recorder = builder.build_recorder();
    for def in DEFS {
        let (name, help) = (
            KeyName::from_const_str(def.name),
            SharedString::const_str(def.help),
        );
        match def.kind {
            Type::Counter => recorder.describe_counter(name, None, help),
            Type::Gauge => recorder.describe_gauge(name, None, help),
            Type::Histogram => recorder.describe_histogram(name, None, help),
        }
    }
    recorder
}

/// Folds histogram samples every [`UPKEEP`] until the registry is dropped
/// (which cancels `stop`).
async fn upkeep(metrics: Weak<Metrics>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match metrics.upgrade() {
            Some(metrics) => metrics.upkeep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `text` (no comments), for exact matching.
    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn a_counter_renders_with_its_help_type_and_labels() {
        let m = Metrics::default();
        m.job_succeeded("noop");
        m.job_succeeded("noop");
        m.job_succeeded("noop");
        let text = m.render(&[]);
        assert!(
            text.contains("# HELP jobrunner_jobs_finished_total Jobs"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE jobrunner_jobs_finished_total counter"),
            "{text}"
        );
        assert!(
            has_line(
                &text,
                "jobrunner_jobs_finished_total{kind=\"noop\",state=\"succeeded\"} 3"
            ),
            "{text}"
        );
    }

    #[test]
    fn known_and_unknown_kinds_count_into_the_same_series_shape() {
        let m = Metrics::with_series(["known"], ["default"]);
        m.job_dead("known");
        m.job_dead("known");
        m.job_dead("stranger");
        m.job_retried("stranger");
        m.job_retried("stranger");
        m.batch_poison(Path::Status);
        m.leases_expired("default", 2);
        m.leases_expired("other", 1);
        let text = m.render(&[]);
        for line in [
            "jobrunner_jobs_finished_total{kind=\"known\",state=\"dead\"} 2",
            "jobrunner_jobs_dead_total{kind=\"known\"} 2",
            "jobrunner_jobs_finished_total{kind=\"stranger\",state=\"dead\"} 1",
            "jobrunner_jobs_dead_total{kind=\"stranger\"} 1",
            "jobrunner_job_retries_total{kind=\"stranger\"} 2",
            "jobrunner_lease_expired_total{queue=\"default\"} 2",
            "jobrunner_lease_expired_total{queue=\"other\"} 1",
            "jobrunner_batch_poison_total{path=\"status\"} 1",
        ] {
            assert!(has_line(&text, line), "{line} in {text}");
        }
        assert!(
            !text.contains("state=\"succeeded\""),
            "a series shows only once it has a value: {text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let m = Metrics::default();
        for v in [0.002, 0.2, 7.0, 1000.0] {
            m.job_duration("k", Duration::from_secs_f64(v));
        }
        let text = m.render(&[]);
        for line in [
            "jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"0.001\"} 0",
            "jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"0.005\"} 1",
            "jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"0.25\"} 2",
            "jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"300\"} 3",
            "jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"+Inf\"} 4",
            "jobrunner_job_duration_seconds_count{kind=\"k\"} 4",
        ] {
            assert!(has_line(&text, line), "{line} in {text}");
        }
    }

    #[test]
    fn the_batch_size_histogram_has_its_own_buckets() {
        let m = Metrics::default();
        m.status_batch(3);
        m.upkeep();
        m.status_batch(700);
        let text = m.render(&[]);
        for line in [
            "jobrunner_status_batch_size_bucket{le=\"5\"} 1",
            "jobrunner_status_batch_size_bucket{le=\"1000\"} 2",
            "jobrunner_status_batch_size_sum 703",
            "jobrunner_status_batch_size_count 2",
        ] {
            assert!(has_line(&text, line), "{line} in {text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.job_retried("a\"b\\c\nd");
        let text = m.render(&[]);
        assert!(
            has_line(
                &text,
                "jobrunner_job_retries_total{kind=\"a\\\"b\\\\c\\nd\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn scrape_time_samples_render_under_their_metric() {
        let m = Metrics::default();
        m.events_published(Channel::Redis, 4);
        m.events_dropped(Channel::Buffer, 0);
        let text = m.render(&[
            (UP, vec![], 1.0),
            (REDIS_REDELIVERIES, vec![], 7.0),
            (
                QUEUE_JOBS,
                vec![("queue", "q".into()), ("state", "ready".into())],
                2.0,
            ),
        ]);
        let at = text.find("# TYPE jobrunner_up gauge\njobrunner_up 1\n");
        assert!(at.is_some(), "{text}");
        assert!(text.contains("# TYPE jobrunner_redis_redeliveries_total counter\n"));
        assert!(
            has_line(&text, "jobrunner_redis_redeliveries_total 7"),
            "{text}"
        );
        assert!(has_line(
            &text,
            "jobrunner_queue_jobs{queue=\"q\",state=\"ready\"} 2"
        ));
        assert!(has_line(
            &text,
            "jobrunner_events_published_total{channel=\"redis\"} 4"
        ));
        assert!(!text.contains("jobrunner_events_dropped_total{"), "{text}");
        let again = m.render(&[]);
        assert!(
            !again.contains("jobrunner_up"),
            "not kept between scrapes: {again}"
        );
    }

    #[test]
    fn two_registries_do_not_share_counts() {
        let a = Metrics::default();
        let b = Metrics::default();
        a.job_succeeded("noop");
        assert!(!b.render(&[]).contains("jobrunner_jobs_finished_total{"));
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Prints what recording costs on the hot path; asserts nothing, since
    /// timings depend on the machine.
    #[test]
    fn print_the_cost_of_recording() {
        let m = Metrics::with_series(["noop"], ["default"]);
        let n = 1_000_000u32;
        let start = std::time::Instant::now();
        for _ in 0..n {
            m.job_succeeded("noop");
        }
        let inc = start.elapsed() / n;
        let start = std::time::Instant::now();
        for _ in 0..n {
            m.job_duration("noop", Duration::from_millis(3));
        }
        let observe = start.elapsed() / n;
        let start = std::time::Instant::now();
        for _ in 0..n / 10 {
            m.job_succeeded("not-registered");
        }
        let unknown = start.elapsed() / (n / 10);
        println!(
            "metrics: counter increment {inc:?}, histogram observation {observe:?}, \
             counter of an unregistered kind {unknown:?}"
        );
    }
}
