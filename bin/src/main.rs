//! The `jobrunner` binary: parse the command line, run it, map the outcome to an
//! exit code. The core lives in the `jobrunner` library; the binary adds the
//! layers above it to the core's command line through `cli::Layer`: the business
//! kinds (`jobrunner-kinds`: their handlers, config sections and migrations), the
//! demo (`demo/`) and the benchmark (`bench/`).

mod bench;
mod demo;

use std::path::PathBuf;

use std::process::ExitCode;

use jobrunner::config::{Claim, Config};
use jobrunner::jobs::Registry;
use sqlx::migrate::Migration;

/// jemalloc, not the C library's allocator: a job's allocations (its task, its
/// batches' buffers) cost the daemon a fifth to a quarter less CPU per job with it
/// (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (the `MALLOC_CONF` of this build's
/// prefixed jemalloc; `_RJEM_MALLOC_CONF` in the environment overrides them).
/// One arena: by default jemalloc keeps four per CPU, and the daemon's few
/// threads then hold 5 MB more at their peak; with one it holds what the C
/// library's allocator did, and is as fast as with four.
#[unsafe(export_name = "_rjem_malloc_conf")]
static ALLOCATOR_OPTIONS: AllocatorOptions = AllocatorOptions(c"narenas:1".as_ptr());

/// A C string jemalloc reads at start, never written.
#[repr(transparent)]
struct AllocatorOptions(*const std::ffi::c_char);

// SAFETY: the pointer is to a static C string, only ever read.
unsafe impl Sync for AllocatorOptions {}

/// The commands the binary adds to the core's.
#[derive(Debug, clap::Subcommand)]
enum Layers {
    /// Set up, enqueue demo jobs of the built-in kinds, run them and show their status.
    Demo {
        /// Where the in-process daemon's log goes (default: jobrunner-demo.log in the
        /// temporary directory); the demo names it, and shows its end when something fails.
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
    },
    /// Measure enqueue rate, end-to-end throughput, pickup latency and memory.
    Bench(bench::BenchArgs),
}

impl jobrunner::cli::Layer for Layers {
    fn log_file(&self) -> Option<PathBuf> {
        match self {
            Layers::Demo { log_file } => Some(
                log_file
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("jobrunner-demo.log")),
            ),
            Layers::Bench(_) => None,
        }
    }

    async fn run(self, config: Config) -> anyhow::Result<ExitCode> {
        match self {
            Layers::Demo { .. } => {
                let log = self.log_file().unwrap_or_default();
                demo::run(config, log).await
            }
            Layers::Bench(args) => bench::run(config, args).await,
        }
    }

    fn sections() -> Vec<Claim> {
        jobrunner_kinds::sections()
    }

    fn register(config: &Config, registry: &mut Registry) {
        jobrunner_kinds::register(config, registry);
    }

    fn migrations() -> Vec<Migration> {
        jobrunner_kinds::migrations()
    }
}

fn main() -> ExitCode {
    let cli = jobrunner::cli::parse::<Layers>();
    if !matches!(
        cli.command,
        jobrunner::cli::Command::Run { .. } | jobrunner::cli::Command::Layer(_)
    ) {
        print_until_the_reader_leaves();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("jobrunner: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(jobrunner::cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("jobrunner: {}", jobrunner::error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A command that only prints ends quietly when its reader goes away
/// (`jobrunner jobs | head`), as Unix tools do: Rust ignores SIGPIPE, so without
/// this the next `println!` panics. The daemon (`run`) and the commands that run
/// one (demo, bench) keep ignoring it: a closed socket must be an error they
/// handle, never a signal that kills them.
fn print_until_the_reader_leaves() {
    // SAFETY: called before any thread starts; restores the default disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_binarys_commands_have_help_for_every_argument_and_the_environment_notes() {
        let mut command = jobrunner::cli::command::<super::Layers>();
        command.build();
        for name in ["demo", "bench"] {
            let sub = command
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("{name} is on the command line"));
            let missing: Vec<String> = sub
                .get_arguments()
                .filter(|a| !matches!(a.get_id().as_str(), "help" | "version" | "config"))
                .filter(|a| a.get_help().is_none() && a.get_long_help().is_none())
                .map(|a| a.get_id().to_string())
                .collect();
            assert!(missing.is_empty(), "{name}: no help text: {missing:?}");
            let notes = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                notes.contains("JOBRUNNER_CONFIG"),
                "{name}: after help: {notes}"
            );
        }
    }
}
