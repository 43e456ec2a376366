//! `jobrunner run`: the daemon under a process supervisor: start, tell systemd it
//! is ready, reload on SIGHUP, drain on SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::ledger::Ledger;
use crate::runtime::Daemon;

/// The daemon: start, tell systemd it is ready, reload on SIGHUP, drain on
/// SIGTERM/SIGINT, exit 0.
pub(super) async fn run_daemon<L: super::Layer>(
    config: Config,
    path: Option<&std::path::Path>,
    migrate: bool,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before anything slow: SIGHUP's default action ends the process, and
    // `systemctl reload` may come early.
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let notifier = crate::runtime::Notifier::from_env();
    if migrate {
        let ledger = Ledger::connect(&config.database).await?;
        let layers = L::migrations();
        ledger
            .migrate(&layers)
            .await
            .context("applying migrations")?;
        tracing::info!(
            version = crate::ledger::schema_version(&layers),
            "Migrations applied"
        );
    }
    crate::arq::check(&config)
        .map_err(|problems| anyhow::anyhow!("invalid [arq] section:\n{problems}"))?;
    let registry = super::registry::<L>(&config);
    let daemon = Daemon::start_notifying(config, registry, notifier.clone()).await?;
    notifier.ready();
    let shutdown = daemon.shutdown_token();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Stop requested; draining (send the signal again to exit at once)");
        shutdown.cancel();
        wait_for_signal().await;
        tracing::warn!("Second stop signal; exiting without draining");
        std::process::exit(130);
    });
    loop {
        tokio::select! {
            _ = hangup.recv() => reload::<L>(&daemon, path, &notifier),
            _ = draining.cancelled() => break,
        }
    }
    daemon.wait().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: read the same file (and environment) again and apply it. A file that
/// does not load is logged and changes nothing; the daemon keeps running.
fn reload<L: super::Layer>(
    daemon: &Daemon,
    path: Option<&std::path::Path>,
    notifier: &crate::runtime::Notifier,
) {
    notifier.reloading();
    match Config::load(path, &super::sections::<L>()) {
        Ok(new) => {
            let origin = new.origin.clone();
            let report = daemon.reload(new);
            tracing::info!(
                config = origin,
                applied = report.applied.len(),
                needs_restart = report.needs_restart.len(),
                "Config reloaded"
            );
        }
        Err(error) => tracing::error!(
            error = %crate::error_chain(&error),
            "Config reload failed; keeping the running config"
        ),
    }
    notifier.ready();
}

/// SIGTERM or SIGINT, whichever comes first: both mean "stop".
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
