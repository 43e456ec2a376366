//! The `jobrunner` binary: parse the command line, run it, map the outcome to an
//! exit code. Everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = jobrunner::cli::parse();
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
