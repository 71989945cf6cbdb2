//! Scaling out: HAProxy run from the shipped `deploy/haproxy/haproxy.cfg` in front of
//! ringcache nodes on loopback (tests/scaleout.rs and bench/scaleout.rs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{eventually, http, Proc};

pub const SHIPPED: &str = "deploy/haproxy/haproxy.cfg";
const WITHIN: Duration = Duration::from_secs(30);

/// The shipped HAProxy config made to run here, as `scripts/cluster.sh` does: what needs root
/// (chroot, user, the admin socket, syslog; maxconn, which needs a raised open-files limit) dropped, the bind on loopback, the node lines
/// replaced (each with its debug port for the health check), and a stats page.
pub fn haproxy_config(
    front: SocketAddr,
    stats: SocketAddr,
    nodes: &[(SocketAddr, SocketAddr)],
) -> String {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED)).unwrap();
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        let dropped = [
            "chroot",
            "user ",
            "group ",
            "stats socket",
            "log /dev/log",
            "maxconn",
            "server node",
        ];
        if dropped.iter().any(|d| t.starts_with(d)) {
            continue;
        }
        if t == "bind :5000" {
            out.push_str(&format!("    bind {front}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (i, (addr, dbg)) in nodes.iter().enumerate() {
        out.push_str(&format!(
            "    server node{} {addr} port {}\n",
            i + 1,
            dbg.port()
        ));
    }
    out.push_str(&format!(
        "frontend stats\n    bind {stats}\n    stats enable\n    stats uri /\n"
    ));
    out
}

pub struct Haproxy {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub stats: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(nodes: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        super::require("haproxy");
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let stats: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(addr, stats, nodes)).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg);
        let proc = Proc::spawn(cmd);
        let opened = std::panic::catch_unwind(|| super::wait_port(addr));
        assert!(
            opened.is_ok(),
            "HAProxy did not start: {}",
            proc.log.lock().unwrap()
        );
        let h = Haproxy {
            proc,
            addr,
            stats,
            _dir: dir,
        };
        h.wait_state("UP", &["node1", "node2", "node3"][..nodes.len()]);
        h
    }

    /// Each node's state as HAProxy's stats page says (UP, DOWN, ...).
    pub fn states(&self) -> HashMap<String, String> {
        let csv = http::get(self.stats, "/;csv").text();
        csv.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.first() == Some(&"ringcache") && f.get(1)?.starts_with("node"))
                    .then(|| (f[1].to_string(), f.get(17).unwrap_or(&"").to_string()))
            })
            .collect()
    }

    pub fn wait_state(&self, state: &str, nodes: &[&str]) {
        let what = format!("HAProxy sees {nodes:?} {state}");
        eventually(WITHIN, &what, || {
            let s = self.states();
            nodes
                .iter()
                .all(|n| s.get(*n).is_some_and(|v| v.starts_with(state)))
                .then_some(())
        })
    }
}
