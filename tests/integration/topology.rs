//! Throwaway Redis topologies for the integration tests: a Redis Cluster of
//! three masters and three replicas, and a Sentinel set (one master, one
//! replica, three sentinels), each on free ports on 127.0.0.1 in its own
//! temporary directory, under the same supervisors and janitor as
//! [`harness::Redis`](crate::harness::Redis), so nothing outlives the test
//! process. Administration goes through `redis-cli`, as an operator's would.
//!
//! A cluster takes about two seconds to form here, so the tests that leave it
//! as they found it share one ([`shared_cluster`]); a test that kills a node
//! starts its own.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::harness::{
    Janitor, Supervised, await_ready, file_len, free_port, ping, redis_bin, signal_pid,
};

/// How long a cluster or sentinel set may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// One `redis-server` of a topology.
pub struct Node {
    pub port: u16,
    log: PathBuf,
    args: Vec<OsString>,
    server: Option<Supervised>,
}

impl Node {
    fn launch(janitor: &Janitor, dir: &Path, name: &str, port: u16, args: Vec<OsString>) -> Node {
        let log = dir.join(format!("{name}.log"));
        File::create(&log).expect("harness: cannot create a node log");
        let mut node = Node {
            port,
            log,
            args,
            server: None,
        };
        node.start(janitor, dir);
        node
    }

    fn start(&mut self, janitor: &Janitor, dir: &Path) {
        let offset = file_len(&self.log);
        let server = Supervised::spawn(
            janitor,
            false,
            dir,
            &self.log,
            "KILL",
            redis_bin(),
            &self.args,
        )
        .unwrap_or_else(|e| panic!("harness: cannot start redis on {}: {e}", self.port));
        let port = self.port;
        // A sentinel logs no "Ready to accept connections"; it answers PING.
        let sentinel = self.args.iter().any(|a| a == "--sentinel");
        let ready = move |log: &str| {
            (sentinel || log.contains("Ready to accept connections")) && ping(port)
        };
        let server = await_ready(
            server,
            "redis-server",
            "KILL",
            &self.log,
            offset,
            FORM_TIMEOUT,
            ready,
        )
        .unwrap_or_else(|e| panic!("harness: redis on {port}: {}", e.message));
        self.server = Some(server);
    }

    /// SIGKILL: the node is gone at once, with whatever it had not replicated.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop("KILL");
        }
    }

    /// SIGSTOP: the node keeps its sockets open and answers nothing, as a
    /// host that hangs or a stalled VM would.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`pause`](Node::pause).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let server = self.server.as_ref().expect("harness: the node is running");
        signal_pid(server.pid, signal);
    }
}

/// Runs `redis-cli -p PORT args…` and returns its output (trimmed).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("harness: cannot run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls `check` every 50 ms until it holds, or panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "harness: {what} after {timeout:?}"
        );
        sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster: three masters with one replica each.
pub struct Cluster {
    pub nodes: Vec<Node>,
    janitor: Janitor,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create
    /// --cluster-replicas 1` and waits until every node says `cluster_state:ok`.
    /// A master is failed over 1 s after it stops answering (`cluster-node-timeout`).
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("jobrunner-test-cluster-")
            .tempdir()
            .expect("harness: cannot create a temporary directory for the cluster");
        let janitor = Janitor::spawn(dir.path());
        let mut nodes = Vec::new();
        for i in 0..6 {
            let (port, bus) = (free_port(), free_port());
            let args: Vec<OsString> = [
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{i}.conf"),
                "--cluster-node-timeout",
                "1000",
                // The masters still up keep serving their slots while one is down.
                "--cluster-require-full-coverage",
                "no",
                // Replicas sync at once, not after the default 5 s wait.
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.path().to_str().expect("utf-8 temp dir"),
            ]
            .iter()
            .map(OsString::from)
            .collect();
            nodes.push(Node::launch(
                &janitor,
                dir.path(),
                &format!("node-{i}"),
                port,
                args,
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("harness: cannot run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "harness: redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            nodes,
            janitor,
            dir,
        };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees that
    /// three masters hold the slots.
    /// A replica that never finished its first sync cannot take over, so this
    /// also waits for every replica's link to its master.
    pub fn wait_ok(&self) {
        wait_until("the cluster is not ok", FORM_TIMEOUT, || {
            self.nodes.iter().filter(|n| n.server.is_some()).all(|n| {
                let replication = cli(n.port, &["info", "replication"]);
                cli(n.port, &["cluster", "info"]).contains("cluster_state:ok")
                    && self.masters_seen_by(n.port).len() == 3
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            })
        });
    }

    /// `redis-cluster://…` naming every node as a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }

    /// The ports of the masters holding slots, as node `port` sees them.
    fn masters_seen_by(&self, port: u16) -> Vec<u16> {
        let mut masters: Vec<u16> = cli(port, &["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .filter_map(|l| l.split(' ').nth(1)?.split(['@', ':']).nth(1)?.parse().ok())
            .collect();
        masters.sort_unstable();
        masters
    }

    /// A node that is running, to ask about the cluster.
    fn any_running(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.server.is_some())
            .expect("a running node")
            .port
    }

    /// The port of the master that holds `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        self.serving(key)
            .unwrap_or_else(|| panic!("harness: no master serves the slot of {key}"))
    }

    /// The port of the master that holds `key`'s slot and is not marked failed,
    /// if one does (none while a failover is under way).
    pub fn serving(&self, key: &str) -> Option<u16> {
        let port = self.any_running();
        let slot: u16 = cli(port, &["cluster", "keyslot", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        for line in cli(port, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !fields.get(2).is_some_and(|f| f.contains("master")) || fields[2].contains("fail") {
                continue;
            }
            let holds = fields.iter().skip(8).any(|range| {
                let mut ends = range.splitn(2, '-').filter_map(|n| n.parse::<u16>().ok());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if holds {
                return fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok());
            }
        }
        None
    }

    /// One queue name per master, `prefix`ed: queue keys are `jr:{queue}:…`, so
    /// the slot is the queue name's.
    pub fn queue_per_master(&self, prefix: &str) -> Vec<String> {
        let mut found: Vec<(u16, String)> = Vec::new();
        for i in 0.. {
            let name = format!("{prefix}{i}");
            let master = self.master_of(&name);
            if !found.iter().any(|(m, _)| *m == master) {
                found.push((master, name));
            }
            if found.len() == 3 {
                break;
            }
        }
        found.into_iter().map(|(_, q)| q).collect()
    }

    /// What a running node says of the cluster, for failure messages.
    pub fn describe(&self) -> String {
        let mut text = cli(self.any_running(), &["cluster", "nodes"]);
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!("\n--- {} ---\n", n.port));
            text.push_str(&lines[lines.len().saturating_sub(12)..].join("\n"));
        }
        text
    }

    /// Forbids the replica of master `port` to take over by itself (a manual
    /// `CLUSTER FAILOVER` still works), and returns the replica's port.
    pub fn forbid_failover_of(&self, port: u16) -> u16 {
        let replica = self
            .nodes
            .iter()
            .map(|n| n.port)
            .find(|p| {
                let role = cli(*p, &["role"]);
                let lines: Vec<&str> = role.lines().collect();
                lines.first() == Some(&"slave") && lines.get(2) == Some(&port.to_string().as_str())
            })
            .expect("harness: the master's replica");
        let set = cli(
            replica,
            &["config", "set", "cluster-replica-no-failover", "yes"],
        );
        assert_eq!(set, "OK", "harness: cannot forbid the failover of {port}");
        replica
    }

    pub fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    pub fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// The temporary directory holding the nodes' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        self.janitor.finish();
    }
}

/// The cluster the tests that do not change its shape share.
pub fn shared_cluster() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(Cluster::start)
}

/// A master, its replica and three sentinels watching it as `jobs`, which fail
/// it over 1 s after it stops answering.
pub struct Sentinels {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    janitor: Janitor,
    dir: tempfile::TempDir,
}

pub const SENTINEL_SERVICE: &str = "jobs";

impl Sentinels {
    pub fn start() -> Sentinels {
        let dir = tempfile::Builder::new()
            .prefix("jobrunner-test-sentinel-")
            .tempdir()
            .expect("harness: cannot create a temporary directory for Sentinel");
        let janitor = Janitor::spawn(dir.path());
        let path = dir.path().to_str().expect("utf-8 temp dir").to_owned();
        let server = |port: u16, extra: &[&str]| -> Vec<OsString> {
            let mut args: Vec<OsString> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &path,
            ]
            .iter()
            .map(OsString::from)
            .collect();
            args.extend(extra.iter().map(OsString::from));
            args
        };
        let (mp, rp) = (free_port(), free_port());
        let master = Node::launch(&janitor, dir.path(), "master", mp, server(mp, &[]));
        let replicaof = format!("127.0.0.1 {mp}");
        let replica = Node::launch(
            &janitor,
            dir.path(),
            "replica",
            rp,
            server(rp, &["--replicaof", &replicaof]),
        );
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {path}\n\
                     sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {mp} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
                ),
            )
            .expect("harness: cannot write a sentinel config");
            let args = vec![OsString::from(&conf), OsString::from("--sentinel")];
            sentinels.push(Node::launch(
                &janitor,
                dir.path(),
                &format!("sentinel-{i}"),
                port,
                args,
            ));
        }
        let set = Sentinels {
            master,
            replica,
            sentinels,
            janitor,
            dir,
        };
        // A failover needs the replica in sync and every sentinel aware of the
        // replica and of the two other sentinels.
        wait_until("the replica is not in sync", FORM_TIMEOUT, || {
            cli(rp, &["info", "replication"]).contains("master_link_status:up")
        });
        wait_until("the sentinels have not met", FORM_TIMEOUT, || {
            set.sentinels.iter().all(|s| {
                let master = cli(s.port, &["sentinel", "master", SENTINEL_SERVICE]);
                let known = |field: &str| {
                    let mut lines = master.lines();
                    while let Some(l) = lines.next() {
                        if l == field {
                            return lines
                                .next()
                                .and_then(|v| v.parse::<u32>().ok())
                                .unwrap_or(0);
                        }
                    }
                    0
                };
                known("num-slaves") == 1 && known("num-other-sentinels") == 2
            })
        });
        set
    }

    /// `redis-sentinel://…` naming the three sentinels and the service.
    pub fn url(&self) -> String {
        let mut url = format!("redis-sentinel://127.0.0.1:{}/0?", self.sentinels[0].port);
        for s in &self.sentinels[1..] {
            url.push_str(&format!("node=127.0.0.1:{}&", s.port));
        }
        url.push_str(&format!("sentinelServiceName={SENTINEL_SERVICE}"));
        url
    }

    /// The port of the master the sentinels name now.
    pub fn current_master(&self) -> Option<u16> {
        let reply = cli(
            self.sentinels[0].port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE],
        );
        reply.lines().nth(1)?.parse().ok()
    }

    /// The temporary directory holding the nodes' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for n in self
            .sentinels
            .iter_mut()
            .chain([&mut self.master, &mut self.replica])
        {
            n.kill();
        }
        self.janitor.finish();
    }
}
