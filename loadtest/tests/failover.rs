//! `parley-loadtest failover` against a small real cluster: three `parley` processes on
//! 127.0.0.51..53 sharing one CQL keyspace, killed (-9) and restarted by the tool itself through
//! their pidfiles and start commands, exactly as a user would run it.
//!
//! A cluster needs the CQL store, so this follows node/tests/cluster: without `PARLEY_TEST_CQL`
//! (e.g. `127.0.0.1:9042`, `scripts/cassandra.sh start`) the test prints NOT RUN and passes,
//! except under `CI`, where it fails. The `parley` binary is `PARLEY_BIN` or the one cargo built
//! beside this test (`cargo test --workspace` builds it; `cargo build -p parley-node` does too).
//! The keyspace (named like the cluster tests' ones, so that they sweep it if this run is
//! killed) is dropped at the end, and every node of the run is killed, passed or failed.
//!
//! It asserts what the guarantees promise (nothing lost, no seq pushed twice or out of order
//! within a session, no seq given to two messages, no message stored twice) and never a timing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const TEST: &str = "failover_scenario_against_a_real_cluster";
const IPS: [&str; 3] = ["127.0.0.51", "127.0.0.52", "127.0.0.53"];

/// Says why the test does not run (stderr, which libtest does not capture).
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{TEST}: {msg}");
}

fn cql_target() -> Option<String> {
    if let Ok(t) = std::env::var("PARLEY_TEST_CQL") {
        if !t.trim().is_empty() {
            return Some(t.trim().to_string());
        }
    }
    let ci = std::env::var("CI").unwrap_or_default();
    if !ci.is_empty() && ci != "0" && !ci.eq_ignore_ascii_case("false") {
        panic!(
            "{TEST}: CI is set but PARLEY_TEST_CQL is not, so this cluster test would test \
             nothing (scripts/test-all starts Cassandra and sets it)"
        );
    }
    note("PARLEY_TEST_CQL is not set; NOT RUN (nothing was tested)");
    None
}

/// `PARLEY_BIN`, or `parley` in the directory above this test executable's `deps/`.
fn parley_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PARLEY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("parley");
    assert!(
        bin.is_file(),
        "{TEST}: no parley binary at {} (cargo build -p parley-node, or set PARLEY_BIN)",
        bin.display()
    );
    bin
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// `GET path` on `addr`: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let sa: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Drops a keyspace over the CQL native protocol (v4): STARTUP, then one QUERY.
fn drop_keyspace(target: &str, ks: &str) -> Result<(), String> {
    let addr: SocketAddr = target
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .map_err(|e| format!("{target}: {e}"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let string = |v: &str| {
        let mut b = (v.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(v.as_bytes());
        b
    };
    let mut exchange = |stream: i16, opcode: u8, body: Vec<u8>| -> Result<u8, String> {
        let mut f = vec![4, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.push(opcode);
        f.extend_from_slice(&(body.len() as i32).to_be_bytes());
        f.extend_from_slice(&body);
        s.write_all(&f).map_err(|e| e.to_string())?;
        let mut head = [0u8; 9];
        s.read_exact(&mut head).map_err(|e| e.to_string())?;
        let len = i32::from_be_bytes([head[5], head[6], head[7], head[8]]).max(0) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).map_err(|e| e.to_string())?;
        if head[4] == 0 {
            return Err(String::from_utf8_lossy(payload.get(6..).unwrap_or_default()).into());
        }
        Ok(head[4])
    };
    let mut startup = 1u16.to_be_bytes().to_vec();
    startup.extend(string("CQL_VERSION"));
    startup.extend(string("3.0.0"));
    exchange(1, 0x01, startup)?;
    let q = format!("DROP KEYSPACE IF EXISTS {ks}");
    let mut query = (q.len() as i32).to_be_bytes().to_vec();
    query.extend_from_slice(q.as_bytes());
    query.extend_from_slice(&1u16.to_be_bytes()); // consistency ONE
    query.push(0);
    exchange(2, 0x07, query).map(|_| ())
}

/// The run's files, nodes and keyspace; cleans up on drop, passed or failed.
struct Run {
    dir: PathBuf,
    /// The first incarnation of every node (`sh -c` that `exec`s parley), reaped on drop.
    children: Vec<std::process::Child>,
    target: String,
    keyspace: String,
}

impl Run {
    fn pidfile(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{i}.pid"))
    }

    fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for i in 0..IPS.len() {
            let Ok(pid) = std::fs::read_to_string(self.pidfile(i)) else {
                continue;
            };
            let pid = pid.trim();
            // Only a node of this run: its data directory is on its command line.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mine = String::from_utf8_lossy(&cmdline).contains(self.dir.to_str().unwrap_or("?"));
            if mine {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            if std::thread::panicking() {
                note(&format!(
                    "node n{i} log (last lines):\n{}",
                    self.log_tail(i)
                ));
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = drop_keyspace(&self.target, &self.keyspace) {
            note(&format!("keyspace {} not dropped: {e}", self.keyspace));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn failover_scenario_against_a_real_cluster() {
    let Some(target) = cql_target() else {
        return;
    };
    let t0 = Instant::now();
    let bin = parley_bin();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("parley-lt-failover-{}-{unix}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let keyspace = format!("parley_cluster_{unix}_{}_ltfo", std::process::id());
    let mut run = Run {
        dir: dir.clone(),
        children: Vec::new(),
        target: target.clone(),
        keyspace: keyspace.clone(),
    };
    let pidfile = |i: usize| dir.join(format!("n{i}.pid"));
    let http: Vec<String> = IPS
        .iter()
        .map(|ip| format!("{ip}:{}", free_port(ip)))
        .collect();
    let cluster: Vec<String> = IPS
        .iter()
        .map(|ip| format!("{ip}:{}", free_port(ip)))
        .collect();
    let points: Vec<String> = target
        .split(',')
        .map(|p| format!("\"{}\"", p.trim()))
        .collect();
    let start_cmd = |i: usize| {
        format!(
            "echo $$ >{pidfile}; exec {bin} --node-name n{i} --listen {http} --data-dir {dir}/data-n{i} \
             --history scylla --set 'scylla.contact_points=[{points}]' \
             --set 'scylla.keyspace=\"{ks}\"' --set scylla.bucket_bits=3 \
             --cluster-listen {cl} --cluster-cookie cookie-{pid}-failover-loadtest \
             --peers {peers} --set 'cluster.heartbeat_interval=\"250ms\"' \
             --set cluster.heartbeat_misses=3 \
             --rate-limit-per-sec 100000 --rate-limit-burst 100000 >>{dir}/n{i}.log 2>&1",
            pidfile = pidfile(i).display(),
            bin = bin.display(),
            http = http[i],
            dir = dir.display(),
            points = points.join(","),
            ks = keyspace,
            cl = cluster[i],
            pid = std::process::id(),
            peers = cluster.join(","),
        )
    };
    // Nodes one after the other (the first creates the keyspace), each healthy before the next.
    for (i, addr) in http.iter().enumerate() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(start_cmd(i)).stdin(Stdio::null());
        clear_parley_env(&mut cmd);
        run.children.push(cmd.spawn().expect("spawn sh"));
        let deadline = Instant::now() + Duration::from_secs(90);
        while http_get(addr, "/healthz").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "node n{i} not healthy within 90 s:\n{}",
                run.log_tail(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sizes: Vec<usize> = http
            .iter()
            .map(|h| {
                http_get(h, "/cluster")
                    .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                    .and_then(|v| v["ringMembers"].as_array().map(Vec::len))
                    .unwrap_or(0)
            })
            .collect();
        if sizes.iter().all(|&n| n == IPS.len()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "views did not converge: ring sizes {sizes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    note(&format!("cluster of 3 up after {:?}", t0.elapsed()));

    let mut args: Vec<String> = vec!["failover".into()];
    for (i, h) in http.iter().enumerate() {
        args.push("--node".into());
        args.push(format!(
            "url=ws://{h}/ws,pidfile={},start={}",
            pidfile(i).display(),
            start_cmd(i)
        ));
    }
    for a in [
        "--rooms",
        "6",
        "--readers-per-node",
        "1",
        "--rate",
        "60",
        "--kills",
        "3",
        "--kill-every",
        "5s",
        "--down-for",
        "1500ms",
        "--warmup",
        "3s",
        "--settle",
        "3s",
        "--json",
    ] {
        args.push(a.into());
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parley-loadtest"));
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    clear_parley_env(&mut cmd);
    let child = cmd.spawn().expect("spawn parley-loadtest");
    let out = wait_bounded(child, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\nstderr:\n{stderr}"));
    note(&format!(
        "{} kills, {} acked ({} retried), lost {}, duplicated pushes {}, out-of-order {}, \
         seq reused {}, stored twice {}, {} resyncs, max kill → first ack {} ms, → every \
         sender {} ms; errors {}",
        r["kills_done"],
        r["acked"],
        r["retried_messages"],
        r["lost"],
        r["duplicate_pushes"],
        r["out_of_order_pushes"],
        r["seq_reused"],
        r["stored_twice"],
        r["resyncs"],
        r["max_recovery_ms"],
        r["max_all_senders_recovery_ms"],
        r["errors"]
    ));
    assert_eq!(
        r["kills_done"], 3,
        "kills: {}\nstderr:\n{stderr}",
        r["kills"]
    );
    assert!(r["acked"].as_u64().unwrap_or(0) > 0, "{r}");
    for k in [
        "lost",
        "duplicate_pushes",
        "out_of_order_pushes",
        "seq_reused",
        "stored_twice",
    ] {
        assert_eq!(
            r[k], 0,
            "{k} (samples {}): {r}\nstderr:\n{stderr}",
            r["samples"]
        );
    }
    assert_eq!(r["readers_failed"], serde_json::json!([]), "{r}");
    assert!(out.status.success(), "the tool failed: {stderr}");
    drop(run);
    note(&format!("passed in {:?}", t0.elapsed()));
}

/// The flags given are the whole configuration: no PARLEY_* of the caller leaks in.
fn clear_parley_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("PARLEY_") {
            cmd.env_remove(k);
        }
    }
}

/// Waits for `child` at most `within` (killing it then) and returns its output.
fn wait_bounded(mut child: std::process::Child, within: Duration) -> std::process::Output {
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "parley-loadtest failover did not finish within {within:?}; stderr:\n{}",
                    String::from_utf8_lossy(&err.join().unwrap_or_default())
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("waiting for parley-loadtest: {e}"),
        }
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
