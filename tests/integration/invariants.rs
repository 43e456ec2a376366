//! The module boundaries docs/ARCHITECTURE.md states as invariants, checked on
//! the source tree: only `broker` talks to Redis, and only `ledger` runs SQL on
//! the ledger's own tables.

use std::path::{Path, PathBuf};

/// Tables whose rows only `ledger` reads and writes.
const LEDGER_TABLES: [&str; 5] = [
    "jobrunner.jobs",
    "jobrunner.outbox",
    "jobrunner.cron_fires",
    "jobrunner.quarantine",
    "jobrunner.external_ids",
];

/// Folders outside `ledger` allowed to run SQL on the ledger tables, and why.
const LEDGER_SQL_ALLOWED: [&str; 1] = [
    // The benchmark empties the tables between runs and reads timings straight
    // from the rows; it is a tool beside the core and will move out of it.
    "src/bench",
];

/// Every `.rs` file under `src/`, as paths relative to the crate root.
fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    assert!(out.len() > 20, "found the source tree: {out:?}");
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The code of a file without its comment lines.
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether code names the Redis client crate.
fn names_fred(code: &str) -> bool {
    code.contains("fred::") || code.contains("use fred")
}

/// Whether code runs SQL that names a ledger table.
fn runs_ledger_sql(code: &str) -> bool {
    let runs_sql = [
        "sqlx::query",
        "query(",
        "query_as",
        "query_scalar",
        "QueryBuilder",
    ]
    .iter()
    .any(|q| code.contains(q));
    runs_sql && LEDGER_TABLES.iter().any(|t| code.contains(t))
}

/// Source files outside the `owner` folders whose code `breaks` the rule.
fn offenders(owners: &[&str], breaks: fn(&str) -> bool) -> Vec<PathBuf> {
    sources()
        .into_iter()
        .filter(|p| !owners.iter().any(|o| p.starts_with(o)))
        .filter(|p| breaks(&code(&read(p))))
        .collect()
}

#[test]
fn only_broker_names_the_redis_client() {
    let offenders = offenders(&["src/broker"], names_fred);
    assert!(
        offenders.is_empty(),
        "only broker may talk to Redis; these files name fred: {offenders:?}"
    );
}

#[test]
fn only_ledger_runs_sql_on_the_ledger_tables() {
    let owners: Vec<&str> = ["src/ledger"]
        .into_iter()
        .chain(LEDGER_SQL_ALLOWED)
        .collect();
    let offenders = offenders(&owners, runs_ledger_sql);
    assert!(
        offenders.is_empty(),
        "only ledger may run SQL on {LEDGER_TABLES:?}; these files do: {offenders:?}"
    );
}

#[test]
fn the_checks_recognise_what_they_forbid() {
    assert!(names_fred("use fred::prelude::*;"));
    assert!(!names_fred(&code("// fred:: is named in a comment only")));
    assert!(runs_ledger_sql(
        r#"sqlx::query("DELETE FROM jobrunner.outbox").execute(&pool)"#
    ));
    assert!(!runs_ledger_sql(
        r#"sqlx::query("SELECT 1 FROM content_posts")"#
    ));
    assert!(
        sources()
            .iter()
            .any(|p| p == Path::new("src/broker/mod.rs"))
    );
    assert!(names_fred(&code(&read(Path::new("src/broker/mod.rs")))));
    // The allowed exception is real: drop it and the check fails.
    assert!(!offenders(&["src/ledger"], runs_ledger_sql).is_empty());
    assert!(!offenders(&[], names_fred).is_empty());
}
