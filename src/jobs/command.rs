//! The `command` handler: runs a configured kind as a program, with the payload as
//! JSON on stdin and the result as JSON on stdout, so any script can be a job kind.
//!
//! It owns spawning the program, feeding and draining its pipes, and ending its
//! whole process group. It must never run the program through a shell (an admin who
//! wants one configures `/bin/sh -c`), pass the daemon's own environment (it holds
//! the database URL), or leave a process behind: the program runs in its own
//! process group, and the group is killed when the program exits and when the
//! attempt is dropped (the kind's timeout, shutdown), so grandchildren die too.
//! On Linux the program also gets SIGKILL when the daemon dies without cleaning up
//! (SIGKILL, a crash): see [`Spawner`].

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::http::excerpt;
use super::{Handler, JobContext, JobError, JobResult, Registry};
use crate::config::{CommandKindConfig, KindConfig};

/// The most of stdout kept; longer output is cut and not parsed as JSON.
const MAX_STDOUT: usize = 1024 * 1024;
/// How much of non-JSON stdout the result holds.
const RESULT_EXCERPT: usize = 4096;
/// How much of the end of stderr goes into `last_error` (the end, because that is
/// where programs say why they stopped).
const STDERR_TAIL: usize = 2048;
/// Variables the program inherits from the daemon; everything else it gets is
/// configured (`env`) or describes the job (`JOBRUNNER_*`).
const INHERITED_ENV: [&str; 8] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];

pub(super) fn register(registry: &mut Registry, name: &str, kind: &KindConfig) {
    if let Some(config) = &kind.command {
        registry.register(
            name,
            CommandHandler {
                config: Arc::new(config.clone()),
                spawner: Arc::default(),
            },
        );
    }
}

/// The handler of one configured kind.
#[derive(Clone)]
pub struct CommandHandler {
    config: Arc<CommandKindConfig>,
    /// The thread every program of this kind is forked from, started on first use
    /// (it needs the runtime's handle); see [`Spawner`].
    spawner: Arc<OnceLock<Result<Spawner, String>>>,
}

impl Handler for CommandHandler {
    fn run(&self, ctx: JobContext) -> BoxFuture<'static, JobResult> {
        let config = self.config.clone();
        let spawner = self.spawner.clone();
        Box::pin(async move {
            let spawner = spawner
                .get_or_init(|| Spawner::start(tokio::runtime::Handle::current()))
                .as_ref()
                .map_err(|e| JobError::retryable(e.clone()))?;
            run(&config, spawner, ctx).await
        })
    }
}

type SpawnRequest = (
    tokio::process::Command,
    tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>,
);

/// Forks the programs of one kind from one dedicated, long-lived thread.
///
/// Linux's parent-death signal (`PR_SET_PDEATHSIG`, set in the child before it
/// runs the program) is sent when the *thread* that forked the child exits, not
/// the process. Forked from a tokio worker or blocking thread, a program would be
/// killed whenever the runtime retires that thread (idle blocking threads exit
/// after 10 s). This thread lives as long as the handler, which lives as long as
/// the daemon, so the signal comes only when the daemon itself is gone. When the
/// handler is dropped the thread ends too, but by then every attempt has ended and
/// its program was killed with it.
struct Spawner {
    requests: std::sync::mpsc::Sender<SpawnRequest>,
}

impl Spawner {
    fn start(runtime: tokio::runtime::Handle) -> Result<Spawner, String> {
        let (requests, incoming) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("jobrunner-spawn".into())
            .spawn(move || {
                // Pipes and the child's exit are registered with this runtime.
                let _entered = runtime.enter();
                while let Ok((mut command, reply)) = incoming.recv() {
                    let _ = reply.send(command.spawn());
                }
            })
            .map_err(|e| format!("cannot start the thread that runs programs: {e}"))?;
        Ok(Spawner { requests })
    }

    async fn spawn(
        &self,
        mut command: tokio::process::Command,
    ) -> std::io::Result<tokio::process::Child> {
        set_parent_death_signal(&mut command);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || std::io::Error::other("the thread that runs programs has stopped");
        self.requests.send((command, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Makes the child get SIGKILL when the daemon dies (Linux only; elsewhere the
/// unit's `KillMode` is the only net).
#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut tokio::process::Command) {
    let daemon = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (prctl, getppid), without allocating: the
    // error is built from a raw errno.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The daemon may have died between fork and prctl: then the signal
            // never comes, so give up now rather than run an orphan.
            if rustix::process::getppid() != Some(daemon) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_command: &mut tokio::process::Command) {}

async fn run(config: &CommandKindConfig, spawner: &Spawner, ctx: JobContext) -> JobResult {
    let program = &config.program;
    let input = serde_json::to_vec(&ctx.payload)
        .map_err(|e| JobError::permanent(format!("cannot serialise the payload: {e}")))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(&config.args)
        .env_clear()
        .envs(
            INHERITED_ENV
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .envs(config.env.iter().map(|(k, v)| (k, v.expose())))
        .env("JOBRUNNER_JOB_ID", ctx.id.to_string())
        .env("JOBRUNNER_ATTEMPT", ctx.attempt.to_string())
        .env("JOBRUNNER_KIND", &ctx.kind)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A new group whose id is the child's pid, so one kill reaches everything
        // the program starts.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &config.working_dir {
        command.current_dir(dir);
    }
    let mut child = spawner
        .spawn(command)
        .await
        .map_err(|e| spawn_error(program, e))?;
    // Declared after `child`, so it is dropped first: the group dies even if the
    // attempt is dropped while the program runs.
    let mut group = ProcessGroup(child.id());
    tracing::debug!(pid = child.id(), program = %program, "Program started");

    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A program that exits without reading its input is not an error of ours.
            let _ = stdin.write_all(&input).await;
        } // Dropping stdin closes it: the program sees end of input.
    };
    let exit = async {
        let status = child.wait().await;
        // Whatever the program left running in its group is ended with it; this
        // also closes the pipes a background grandchild would hold open.
        group.kill();
        status
    };
    let ((), (out, out_cut), err, status) = tokio::join!(
        feed,
        read_head(stdout, MAX_STDOUT),
        read_tail(stderr, STDERR_TAIL),
        exit
    );
    let status =
        status.map_err(|e| JobError::retryable(format!("waiting for `{program}`: {e}")))?;

    if status.success() {
        return Ok(match serde_json::from_slice::<Value>(&out) {
            Ok(mut value) if !out_cut => {
                // JSON may spell U+0000 as `\u0000`; the result is `jsonb`.
                crate::pgtext::safe_json(&mut value);
                value
            }
            _ => json!({"stdout": excerpt(&out, RESULT_EXCERPT)}),
        });
    }
    let said = excerpt(&err, STDERR_TAIL);
    let said = match said.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    };
    match status.code() {
        Some(code) if config.dead_exit_codes.contains(&code) => Err(JobError::permanent(format!(
            "`{program}` exited with code {code}{said}"
        ))),
        Some(code) => Err(JobError::retryable(format!(
            "`{program}` exited with code {code}{said}"
        ))),
        None => Err(JobError::retryable(format!(
            "`{program}` was killed by signal {}{said}",
            status.signal().unwrap_or(0)
        ))),
    }
}

/// A missing or non-executable program will not appear by retrying; running out
/// of processes or file descriptors may pass.
fn spawn_error(program: &str, error: std::io::Error) -> JobError {
    let message = format!("cannot start `{program}`: {error}");
    match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            JobError::permanent(message)
        }
        _ => JobError::retryable(message),
    }
}

/// The program's process group; killed (SIGKILL to every member) on [`kill`] or
/// drop, whichever comes first, and only once: after that the group id may belong
/// to someone else.
///
/// [`kill`]: ProcessGroup::kill
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&mut self) {
        let Some(id) = self.0.take() else {
            return;
        };
        // Pid 1 as a group means "every process we may signal"; a child is never 1,
        // but the guard keeps a bug from becoming a disaster.
        let Some(pid) = i32::try_from(id)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return;
        };
        if pid == rustix::process::Pid::INIT {
            return;
        }
        match rustix::process::kill_process_group(pid, rustix::process::Signal::KILL) {
            // ESRCH: the group is already empty, the common case after a clean exit.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(error) => {
                tracing::warn!(pgid = id, %error, "Cannot kill the program's process group")
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe to its end, keeping the first `cap` bytes (the rest is drained so
/// the program never blocks on a full pipe). Returns the bytes and whether it was cut.
async fn read_head(pipe: Option<impl AsyncRead + Unpin>, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut cut = false;
    let Some(mut pipe) = pipe else {
        return (kept, cut);
    };
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        let room = cap - kept.len();
        kept.extend_from_slice(&buf[..n.min(room)]);
        cut |= n > room;
    }
    (kept, cut)
}

/// Reads a pipe to its end, keeping the last `keep` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * keep {
            kept.drain(..kept.len() - keep);
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_head_keeps_the_start_and_says_it_cut() {
        let data = vec![b'x'; 100];
        assert_eq!(read_head(Some(&data[..]), 10).await, (vec![b'x'; 10], true));
        assert_eq!(read_head(Some(&data[..]), 100).await, (data.clone(), false));
    }

    #[tokio::test]
    async fn read_tail_keeps_the_end() {
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(
            read_tail(Some(&data[..]), 4).await,
            vec![252, 253, 254, 255]
        );
    }

    #[test]
    fn a_missing_program_is_permanent() {
        let err = spawn_error("/nope", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(matches!(err, JobError::Permanent { .. }), "{err:?}");
    }
}
