//! Applying a new config to a running daemon (SIGHUP): what changed, what takes
//! effect now, and what needs a restart.
//!
//! The two configs are compared as trees of keys, so sections added later are
//! covered without code here. A change takes effect unless its key is on the
//! restart list in [`restart_reason`]; everything else is read through
//! `Shared::live` at the point of use, so publishing the new config applies it.
//! Changes that need a restart are put back to their running values before the
//! config is published, so `live()` never shows a value the daemon does not use.
//!
//! The one setting applied by hand is a queue's concurrency: its semaphore gains
//! permits at once, or loses them as running jobs end (see [`Resizer`]); a
//! reload never waits for jobs.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, redact_url, with_secrets_exposed};

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes in force now.
    pub applied: Vec<Change>,
    /// Changes the daemon ignores until it restarts (it keeps the running value).
    pub needs_restart: Vec<Change>,
}

/// One changed key, with values as printed in logs (secrets hidden).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key, e.g. `queues.default.concurrency`.
    pub key: String,
    pub from: String,
    pub to: String,
    /// Why the change is not applied (only in [`ReloadReport::needs_restart`]).
    pub reason: Option<&'static str>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.needs_restart.is_empty()
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.from, self.to)?;
        if let Some(reason) = self.reason {
            write!(f, " (needs a restart: {reason})")?;
        }
        Ok(())
    }
}

/// Why a change to the key at `path` cannot take effect while running, if so.
fn restart_reason(path: &[String]) -> Option<&'static str> {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["database", ..] => Some("the Postgres pool is built at start"),
        ["redis", ..] => Some("the Redis pool is built at start"),
        ["runtime", ..] => Some("the daemon's loops read runtime settings at start"),
        ["log", "format"] => Some("the log format is set at start"),
        ["admin", ..] => Some("the admin listener is bound at start"),
        ["events", ..] => Some("the event publisher is built at start"),
        ["redaction", ..] => Some("redaction rules are built at start"),
        ["queues", _] => Some("the queues a daemon serves are fixed at start"),
        ["kinds", _] => Some("kinds are registered and copied to jobrunner.kinds at start"),
        ["kinds", _, "handler" | "http" | "command", ..] => Some("handlers are built at start"),
        ["kinds", _, "queue" | "max_attempts" | "unique_key"] => {
            Some("copied to jobrunner.kinds at start")
        }
        _ => None,
    }
}

/// A difference between the running and the new config, before classifying.
struct Diff {
    path: Vec<String>,
    old: Option<Value>,
    new: Option<Value>,
}

/// Compares two configs. Returns the changes and the config to publish: `new`
/// with every change that needs a restart put back to its running value.
/// `log_level_fixed` says why a `log.level` change cannot apply (`RUST_LOG`).
pub(super) fn plan(
    running: &Config,
    new: &Config,
    log_level_fixed: Option<&'static str>,
) -> (ReloadReport, Config) {
    // The trees carry the real secrets: a put-back value must be the running one,
    // not its printed form. `shown` hides them in what is logged.
    let trees = with_secrets_exposed(|| (serde_json::to_value(running), serde_json::to_value(new)));
    let (old_tree, mut new_tree) = match trees {
        (Ok(o), Ok(n)) => (o, n),
        // Config serialises to JSON for `jobrunner config` too; this cannot fail
        // for the types it holds, but if it did, applying nothing is safe.
        _ => return (ReloadReport::default(), running.clone()),
    };
    let mut diffs = Vec::new();
    diff(&old_tree, &new_tree, &mut Vec::new(), &mut diffs);
    let mut report = ReloadReport::default();
    for d in diffs {
        let reason = restart_reason(&d.path).or(match d.path.as_slice() {
            [a, b] if a == "log" && b == "level" => log_level_fixed,
            // A layer's section (`Config::sections`) is read when its layer starts.
            [a, ..] if running.sections.contains_key(a) || new.sections.contains_key(a) => {
                Some("the layer that claims this section reads it at start")
            }
            _ => None,
        });
        let change = Change {
            key: d.path.join("."),
            from: shown(&d.path, d.old.as_ref()),
            to: shown(&d.path, d.new.as_ref()),
            reason,
        };
        if reason.is_some() {
            put_back(&mut new_tree, &d.path, d.old);
            report.needs_restart.push(change);
        } else {
            report.applied.push(change);
        }
    }
    match serde_json::from_value::<Config>(new_tree) {
        Ok(mut effective) => {
            effective.origin = new.origin.clone();
            (report, effective)
        }
        Err(error) => {
            // Also not expected: the tree came from a valid Config. Keep running
            // as before and say that nothing was applied.
            tracing::error!(%error, "Cannot build the reloaded config; keeping the running one");
            let ReloadReport {
                applied,
                mut needs_restart,
            } = report;
            needs_restart.extend(applied.into_iter().map(|c| Change {
                reason: Some("the reloaded config could not be assembled"),
                ..c
            }));
            (
                ReloadReport {
                    applied: Vec::new(),
                    needs_restart,
                },
                running.clone(),
            )
        }
    }
}

fn diff(old: &Value, new: &Value, path: &mut Vec<String>, out: &mut Vec<Diff>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for key in keys {
                path.push(key.clone());
                match (o.get(key), n.get(key)) {
                    (Some(a), Some(b)) => diff(a, b, path, out),
                    (a, b) => out.push(Diff {
                        path: path.clone(),
                        old: a.cloned(),
                        new: b.cloned(),
                    }),
                }
                path.pop();
            }
        }
        (a, b) if a != b => out.push(Diff {
            path: path.clone(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
        _ => {}
    }
}

/// Sets (or removes, for `None`) the key at `path` in `tree`.
fn put_back(tree: &mut Value, path: &[String], value: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for key in parents {
        match node.get_mut(key) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Value::Object(map) = node {
        match value {
            Some(v) => {
                map.insert(last.clone(), v);
            }
            None => {
                map.remove(last);
            }
        }
    }
}

/// A value as logged: connection URLs without passwords, secrets hidden, whole
/// tables summarised (they may hold headers with tokens).
fn shown(path: &[String], value: Option<&Value>) -> String {
    let secret = path.iter().any(|k| {
        let k = k.to_ascii_lowercase();
        k == "headers"
            || k == "env"
            || ["secret", "password", "token", "api_key"]
                .iter()
                .any(|s| k.contains(s))
    });
    match value {
        None => "(none)".into(),
        Some(_) if secret => "(hidden)".into(),
        Some(Value::Object(_)) => "{…}".into(),
        Some(Value::String(s)) if path.last().is_some_and(|k| k == "url") => {
            format!("\"{}\"", redact_url(s))
        }
        Some(v) => v.to_string(),
    }
}

/// Changes a queue's concurrency without waiting: a raise adds permits at once;
/// a cut takes permits away as running jobs give theirs back, in a background
/// task, so a reload never blocks on jobs.
pub(super) struct Resizer {
    /// Per queue: permits still to be taken away, and whether a task is doing it.
    owed: Mutex<HashMap<String, Arc<Mutex<Owed>>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Owed {
    permits: usize,
    task_running: bool,
}

impl Resizer {
    pub(super) fn new(shutdown: CancellationToken) -> Resizer {
        Resizer {
            owed: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            shutdown,
        }
    }

    pub(super) fn resize(&self, queue: &str, slots: &Arc<Semaphore>, from: usize, to: usize) {
        let owed = {
            // Poisoning needs a panic while holding the lock, and nothing in these
            // short sections can panic; recover the data regardless.
            let mut map = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(queue.to_owned()).or_default().clone()
        };
        let mut state = owed.lock().unwrap_or_else(|e| e.into_inner());
        if to > from {
            // Permits still owed from an earlier cut are simply no longer owed.
            let raise = to - from;
            let cancelled = state.permits.min(raise);
            state.permits -= cancelled;
            slots.add_permits(raise - cancelled);
        } else {
            state.permits += from - to;
            if !state.task_running {
                state.task_running = true;
                let (slots, owed, stop) = (slots.clone(), owed.clone(), self.shutdown.clone());
                self.tasks.spawn(take_permits(slots, owed, stop));
            }
        }
    }

    /// Waits for the background cuts (they end at shutdown).
    pub(super) async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn take_permits(slots: Arc<Semaphore>, owed: Arc<Mutex<Owed>>, stop: CancellationToken) {
    loop {
        {
            let mut state = owed.lock().unwrap_or_else(|e| e.into_inner());
            if state.permits == 0 {
                state.task_running = false;
                return;
            }
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            _ = stop.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let mut state = owed.lock().unwrap_or_else(|e| e.into_inner());
        if state.permits > 0 {
            state.permits -= 1;
            permit.forget();
        }
        // Otherwise a raise cancelled the debt meanwhile: the permit goes back.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let c = Config::from_toml(text, "r.toml").unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn a_concurrency_change_applies_and_a_new_queue_needs_a_restart() {
        let old = config("[queues.default]\nconcurrency = 1\n");
        let new = config(
            "[queues.default]\nconcurrency = 4\n[queues.mail]\nconcurrency = 2\n[database]\nurl = \"postgres://u:secret@db/x\"\n",
        );
        let (report, effective) = plan(&old, &new, None);
        let applied: Vec<String> = report.applied.iter().map(|c| c.to_string()).collect();
        assert_eq!(applied, ["queues.default.concurrency: 1 -> 4"]);
        let restart: Vec<&str> = report
            .needs_restart
            .iter()
            .map(|c| c.key.as_str())
            .collect();
        assert_eq!(restart, ["database.url", "queues.mail"]);
        assert!(
            report.needs_restart[0].to.contains("u:***@db"),
            "{:?}",
            report.needs_restart[0]
        );
        assert_eq!(effective.queues["default"].concurrency, 4);
        assert!(!effective.queues.contains_key("mail"));
        assert_eq!(effective.database.url, old.database.url);
    }

    #[test]
    fn kind_timeouts_apply_but_handlers_and_queues_need_a_restart() {
        let old = config("[kinds.k]\ntimeout = \"10s\"\n");
        let new = config("[kinds.k]\ntimeout = \"20s\"\nqueue = \"other\"\n");
        let (report, effective) = plan(&old, &new, None);
        assert_eq!(report.applied.len(), 1, "{report:?}");
        assert_eq!(report.applied[0].key, "kinds.k.timeout");
        assert_eq!(report.needs_restart[0].key, "kinds.k.queue");
        assert_eq!(effective.kind("k").timeout.as_secs(), 20);
        assert_eq!(effective.kind("k").queue, "default");
    }

    #[test]
    fn a_log_level_change_is_refused_when_rust_log_wins() {
        let old = config("");
        let new = config("[log]\nlevel = \"debug\"\n");
        let (report, _) = plan(&old, &new, None);
        assert_eq!(
            report.applied[0].to_string(),
            "log.level: \"info,sqlx=warn\" -> \"debug\""
        );
        let (report, effective) = plan(&old, &new, Some("RUST_LOG is set"));
        assert!(report.applied.is_empty());
        assert_eq!(report.needs_restart[0].reason, Some("RUST_LOG is set"));
        assert_eq!(effective.log.level, old.log.level);
    }

    #[test]
    fn an_unchanged_config_reports_nothing() {
        let c = config("[queues.a]\nconcurrency = 3\n");
        assert!(plan(&c, &c.clone(), None).0.is_empty());
    }

    #[tokio::test]
    async fn cutting_concurrency_waits_for_running_jobs_and_a_raise_cancels_the_cut() {
        let slots = Arc::new(Semaphore::new(4));
        let resizer = Resizer::new(CancellationToken::new());
        let busy = slots.clone().acquire_many_owned(4).await.unwrap();
        resizer.resize("q", &slots, 4, 1);
        tokio::task::yield_now().await;
        assert_eq!(slots.available_permits(), 0);
        drop(busy);
        // The background task takes the three it is owed as they come back.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while slots.available_permits() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        resizer.resize("q", &slots, 1, 4);
        assert_eq!(slots.available_permits(), 4);

        // A cut still owed when a raise arrives is cancelled, not added on top.
        let busy = slots.clone().acquire_many_owned(4).await.unwrap();
        resizer.resize("q", &slots, 4, 2);
        resizer.resize("q", &slots, 2, 3);
        drop(busy);
        resizer.wait().await;
        assert_eq!(slots.available_permits(), 3);
    }
}
