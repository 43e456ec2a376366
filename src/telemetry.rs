//! Logging set-up: `tracing` with an `EnvFilter`, pretty or JSON lines on stderr
//! (or, for the demo, in a file).
//! `RUST_LOG` overrides the configured level.
//!
//! The filter sits in a `reload` layer so a SIGHUP can change `log.level` without
//! a restart ([`set_level`]). The subscriber is process-wide by nature, so its
//! reload handle is kept beside it in a `OnceLock`, not passed around.
//!
//! In JSON mode each line carries the current span (`span`) and every enclosing
//! span (`spans`), so a line logged inside a job has `job.id`, `job.kind`,
//! `job.queue` and `job.attempt` even when a handler opens spans of its own.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// The installed filter's reload handle, and whether `RUST_LOG` chose the filter.
static FILTER: OnceLock<(reload::Handle<EnvFilter, Registry>, bool)> = OnceLock::new();

/// Installs the global subscriber once, writing to stderr; later calls (tests)
/// are ignored.
pub fn init(config: &LogConfig) {
    // Colours only for a person at a terminal, not for files or the journal.
    install(config, std::io::stderr, std::io::stderr().is_terminal());
}

/// Like [`init`], but every line goes to `file` (the demo keeps its daemon's log
/// out of the way of the table it prints).
pub fn init_to_file(config: &LogConfig, file: std::fs::File) {
    install(config, std::sync::Mutex::new(file), false);
}

fn install<W>(config: &LogConfig, writer: W, ansi: bool)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_override = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let lines = match config.format {
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
        LogFormat::Pretty => lines.compact().boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set((handle, env_override));
    }
}

/// Why a new `log.level` cannot take effect, if it cannot.
pub fn level_fixed() -> Option<&'static str> {
    match FILTER.get() {
        Some((_, true)) => Some("RUST_LOG is set and overrides log.level"),
        _ => None,
    }
}

/// Replaces the filter with `level` (already validated by `Config::validate`).
/// A no-op when jobrunner did not install the subscriber (library use, tests) or
/// `RUST_LOG` chose the filter.
pub fn set_level(level: &str) -> Result<(), String> {
    let Some((handle, false)) = FILTER.get() else {
        return Ok(());
    };
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())
}
