//! The invariants docs/ARCHITECTURE.md states that can be read off the source
//! tree: only `broker` talks to Redis and builds its keys, and it never blocks
//! on the server; only `ledger` runs SQL; the core never names a business kind;
//! the ledger's objects live in the `jobrunner` schema and the kinds' outside
//! it; no global state but two named exceptions; only `cli` reads systemd's
//! environment; and no source file outgrows one concept.

use std::path::{Path, PathBuf};

/// Tables whose rows only `ledger` reads and writes.
const LEDGER_TABLES: [&str; 6] = [
    "jobrunner.jobs",
    "jobrunner.outbox",
    "jobrunner.outbox_held",
    "jobrunner.cron_fires",
    "jobrunner.quarantine",
    "jobrunner.external_ids",
];

/// Folders outside `ledger` allowed to run SQL on the ledger tables, and why.
const LEDGER_SQL_ALLOWED: [&str; 1] = [
    // The benchmark empties the tables between runs and reads timings straight
    // from the rows; it is a tool of the binary beside the core, not part of it.
    "bin/src/bench",
];

/// The source folders of the workspace: the core, the business kinds, the binary.
const CRATES: [&str; 3] = ["src", "kinds/src", "bin/src"];

/// The files of the core: its library, its build script and its migrations.
const CORE: [&str; 3] = ["src", "build.rs", "migrations"];

/// Most lines of non-test code a source file may hold: past it, a module is
/// split along its concepts into a directory (docs/ARCHITECTURE.md, "Code map").
const MAX_CODE_LINES: usize = 400;

/// The repository root (the tests belong to the binary's package, in bin/).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Every file under the `folders` (or the files themselves), as paths relative
/// to the repository root.
fn files(folders: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for folder in folders {
        let path = root().join(folder);
        if path.is_dir() {
            dirs.push(path);
        } else {
            out.push(PathBuf::from(folder));
        }
    }
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(root()).unwrap().to_owned());
            }
        }
    }
    out
}

/// Every `.rs` file of the workspace's crates.
fn sources() -> Vec<PathBuf> {
    let out: Vec<PathBuf> = files(&CRATES)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    assert!(out.len() > 20, "found the source tree: {out:?}");
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// The code of a file without its comment lines.
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file's lines of non-test code: every line (comments and blank lines
/// included) before the first that starts `#[cfg(test)]`.
fn code_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .count()
}

/// The uses of `sqlx` the core may make outside `ledger`: the types a
/// handler's context and a layer's migrations carry, and a log filter's name.
const SQLX_ALLOWED: [&str; 3] = ["sqlx::migrate::Migration", "sqlx::PgPool", "sqlx="];

/// Whether code uses `sqlx` for anything but the [`SQLX_ALLOWED`] types: a
/// query, a connection, a listener or a transaction.
fn uses_sqlx(code: &str) -> bool {
    code.match_indices("sqlx")
        .any(|(at, _)| !SQLX_ALLOWED.iter().any(|a| code[at..].starts_with(a)))
}

/// Redis commands that block on the server until data arrives (fred names
/// them the same, in lower case).
const BLOCKING_COMMANDS: [&str; 11] = [
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "XREAD",
    "XREADGROUP",
    "WAIT",
];

/// Whether code names a blocking Redis command, as a command or fred method.
fn names_blocking_command(code: &str) -> bool {
    BLOCKING_COMMANDS.iter().any(|c| {
        has_word(code, &format!("\"{c}\""))
            || has_word(code, &format!("'{c}'"))
            // `.wait(` is a process's or a task's, not Redis's WAIT.
            || (*c != "WAIT" && code.contains(&format!(".{}(", c.to_lowercase())))
    })
}

/// The pieces of a format string that build one of jobrunner's Redis keys or
/// channels, or arq's: a queue's hash tag, the prefix-wide keys and the keys
/// named by an id.
const KEY_FORMATS: [&str; 11] = [
    ":{{{",
    "}:workers\"",
    "}:events\"",
    "}job:{",
    "}ended:{",
    "}inflight:{",
    "}parked:{",
    "\"arq:job:{",
    "\"arq:result:{",
    "\"arq:in-progress:{",
    "\"arq:retry:{",
];

/// Whether code builds a Redis key or channel name by hand.
fn formats_a_key(code: &str) -> bool {
    KEY_FORMATS.iter().any(|k| code.contains(k))
}

/// The `static` items the library may hold, and why: anything else would be
/// state shared behind the caller's back, where config and registries are
/// passed explicitly.
const STATICS_ALLOWED: [(&str, &str); 3] = [
    // tracing's subscriber is process-wide; SIGHUP changes its level through
    // this reload handle.
    ("src/telemetry.rs", "FILTER"),
    // A thread-local flag scoped to one synchronous call (`with_secrets_exposed`).
    ("src/config/secret.rs", "EXPOSED"),
    // Immutable: the metadata every metric series is registered with.
    ("src/metrics/mod.rs", "METADATA"),
];

/// The names of the `static` items code declares.
fn statics(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let rest = l.strip_prefix("static ")?;
            let rest = rest.strip_prefix("mut ").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The names of the schema objects a migration creates.
fn created_objects(sql: &str) -> Vec<String> {
    let upper = sql.to_uppercase();
    let mut out = Vec::new();
    for what in ["TABLE ", "VIEW ", "FUNCTION ", "TYPE ", "SEQUENCE "] {
        for create in ["CREATE ", "CREATE OR REPLACE "] {
            let needle = format!("{create}{what}");
            for (at, _) in upper.match_indices(&needle) {
                let rest = &sql[at + needle.len()..];
                let rest = rest
                    .strip_prefix("IF NOT EXISTS ")
                    .or_else(|| rest.strip_prefix("if not exists "))
                    .unwrap_or(rest);
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                    .collect();
                out.push(name);
            }
        }
    }
    out
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

/// Whether `text` holds `word` with no identifier character (or `-`) on
/// either side.
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// What names a business kind: the crate, each kind's module (`pub mod` in
/// kinds/src/lib.rs) in its Rust and its kind-name spelling, and the tables the
/// kinds' migrations create. Read from the kinds' crate, so a new kind is covered.
struct KindNames {
    words: Vec<String>,
    /// Table names that are plain words (`messages`): only SQL that names them
    /// counts (`FROM messages`, `public.messages`), not the English word.
    plain_tables: Vec<String>,
}

impl KindNames {
    fn read() -> KindNames {
        let mut words = vec!["jobrunner_kinds".to_owned(), "jobrunner-kinds".to_owned()];
        for line in read(Path::new("kinds/src/lib.rs")).lines() {
            if let Some(name) = line
                .strip_prefix("pub mod ")
                .and_then(|r| r.strip_suffix(';'))
            {
                words.push(name.to_owned());
                words.push(name.replace('_', "-"));
            }
        }
        let mut plain_tables = Vec::new();
        for file in files(&["kinds/migrations"]) {
            let sql = read(&file);
            for part in sql.split("CREATE TABLE ").skip(1) {
                let name: String = part
                    .trim_start_matches("public.")
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.contains('_') {
                    words.push(name);
                } else {
                    plain_tables.push(name);
                }
            }
        }
        assert!(words.len() >= 8, "kinds and tables: {words:?}");
        KindNames {
            words,
            plain_tables,
        }
    }

    /// The first name of a business kind that `text` holds.
    fn named_in(&self, text: &str) -> Option<String> {
        if let Some(word) = self.words.iter().find(|w| has_word(text, w)) {
            return Some(word.clone());
        }
        let upper = text.to_uppercase();
        self.plain_tables
            .iter()
            .find(|table| {
                let table = table.to_uppercase();
                ["PUBLIC.", "FROM ", "INTO ", "UPDATE ", "JOIN ", "TABLE "]
                    .iter()
                    .any(|sql| has_word(&upper, &format!("{sql}{table}")))
            })
            .cloned()
    }
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
fn the_core_never_names_a_business_kind() {
    let names = KindNames::read();
    let offenders: Vec<(PathBuf, String)> = files(&CORE)
        .into_iter()
        .filter_map(|p| Some((p.clone(), names.named_in(&read(&p))?)))
        .collect();
    assert!(
        offenders.is_empty(),
        "the core (src/, build.rs, migrations/) must not name the business kinds, \
         their crate or their tables; these files do (and the name): {offenders:?}"
    );
}

#[test]
fn in_the_core_only_ledger_runs_sql() {
    let offenders: Vec<PathBuf> = sources()
        .into_iter()
        .filter(|p| p.starts_with("src") && !p.starts_with("src/ledger"))
        .filter(|p| uses_sqlx(&code(&read(p))))
        .collect();
    assert!(
        offenders.is_empty(),
        "outside ledger the core only carries {SQLX_ALLOWED:?}; these files use sqlx \
         for more (run SQL through a Ledger method instead): {offenders:?}"
    );
}

#[test]
fn no_redis_command_blocks_on_the_server() {
    let offenders = offenders(&[], names_blocking_command);
    assert!(
        offenders.is_empty(),
        "every command shares the pool, so none may block on the server \
         ({BLOCKING_COMMANDS:?}); these files name one: {offenders:?}"
    );
}

#[test]
fn only_broker_keys_builds_a_redis_key() {
    let offenders = offenders(&["src/broker/keys.rs"], formats_a_key);
    assert!(
        offenders.is_empty(),
        "build keys and channels with broker::Keys / QueueKeys / keys::arq; \
         these files format one by hand: {offenders:?}"
    );
}

#[test]
fn the_library_holds_no_global_state_but_the_named_exceptions() {
    let mut found: Vec<(String, String)> = sources()
        .into_iter()
        .filter(|p| p.starts_with("src"))
        .flat_map(|p| {
            let file = p.to_string_lossy().into_owned();
            statics(&code(&read(&p)))
                .into_iter()
                .map(move |name| (file.clone(), name))
        })
        .collect();
    found.sort();
    let mut allowed: Vec<(String, String)> = STATICS_ALLOWED
        .iter()
        .map(|(f, n)| (f.to_string(), n.to_string()))
        .collect();
    allowed.sort();
    assert_eq!(
        found, allowed,
        "config and shared state are passed explicitly; a new `static` needs a \
         reason in STATICS_ALLOWED"
    );
}

#[test]
fn the_ledgers_objects_live_in_jobrunner_and_the_kinds_outside_it() {
    let mut core = Vec::new();
    for file in files(&["migrations"]) {
        core.extend(created_objects(&read(&file)));
    }
    let mut kinds = Vec::new();
    for file in files(&["kinds/migrations"]) {
        kinds.extend(created_objects(&read(&file)));
    }
    assert!(core.len() >= 10 && kinds.len() >= 4, "{core:?} {kinds:?}");
    let stray: Vec<&String> = core
        .iter()
        .filter(|n| !n.starts_with("jobrunner."))
        .collect();
    assert!(
        stray.is_empty(),
        "the ledger's objects outside `jobrunner`: {stray:?}"
    );
    let intruders: Vec<&String> = kinds
        .iter()
        .filter(|n| n.starts_with("jobrunner."))
        .collect();
    assert!(
        intruders.is_empty(),
        "the kinds' tables belong to the web systems, outside `jobrunner`: {intruders:?}"
    );
}

#[test]
fn only_cli_reads_the_systemd_environment() {
    let reads = |code: &str| code.contains("Notifier::from_env");
    let readers = offenders(&["src/cli", "src/runtime/notify.rs"], reads);
    assert!(
        readers.is_empty(),
        "the library never reads $NOTIFY_SOCKET on its own; these files do: {readers:?}"
    );
    let names = |code: &str| {
        ["\"NOTIFY_SOCKET\"", "\"WATCHDOG_USEC\"", "\"WATCHDOG_PID\""]
            .iter()
            .any(|v| code.contains(v))
    };
    let offenders = offenders(&["src/runtime/notify.rs"], names);
    assert!(
        offenders.is_empty(),
        "only runtime/notify.rs reads systemd's variables: {offenders:?}"
    );
}

#[test]
fn the_ssrf_guard_never_opens_a_connection() {
    let guard = code(&read(Path::new("kinds/src/data_extraction/guard.rs")));
    assert!(guard.contains("lookup_host"), "read the guard");
    let opens = [
        "TcpStream",
        "TcpSocket",
        "UdpSocket",
        "reqwest::Client",
        "ClientBuilder",
        ".connect(",
        ".send(",
    ];
    let found: Vec<&&str> = opens.iter().filter(|o| guard.contains(*o)).collect();
    assert!(
        found.is_empty(),
        "the SSRF guard only answers \"may we\"; it names {found:?}"
    );
}

/// The code map's headings that are no module of the library: the kinds'
/// crate and the binary's modules.
const MAP_BEYOND_THE_LIBRARY: [&str; 3] = ["kinds", "demo", "bench"];

#[test]
fn the_code_map_names_every_module_and_only_modules() {
    let doc = read(Path::new("docs/ARCHITECTURE.md"));
    let map = doc
        .split("\n## Code map")
        .nth(1)
        .and_then(|m| m.split("\n## ").next())
        .expect("docs/ARCHITECTURE.md has a Code map section");
    let headings: Vec<String> = map
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect();
    let modules: Vec<String> = read(Path::new("src/lib.rs"))
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_owned)
        .collect();
    assert!(modules.len() > 10, "{modules:?}");
    let unmapped: Vec<&String> = modules.iter().filter(|m| !headings.contains(m)).collect();
    assert!(
        unmapped.is_empty(),
        "modules of src/lib.rs without a `### `name`` heading in the code map: {unmapped:?}"
    );
    let stray: Vec<&String> = headings
        .iter()
        .filter(|h| !modules.contains(h) && !MAP_BEYOND_THE_LIBRARY.contains(&h.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "code map headings naming no module: {stray:?}"
    );
    // Every file is named on the map: as `file.rs`, as its module (`name`,
    // `name::…`) or, for a `mod.rs`, as its directory (`name/`).
    let unnamed: Vec<PathBuf> = sources()
        .into_iter()
        .filter(|p| !p.ends_with("lib.rs") && !p.ends_with("main.rs"))
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy();
            let module = if file == "mod.rs" {
                p.parent().unwrap().file_name().unwrap().to_string_lossy()
            } else {
                p.file_stem().unwrap().to_string_lossy()
            };
            ![
                format!("{module}.rs"),
                format!("`{module}`"),
                format!("`{module}::"),
                format!("{module}/"),
            ]
            .iter()
            .any(|name| doc.contains(name.as_str()))
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "source files docs/ARCHITECTURE.md does not name: {unnamed:?}"
    );
}

#[test]
fn no_source_file_holds_more_than_400_lines_of_code() {
    let mut over: Vec<(PathBuf, usize)> = sources()
        .into_iter()
        .map(|p| {
            let n = code_lines(&read(&p));
            (p, n)
        })
        .filter(|(_, n)| *n > MAX_CODE_LINES)
        .collect();
    over.sort();
    assert!(
        over.is_empty(),
        "split these files along their concepts: each holds more than \
         {MAX_CODE_LINES} lines before its `#[cfg(test)]` (file, lines): {over:?}"
    );
}

#[test]
fn the_checks_recognise_what_they_forbid() {
    assert_eq!(code_lines("a\n\n// b\n#[cfg(test)]\nmod tests {}\n"), 3);
    assert_eq!(code_lines("a\n    #[cfg(test)]\nb\n"), 3);
    let longest = sources()
        .iter()
        .map(|p| code_lines(&read(p)))
        .max()
        .unwrap();
    assert!(longest > MAX_CODE_LINES / 2, "counted the files: {longest}");
    assert!(uses_sqlx("sqlx::query(\"SELECT 1\")"));
    assert!(uses_sqlx("use sqlx::Row;"));
    assert!(!uses_sqlx(
        "pub db: sqlx::PgPool, m: &[sqlx::migrate::Migration]"
    ));
    assert!(uses_sqlx(&code(&read(Path::new("src/ledger/mod.rs")))));
    assert!(names_blocking_command("client.blmove(src, dst, 5.0)"));
    assert!(names_blocking_command("redis.call('BZPOPMIN', KEYS[1], 0)"));
    assert!(!names_blocking_command(
        "let wait = Duration::ZERO; // WAITING"
    ));
    assert!(formats_a_key("format!(\"{}:{{{queue}}}:\", prefix)"));
    assert!(formats_a_key("format!(\"arq:job:{id}\")"));
    assert!(formats_a_key(&code(&read(Path::new("src/broker/keys.rs")))));
    assert!(!formats_a_key("format!(\"{}: {}\", key, error)"));
    assert_eq!(
        statics("static A: u8 = 1;\n    pub static mut B: u8 = 2;\nlet s: &'static str;"),
        ["A", "B"]
    );
    assert_eq!(
        created_objects(
            "CREATE TABLE public.m (id int);\ncreate or replace function jobrunner.f()"
        ),
        ["public.m", "jobrunner.f"]
    );
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

    let names = KindNames::read();
    for named in [
        "use jobrunner_kinds::registry;",
        "registry.get(\"message-processing\")",
        "mod data_extraction;",
        "sqlx::query(\"DELETE FROM content_posts\")",
        "INSERT INTO public.messages (id) VALUES ($1)",
        "update conversations set unread_count = 0",
    ] {
        assert!(names.named_in(named).is_some(), "{named}");
    }
    for plain in [
        "let messages = Vec::new();",
        "the log messages of a job",
        "a data extraction of sorts",
        "jobrunner_kindsx",
    ] {
        assert_eq!(names.named_in(plain), None, "{plain}");
    }
    // The kinds' own crate and the binary do name them.
    for layer in ["kinds/src/lib.rs", "bin/src/main.rs"] {
        assert!(names.named_in(&read(Path::new(layer))).is_some(), "{layer}");
    }
}

/// TLS everywhere (reqwest, sqlx, fred) is rustls on ring: neither aws-lc (its C
/// build is long and needs cmake) nor OpenSSL is ever compiled. Cargo.lock
/// lists every crate any feature of the build can compile.
#[test]
fn the_build_compiles_neither_aws_lc_nor_openssl() {
    let lock = read(Path::new("Cargo.lock"));
    assert!(lock.contains("name = \"ring\""), "ring is the provider");
    for name in [
        "aws-lc-sys",
        "aws-lc-rs",
        "openssl-sys",
        "openssl",
        "native-tls",
    ] {
        assert!(
            !lock.contains(&format!("name = \"{name}\"\n")),
            "Cargo.lock holds {name}: `cargo tree -i {name}` shows who brings it"
        );
    }
}
