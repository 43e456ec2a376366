//! The benchmark (placeholder while the core lands).

use std::process::ExitCode;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// How many no-op jobs to push through each path.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
}

pub async fn run(_config: Config, _args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
