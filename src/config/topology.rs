//! Which Redis deployment `redis.url` names: one server, a Cluster or a server
//! behind Sentinel, each with or without TLS, in fred's own URL forms. The
//! topology is read from the scheme alone, so it composes with whatever TLS
//! settings the URL or the config add: `rediss-cluster://` is a cluster over TLS.
//!
//! ```text
//! redis://host:6379/0                                          one server
//! redis-cluster://host:7000?node=host:7001&node=host:7002      a cluster (seed nodes)
//! redis-sentinel://host:26379/0?node=host:26380&sentinelServiceName=NAME
//! ```
//!
//! The pool, reconnect and timeout settings of `[redis]` apply to every one.

use serde::Serialize;

/// How the daemon reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologyKind {
    /// One server (`redis://`, `rediss://`).
    Standalone,
    /// A Redis Cluster: the URL's hosts are seed nodes; the client follows the
    /// slot map and its changes (`redis-cluster://`, `rediss-cluster://`).
    Cluster,
    /// A primary found through Sentinel: the URL's hosts are sentinels
    /// (`redis-sentinel://`, `rediss-sentinel://`).
    Sentinel,
}

/// What `jobrunner config` shows about `redis.url` (no credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisTopology {
    pub kind: TopologyKind,
    pub tls: bool,
    /// The hosts the URL names: the server, the cluster's seed nodes or the
    /// sentinels, as `host:port`.
    pub nodes: Vec<String>,
    /// The Sentinel service (master) name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// The schemes `redis.url` may use, and what each means.
const SCHEMES: [(&str, TopologyKind, bool); 6] = [
    ("redis", TopologyKind::Standalone, false),
    ("rediss", TopologyKind::Standalone, true),
    ("redis-cluster", TopologyKind::Cluster, false),
    ("rediss-cluster", TopologyKind::Cluster, true),
    ("redis-sentinel", TopologyKind::Sentinel, false),
    ("rediss-sentinel", TopologyKind::Sentinel, true),
];

impl RedisTopology {
    /// Reads the topology of a Redis URL and checks what the client will need of
    /// it (a host, ports on the other nodes, a Sentinel's service name), so a bad
    /// URL is a config error at load rather than a connection error later. The
    /// reason names what is wrong, never the URL's password.
    pub fn of_url(url: &str) -> Result<RedisTopology, String> {
        let schemes = || {
            SCHEMES
                .iter()
                .map(|(s, ..)| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let parsed =
            url::Url::parse(url).map_err(|e| format!("is not a URL ({e}); use {}", schemes()))?;
        let Some(&(_, kind, tls)) = SCHEMES.iter().find(|(s, ..)| *s == parsed.scheme()) else {
            return Err(format!(
                "scheme {}:// is not one jobrunner knows; use {}",
                parsed.scheme(),
                schemes()
            ));
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("names no host".into());
        }
        let default_port = match kind {
            TopologyKind::Sentinel => 26379,
            _ => 6379,
        };
        let mut nodes = vec![format!(
            "{}:{}",
            parsed.host_str().unwrap_or_default(),
            parsed.port().unwrap_or(default_port)
        )];
        let mut service = None;
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "node" if kind != TopologyKind::Standalone => {
                    if !value.contains(':') {
                        return Err(format!("node {value} needs a port (host:port)"));
                    }
                    nodes.push(value.into_owned())
                }
                "sentinelServiceName" if kind == TopologyKind::Sentinel => {
                    service = Some(value.into_owned())
                }
                _ => {}
            }
        }
        if kind == TopologyKind::Sentinel && service.is_none() {
            return Err(
                "a Sentinel URL needs the master's name: add ?sentinelServiceName=NAME".into(),
            );
        }
        Ok(RedisTopology {
            kind,
            tls,
            nodes,
            service,
        })
    }
}

impl std::fmt::Display for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = if self.tls { "TLS" } else { "no TLS" };
        let nodes = self.nodes.join(", ");
        match self.kind {
            TopologyKind::Standalone => write!(f, "standalone server {nodes}, {tls}"),
            TopologyKind::Cluster => write!(f, "cluster, seed nodes {nodes}, {tls}"),
            TopologyKind::Sentinel => write!(
                f,
                "sentinel, service {}, sentinels {nodes}, {tls}",
                self.service.as_deref().unwrap_or("?")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_names_its_topology_and_the_nodes_are_listed() {
        let t = RedisTopology::of_url("redis://127.0.0.1:6380/0").unwrap();
        assert_eq!((t.kind, t.tls), (TopologyKind::Standalone, false));
        assert_eq!(t.nodes, ["127.0.0.1:6380"]);
        let t = RedisTopology::of_url("redis-cluster://u:secret@a:7000?node=b:7001&node=c:7002")
            .unwrap();
        assert_eq!((t.kind, t.tls), (TopologyKind::Cluster, false));
        assert_eq!(t.nodes, ["a:7000", "b:7001", "c:7002"]);
        assert_eq!(
            t.to_string(),
            "cluster, seed nodes a:7000, b:7001, c:7002, no TLS"
        );
        let t = RedisTopology::of_url(
            "redis-sentinel://a:26379/0?node=b:26380&sentinelServiceName=jobs",
        )
        .unwrap();
        assert_eq!(t.kind, TopologyKind::Sentinel);
        assert_eq!(t.service.as_deref(), Some("jobs"));
        assert_eq!(t.nodes, ["a:26379", "b:26380"]);
    }

    #[test]
    fn an_unknown_scheme_or_a_sentinel_without_its_service_is_refused() {
        let e = RedisTopology::of_url("http://a:1").unwrap_err();
        assert!(e.contains("redis-cluster://"), "{e}");
        let e = RedisTopology::of_url("redis-sentinel://a:26379/0").unwrap_err();
        assert!(e.contains("sentinelServiceName"), "{e}");
        let e = RedisTopology::of_url("redis-cluster://u:hunter2@:7000").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
