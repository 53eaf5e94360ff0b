//! `csm launch` and `csm dist-check` on the CPU: two local ranks over MLX's
//! ring backend on 127.0.0.1.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{text, CSM};

fn csm(args: &[&str], limit: Duration) -> (Output, Duration) {
    common::run_csm(args, limit, &[])
}

#[test]
fn dist_check_single_process() {
    let (out, _) = csm(&["dist-check"], Duration::from_secs(60));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("rank 0 of 1, backend none"), "{t}");
}

#[test]
fn launch_two_ranks_dist_check() {
    let (out, _) = csm(
        &[
            "launch",
            "-n",
            "2",
            "--",
            "dist-check",
            "--mib",
            "1",
            "--iters",
            "2",
        ],
        Duration::from_secs(120),
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for r in 0..2 {
        assert!(
            t.contains(&format!("[rank {r}] rank {r} of 2, backend ring")),
            "{t}"
        );
        assert!(
            t.contains(&format!("[rank {r}] dist-check passed on rank {r} of 2")),
            "{t}"
        );
    }
    assert!(t.contains("GB/s"), "{t}");
}

#[test]
fn launch_names_the_rank_that_exits_with_an_error() {
    let (out, took) = csm(
        &[
            "launch",
            "-n",
            "2",
            "--kill-timeout",
            "5",
            "--",
            "dist-check",
            "--fail-rank",
            "1",
            "--fail-after",
            "1",
        ],
        Duration::from_secs(120),
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("rank 1 exited with status 3"), "{t}");
    assert!(took < Duration::from_secs(90), "took {took:?}\n{t}");
}

#[test]
fn launch_names_the_rank_that_crashes() {
    let (out, _) = csm(
        &[
            "launch",
            "-n",
            "2",
            "--kill-timeout",
            "5",
            "--",
            "dist-check",
            "--fail-rank",
            "0",
            "--fail-after",
            "2",
            "--fail-mode",
            "crash",
        ],
        Duration::from_secs(120),
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("rank 0 was killed by signal 6 (SIGABRT)"), "{t}");
}

/// A rank that hangs (alive, silent): the peer's watchdog ends it after the
/// bound, naming the hung rank from the progress files; the launcher then
/// stops the hung rank.
#[test]
fn watchdog_names_the_rank_that_stopped_responding() {
    let (out, took) = csm(
        &[
            "launch",
            "-n",
            "2",
            "--dist-timeout",
            "4",
            "--kill-timeout",
            "5",
            "--",
            "dist-check",
            "--fail-rank",
            "1",
            "--fail-after",
            "2",
            "--fail-mode",
            "hang",
        ],
        Duration::from_secs(120),
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("rank 0 exited with status 124"), "{t}");
    assert!(
        t.contains("stopped responding: rank 1 (last entered collective #2)"),
        "{t}"
    );
    assert!(took < Duration::from_secs(90), "took {took:?}\n{t}");
}

/// The host-file path (as for ssh, but `127.0.0.1` entries run locally
/// through the same start-up script).
#[test]
fn launch_with_a_local_hostfile() {
    let port = {
        // Two consecutive free ports, best effort.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 {
            p
        } else {
            40123
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts.json");
    std::fs::write(
        &hosts,
        r#"[{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "localhost", "ips": ["127.0.0.1"]}]"#,
    )
    .unwrap();
    let port = (port + 1).to_string();
    let (out, _) = csm(
        &[
            "launch",
            "--hostfile",
            hosts.to_str().unwrap(),
            "--starting-port",
            &port,
            "--",
            "dist-check",
            "--iters",
            "0",
        ],
        Duration::from_secs(120),
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("[rank 1] dist-check passed on rank 1 of 2"),
        "{t}"
    );
}

#[test]
fn launch_forwards_ctrl_c_once() {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(CSM)
        .args([
            "launch",
            "-n",
            "2",
            "--",
            "dist-check",
            "--iters",
            "0",
            "--linger",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Both ranks print their gradient-averaging line just before lingering.
    let mut lines = Vec::new();
    let mut ready = 0;
    let start = Instant::now();
    while ready < 2 {
        let left = Duration::from_secs(90).saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) => {
                if l.contains("average_gradients:") {
                    ready += 1;
                }
                lines.push(l);
            }
            Err(_) => {
                let _ = child.kill();
                panic!("ranks never got ready: {lines:?}");
            }
        }
    }
    // Let them install their SIGINT handlers.
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: signals the launcher this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("launcher did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let lines = lines.join("\n");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{lines}\n{err}");
    assert!(err.contains("forwarding SIGINT"), "{lines}\n{err}");
    assert!(err.contains("every rank stopped cleanly"), "{lines}\n{err}");
    for r in 0..2 {
        assert!(
            lines.contains(&format!(
                "[rank {r}] rank {r}: SIGINT received, stopping cleanly"
            )),
            "{lines}\n{err}"
        );
    }
}
