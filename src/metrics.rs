//! The process's metrics: counters and histograms that the runtime, the ledger and
//! the broker's callers record into, rendered in the Prometheus text format by
//! `admin` at `/metrics`.
//!
//! Hand-rolled on purpose: a dozen series with fixed names need no recorder
//! framework, and this keeps the daemon's dependency tree (and idle memory) small.
//! Every metric is declared once in [`DEFS`] with its type and help text, so a
//! series can never be rendered without its `# HELP` line.
//!
//! **Invariant:** recording takes a std mutex for a few map operations and never
//! awaits while holding it. Nothing here does I/O; gauges that need Redis or
//! Postgres are read at scrape time by `admin` and passed to [`Metrics::render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Buckets for durations, in seconds: a few ms up to five minutes.
const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets for the status writer's batch sizes.
const SIZES: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, type, help text and (for histograms) bucket bounds.
pub struct Def {
    pub name: &'static str,
    pub kind: Type,
    pub help: &'static str,
    buckets: &'static [f64],
}

const fn def(name: &'static str, kind: Type, help: &'static str) -> Def {
    Def {
        name,
        kind,
        help,
        buckets: SECONDS,
    }
}

pub const JOBS_FINISHED: &str = "jobrunner_jobs_finished_total";
pub const JOB_DURATION: &str = "jobrunner_job_duration_seconds";
pub const QUEUE_WAIT: &str = "jobrunner_queue_wait_seconds";
pub const RETRIES: &str = "jobrunner_job_retries_total";
pub const DEAD: &str = "jobrunner_jobs_dead_total";
pub const LEASE_EXPIRED: &str = "jobrunner_lease_expired_total";
pub const STATUS_BATCH: &str = "jobrunner_status_batch_size";
pub const STATUS_WRITE: &str = "jobrunner_status_write_seconds";
pub const PG_ACQUIRE: &str = "jobrunner_postgres_acquire_seconds";
pub const EVENTS_PUBLISHED: &str = "jobrunner_events_published_total";
pub const EVENTS_DROPPED: &str = "jobrunner_events_dropped_total";
pub const QUEUE_JOBS: &str = "jobrunner_queue_jobs";
pub const QUEUE_OLDEST_READY: &str = "jobrunner_queue_oldest_ready_age_seconds";
pub const PG_CONNECTIONS: &str = "jobrunner_postgres_pool_connections";
pub const REDIS_CONNECTIONS: &str = "jobrunner_redis_pool_connections";
pub const REDIS_QUEUED: &str = "jobrunner_redis_commands_queued";
pub const REDIS_REDELIVERIES: &str = "jobrunner_redis_redeliveries_total";
pub const UP: &str = "jobrunner_up";
pub const POISON: &str = "jobrunner_batch_poison_total";

/// Every metric this process exposes, in the order `/metrics` lists them.
pub const DEFS: &[Def] = &[
    def(
        JOBS_FINISHED,
        Type::Counter,
        "Jobs this daemon ran to an end state, by kind and state (succeeded or dead).",
    ),
    def(
        JOB_DURATION,
        Type::Histogram,
        "Run time of one attempt's handler, by kind.",
    ),
    def(
        QUEUE_WAIT,
        Type::Histogram,
        "Time from a job becoming due to its first attempt's lease by this daemon, by queue.",
    ),
    def(
        RETRIES,
        Type::Counter,
        "Failed attempts that were scheduled to run again, by kind.",
    ),
    def(
        DEAD,
        Type::Counter,
        "Jobs that ended dead (attempts spent or a permanent error), by kind.",
    ),
    def(
        LEASE_EXPIRED,
        Type::Counter,
        "Leases this daemon's reaper found expired (a worker stopped responding), by queue.",
    ),
    Def {
        name: STATUS_BATCH,
        kind: Type::Histogram,
        help: "Rows written by one statement of the batched status writer.",
        buckets: SIZES,
    },
    def(
        STATUS_WRITE,
        Type::Histogram,
        "Time one status-writer batch took in Postgres, including waiting for a connection.",
    ),
    def(
        PG_ACQUIRE,
        Type::Histogram,
        "Wait for a pooled Postgres connection in the status writer and the ingester.",
    ),
    def(
        EVENTS_PUBLISHED,
        Type::Counter,
        "Job events published, by channel (redis or postgres).",
    ),
    def(
        EVENTS_DROPPED,
        Type::Counter,
        "Job events not published because the channel failed or its buffer was full, by channel.",
    ),
    def(
        QUEUE_JOBS,
        Type::Gauge,
        "Jobs in Redis per queue and state: ready, scheduled (delayed or retrying), running (leased).",
    ),
    def(
        QUEUE_OLDEST_READY,
        Type::Gauge,
        "Age of the job at the head of the queue's ready set (the oldest of the highest priority waiting).",
    ),
    def(
        PG_CONNECTIONS,
        Type::Gauge,
        "Connections of the Postgres pool, by state (idle or in_use).",
    ),
    def(
        REDIS_CONNECTIONS,
        Type::Gauge,
        "Clients of the Redis pool, by state (connected or disconnected).",
    ),
    def(
        REDIS_QUEUED,
        Type::Gauge,
        "Redis commands buffered in the pool, not yet sent.",
    ),
    def(
        REDIS_REDELIVERIES,
        Type::Counter,
        "Redis commands sent again after a connection closed while waiting for the reply.",
    ),
    def(
        POISON,
        Type::Counter,
        "Items a batch could not write for a reason of their own, found by splitting the batch, by path (dispatch, status, events): the job was recorded dead, or the event dropped.",
    ),
    def(
        UP,
        Type::Gauge,
        "1 while the daemon runs; 0 once it is draining.",
    ),
];

/// Label pairs of one series, in a fixed order.
type Labels = Vec<(&'static str, String)>;

/// A value read at scrape time: (metric name, labels, value).
pub type Sample = (&'static str, Labels, f64);

#[derive(Debug, Clone)]
struct Histogram {
    /// Count per bucket (not cumulative; summed when rendered).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Series {
    counters: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The registry. One per daemon, shared through an `Arc`.
#[derive(Default)]
pub struct Metrics {
    /// Every recorded series; see the module's invariant.
    series: Mutex<Series>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn find(name: &str) -> Option<&'static Def> {
    DEFS.iter().find(|d| d.name == name)
}

impl Metrics {
    /// Adds `by` to a counter.
    pub fn inc(&self, name: &'static str, pairs: &[(&'static str, &str)], by: u64) {
        if by == 0 {
            return;
        }
        let key = (name, labels(pairs));
        // A poisoned lock only means a panic elsewhere mid-update; the counts are
        // still usable.
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        *series.counters.entry(key).or_insert(0.0) += by as f64;
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, pairs: &[(&'static str, &str)], value: f64) {
        let Some(def) = find(name) else { return };
        let key = (name, labels(pairs));
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let h = series.histograms.entry(key).or_insert_with(|| Histogram {
            counts: vec![0; def.buckets.len()],
            sum: 0.0,
            count: 0,
        });
        if let Some(i) = def.buckets.iter().position(|b| value <= *b) {
            h.counts[i] += 1;
        }
        h.sum += value;
        h.count += 1;
    }

    /// [`Metrics::observe`] for a duration, in seconds.
    pub fn observe_duration(
        &self,
        name: &'static str,
        pairs: &[(&'static str, &str)],
        d: Duration,
    ) {
        self.observe(name, pairs, d.as_secs_f64());
    }

    /// Every metric in the Prometheus text format (version 0.0.4). `samples` are
    /// the gauges (and externally kept counters) read at scrape time.
    pub fn render(&self, samples: &[Sample]) -> String {
        let (counters, histograms) = {
            let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            (series.counters.clone(), series.histograms.clone())
        };
        let mut out = String::with_capacity(4096);
        for def in DEFS {
            let kind = match def.kind {
                Type::Counter => "counter",
                Type::Gauge => "gauge",
                Type::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", def.name, def.help);
            let _ = writeln!(out, "# TYPE {} {kind}", def.name);
            for ((name, labels), value) in counters.range((def.name, Vec::new())..) {
                if *name != def.name {
                    break;
                }
                line(&mut out, name, labels, None, *value);
            }
            for (name, labels, value) in samples.iter().filter(|s| s.0 == def.name) {
                line(&mut out, name, labels, None, *value);
            }
            for ((name, labels), h) in histograms.range((def.name, Vec::new())..) {
                if *name != def.name {
                    break;
                }
                let bucket = format!("{name}_bucket");
                let mut cumulative = 0;
                for (bound, count) in def.buckets.iter().zip(&h.counts) {
                    cumulative += count;
                    line(
                        &mut out,
                        &bucket,
                        labels,
                        Some(&bound.to_string()),
                        cumulative as f64,
                    );
                }
                line(&mut out, &bucket, labels, Some("+Inf"), h.count as f64);
                line(&mut out, &format!("{name}_sum"), labels, None, h.sum);
                line(
                    &mut out,
                    &format!("{name}_count"),
                    labels,
                    None,
                    h.count as f64,
                );
            }
        }
        out
    }
}

/// One sample line: `name{k="v",…,le="…"} value`.
fn line(out: &mut String, name: &str, labels: &Labels, le: Option<&str>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(le.map(|le| ("le", le)))
        {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_renders_with_its_help_type_and_labels() {
        let m = Metrics::default();
        m.inc(
            JOBS_FINISHED,
            &[("kind", "noop"), ("state", "succeeded")],
            2,
        );
        m.inc(
            JOBS_FINISHED,
            &[("kind", "noop"), ("state", "succeeded")],
            1,
        );
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
            text.contains("jobrunner_jobs_finished_total{kind=\"noop\",state=\"succeeded\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let m = Metrics::default();
        for v in [0.002, 0.2, 7.0, 1000.0] {
            m.observe(JOB_DURATION, &[("kind", "k")], v);
        }
        let text = m.render(&[]);
        assert!(
            text.contains("jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"0.001\"} 0\n")
        );
        assert!(
            text.contains("jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"0.005\"} 1\n")
        );
        assert!(text.contains("jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"0.25\"} 2\n"));
        assert!(text.contains("jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"300\"} 3\n"));
        assert!(text.contains("jobrunner_job_duration_seconds_bucket{kind=\"k\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("jobrunner_job_duration_seconds_count{kind=\"k\"} 4\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.inc(RETRIES, &[("kind", "a\"b\\c\nd")], 1);
        assert!(
            m.render(&[])
                .contains("jobrunner_job_retries_total{kind=\"a\\\"b\\\\c\\nd\"} 1\n")
        );
    }

    #[test]
    fn scrape_time_samples_render_under_their_metric() {
        let m = Metrics::default();
        let text = m.render(&[(UP, vec![], 1.0)]);
        let at = text.find("# TYPE jobrunner_up gauge\njobrunner_up 1\n");
        assert!(at.is_some(), "{text}");
    }
}
