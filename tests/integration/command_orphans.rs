//! A `command` job's program dies with a daemon that was SIGKILLed (no drain, no
//! cleanup): the parent-death signal, not systemd's `KillMode`, ends it.

use std::time::Duration;

use jobrunner::config::{HandlerName, KindConfig};
use serde_json::json;

use crate::helpers::{sh_command, spawn_app};
use jobrunner::ledger::Status;

/// Whether the process is gone (or a zombie nobody reaped yet: it runs no more).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_daemons_running_program_dies_with_it() {
    let mut app = spawn_app().await;
    let pid_file = app.dir.path().join("child.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    app.config.kinds.insert(
        "orphan".into(),
        KindConfig {
            handler: Some(HandlerName::Command),
            command: Some(sh_command(&script)),
            ..KindConfig::default()
        },
    );
    let mut daemon = app.spawn_daemon(&app.config);
    let id = app.enqueue("orphan", json!({})).await;
    app.wait_until(id, 15, "running", |j| j.status == Status::Running)
        .await;
    let mut pid = None;
    for _ in 0..250 {
        if let Some(p) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            pid = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = pid.expect("the program wrote its pid");
    assert!(!gone(pid), "the program runs while the daemon does");
    // Long enough for an idle tokio blocking thread to have come and gone would be
    // 10 s; the program must survive the daemon's own thread churn meanwhile, so
    // check it again after a moment before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!gone(pid), "the program survives while the daemon lives");

    daemon.signal("KILL");
    daemon.wait_exit(5).expect("SIGKILL ends the daemon");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !gone(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alive = !gone(pid);
    if alive {
        // Do not leave it behind for the rest of the suite.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(
        !alive,
        "the program (pid {pid}) outlived its SIGKILLed daemon by 2 s"
    );
}
