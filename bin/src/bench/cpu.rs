//! CPU accounting for `jobrunner bench`: how much processor time the daemon,
//! redis-server and Postgres spent over a timed window, read from `/proc`.
//!
//! Rates on a shared machine move with whatever else runs; the CPU time a job
//! costs does not, so the bench reports both. Postgres is counted as the backends
//! connected to the bench's scratch database plus the cluster's own background
//! processes (WAL writer, checkpointer, autovacuum...), so other databases on the
//! same server do not count. A server on another host cannot be read: its figure
//! is then absent.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;

/// The processes whose CPU time a window adds up.
pub struct Probe {
    daemon: u32,
    redis: Option<u32>,
    /// The scratch database: its backends are ours.
    db_name: String,
    pool: PgPool,
    /// Clock ticks per second (`/proc/PID/stat` counts in ticks).
    hz: f64,
}

/// The counters at one moment.
pub struct Sample {
    at: Instant,
    daemon: u64,
    redis: u64,
    /// Ticks per Postgres process (backends of the scratch database and the
    /// cluster's background processes), and whether it is a background one.
    postgres: Option<HashMap<u32, (u64, bool)>>,
    /// (busy, total) ticks of the whole machine (`/proc/stat`).
    machine: (u64, u64),
}

/// CPU spent over a window, in microseconds per job.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub jobs: u64,
    pub seconds: f64,
    pub daemon_us: f64,
    pub redis_us: Option<f64>,
    pub postgres_us: Option<f64>,
    /// The part of `postgres_us` spent by the cluster's background processes
    /// (checkpointer, WAL writer, background writer, autovacuum), not by the
    /// backends serving the bench and the daemon. It may pay for writes made
    /// before the window: a checkpoint flushes whatever was dirty.
    pub postgres_background_us: Option<f64>,
    pub total_us: f64,
    /// Share of the whole machine (all cores) that was busy, 0 to 100.
    pub machine_busy_pct: f64,
    /// Of that, the share spent by processes other than the three above.
    pub others_busy_pct: f64,
    /// `/proc/loadavg`'s one-minute figure at the end of the window.
    pub load1: f64,
}

impl Probe {
    /// Finds redis-server's pid (`INFO server`) and checks that Postgres runs on
    /// this host (its backend's `/proc` entry exists).
    pub fn new(daemon: u32, redis: Option<u32>, pool: PgPool, db_name: &str) -> Probe {
        let redis = redis.filter(|pid| ticks(*pid).is_some());
        Probe {
            daemon,
            redis,
            db_name: db_name.to_owned(),
            pool,
            hz: rustix::param::clock_ticks_per_second() as f64,
        }
    }

    pub async fn sample(&self) -> Sample {
        let postgres = self.postgres_ticks().await;
        Sample {
            at: Instant::now(),
            daemon: ticks(self.daemon).unwrap_or(0),
            redis: self.redis.and_then(ticks).unwrap_or(0),
            postgres,
            machine: machine_ticks(),
        }
    }

    async fn postgres_ticks(&self) -> Option<HashMap<u32, (u64, bool)>> {
        let pids: Vec<(i32, bool)> = sqlx::query_as(
            "SELECT pid, backend_type IS DISTINCT FROM 'client backend' FROM pg_stat_activity
             WHERE datname = $1 OR datname IS NULL",
        )
        .bind(&self.db_name)
        .fetch_all(&self.pool)
        .await
        .ok()?;
        let map: HashMap<u32, (u64, bool)> = pids
            .into_iter()
            .filter_map(|(pid, background)| {
                let pid = pid as u32;
                ticks(pid).map(|t| (pid, (t, background)))
            })
            .collect();
        (!map.is_empty()).then_some(map)
    }

    /// The cost of each job between `start` and `end`.
    pub fn cost(&self, start: &Sample, end: &Sample, jobs: u64) -> Cost {
        let us_per_job = |ticks: u64| ticks as f64 / self.hz * 1e6 / jobs.max(1) as f64;
        let daemon = end.daemon.saturating_sub(start.daemon);
        let redis = self.redis.map(|_| end.redis.saturating_sub(start.redis));
        // A backend that appeared during the window spent all its time in it; one
        // that ended during it is lost (pools keep theirs open, so few do).
        let spent = |only_background: bool| match (&start.postgres, &end.postgres) {
            (Some(a), Some(b)) => Some(
                b.iter()
                    .filter(|(_, (_, background))| *background || !only_background)
                    .map(|(pid, (t, _))| t.saturating_sub(a.get(pid).map_or(0, |s| s.0)))
                    .sum::<u64>(),
            ),
            _ => None,
        };
        let postgres = spent(false);
        let postgres_background = spent(true);
        let ours = daemon + redis.unwrap_or(0) + postgres.unwrap_or(0);
        let busy = end.machine.0.saturating_sub(start.machine.0);
        let total = end.machine.1.saturating_sub(start.machine.1).max(1);
        Cost {
            jobs,
            seconds: end.at.duration_since(start.at).as_secs_f64(),
            daemon_us: us_per_job(daemon),
            redis_us: redis.map(us_per_job),
            postgres_us: postgres.map(us_per_job),
            postgres_background_us: postgres_background.map(us_per_job),
            total_us: us_per_job(ours),
            machine_busy_pct: busy as f64 * 100.0 / total as f64,
            others_busy_pct: busy.saturating_sub(ours) as f64 * 100.0 / total as f64,
            load1: load1(),
        }
    }
}

impl Cost {
    /// "daemon 27 + redis 28 + postgres 45 (background 3) = 100 µs/job"
    pub fn line(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
        let background = self
            .postgres_background_us
            .map_or(String::new(), |v| format!(" (background {v:.1})"));
        format!(
            "daemon {:.1} + redis {} + postgres {}{background} = {:.1} µs/job",
            self.daemon_us,
            opt(self.redis_us),
            opt(self.postgres_us),
            self.total_us
        )
    }

    /// "machine 93% busy (others 12%), load 2.4"
    pub fn load_line(&self) -> String {
        format!(
            "machine {:.0}% busy (others {:.0}%), load {:.2}",
            self.machine_busy_pct, self.others_busy_pct, self.load1
        )
    }
}

/// utime + stime of a process, in clock ticks; `None` if it is not on this host.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

/// Fields 14 and 15 (utime, stime) of `/proc/PID/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) ticks of all cores, from the first line of `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th values.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::parse_stat_ticks;

    #[test]
    fn stat_ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "4242 (tokio (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    123 45 0 0 20 0 8 0 100 1000 200";
        assert_eq!(parse_stat_ticks(stat), Some(168));
    }
}
