//! Distributed layer on the CPU with MLX's ring backend over 127.0.0.1.
//!
//! Multi-rank tests re-run this test binary as child processes: the parent
//! writes a hostfile with free localhost ports and starts one child per rank
//! with `MLX_HOSTFILE`/`MLX_RANK` and `CSM_DIST_TEST_CHILD` naming the role;
//! the child runs only `distributed_child` (`--exact`), which does the work.
//! Children capture their launch variables into a `DistEnv` as the `csm`
//! tool does; the error checks build one by hand, in this process.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csm_core::distributed::{DistEnv, DistError, Group};
use csm_core::mlx_rs::{Array, Dtype};

const ROLE: &str = "CSM_DIST_TEST_CHILD";

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn write_hostfile(dir: &Path, n: usize) -> std::path::PathBuf {
    let nodes: Vec<Vec<String>> = free_ports(n)
        .into_iter()
        .map(|p| vec![format!("127.0.0.1:{p}")])
        .collect();
    let path = dir.join("hosts.json");
    std::fs::write(&path, serde_json::to_string(&nodes).unwrap()).unwrap();
    path
}

/// Starts `n` ranks of this binary in `role`; waits (bounded) for all.
fn run_ranks(n: usize, role: &str, extra_env: &[(&str, &str)]) -> Vec<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = write_hostfile(dir.path(), n);
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..n)
        .map(|rank| {
            let mut c = Command::new(&exe);
            c.args([
                "--exact",
                "distributed_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env("MLX_HOSTFILE", &hostfile)
            .env("MLX_RANK", rank.to_string())
            .env("CSM_DIST_TIMEOUT_SECS", "60")
            .env_remove("MLX_DISTRIBUTED_BACKEND")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            for (k, v) in extra_env {
                c.env(k, v);
            }
            c.spawn().unwrap()
        })
        .collect();
    let start = Instant::now();
    loop {
        let done = children.iter_mut().all(|c| c.try_wait().unwrap().is_some());
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("ranks did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        })
        .collect()
}

/// The child role; a no-op in a normal test run.
#[test]
fn distributed_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "collectives" => child_collectives(),
        "mismatch" => child_mismatch(),
        other => panic!("unknown role {other}"),
    }
}

/// This process's launch variables, as the `csm` tool captures them.
fn launch_env() -> DistEnv {
    DistEnv::capture(|k| std::env::var(k).ok())
}

fn values(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn child_collectives() {
    let g = Group::init(&launch_env(), None, true).expect("init ring");
    let n = std::env::var("CSM_DIST_TEST_SIZE")
        .unwrap()
        .parse::<usize>()
        .unwrap();
    assert_eq!(g.size(), n);
    assert_eq!(g.backend(), "ring");
    assert!(g.is_distributed());
    let r = g.rank() as f32;
    let nf = n as f32;
    let ranks_sum = nf * (nf - 1.0) / 2.0;

    // all_sum / all_mean of rank-dependent data (3 elements: for 3+ ranks
    // this is smaller than the group, which MLX's ring pads).
    let x = Array::from_slice(&[r, 10.0 * r, 1.0], &[3]);
    assert_eq!(
        values(&g.all_sum(&x).unwrap()),
        vec![ranks_sum, 10.0 * ranks_sum, nf]
    );
    assert_eq!(
        values(&g.all_mean(&x).unwrap()),
        vec![ranks_sum / nf, 10.0 * ranks_sum / nf, 1.0]
    );
    // Integer input: summed exactly, averaged in f32.
    let xi = Array::from_slice(&[g.rank() as i32 + 1], &[1]);
    assert_eq!(g.all_sum(&xi).unwrap().dtype(), Dtype::Int32);
    let mi = g.all_mean(&xi).unwrap();
    assert_eq!(mi.dtype(), Dtype::Float32);
    assert_eq!(values(&mi), vec![(ranks_sum + nf) / nf]);
    let one = Array::from_slice(&[r + 1.0], &[1]);
    assert_eq!(values(&g.all_sum(&one).unwrap()), vec![ranks_sum + nf]);

    // bf16 keeps its dtype.
    let b = Array::from_slice(&[r * 2.0; 8], &[2, 4])
        .as_dtype(Dtype::Bfloat16)
        .unwrap();
    let bm = g.all_mean(&b).unwrap();
    assert_eq!(bm.dtype(), Dtype::Bfloat16);
    assert_eq!(values(&bm), vec![nf - 1.0; 8]);

    // A bigger buffer (several ring packets).
    let big = Array::from_slice(&vec![r + 1.0; 300_000], &[300_000]);
    let bs = values(&g.all_sum(&big).unwrap());
    assert!(bs.iter().all(|v| *v == ranks_sum + nf));

    // A whole gradient set: mixed shapes, two dtypes -> two collectives.
    let mut grads = BTreeMap::new();
    grads.insert(
        "layers.0.attn.q_proj.lora_a".to_string(),
        Array::from_slice(
            &(0..12).map(|i| i as f32 + 100.0 * r).collect::<Vec<_>>(),
            &[3, 4],
        ),
    );
    grads.insert(
        "layers.0.attn.q_proj.lora_b".to_string(),
        Array::from_slice(&[r; 7], &[7, 1]),
    );
    grads.insert(
        "norm.bias".to_string(),
        Array::from_slice(&[4.0 * r; 4], &[4])
            .as_dtype(Dtype::Bfloat16)
            .unwrap(),
    );
    let stats = g.average_gradients(&mut grads).unwrap();
    assert_eq!(stats.tensors, 3);
    assert_eq!(stats.collectives, 2);
    assert_eq!(stats.payload_bytes, (12 + 7) * 4 + 4 * 2);
    // Ring estimate: 2 (n - 1) / n of each buffer (f32, then bf16).
    let ring = |bytes: u64| 2 * (n as u64 - 1) * bytes / n as u64;
    assert_eq!(stats.bytes_sent_per_rank, ring(19 * 4) + ring(4 * 2));
    let mean_r = ranks_sum / nf;
    let a = &grads["layers.0.attn.q_proj.lora_a"];
    assert_eq!(a.shape(), &[3, 4]);
    assert_eq!(
        values(a),
        (0..12)
            .map(|i| i as f32 + 100.0 * mean_r)
            .collect::<Vec<_>>()
    );
    assert_eq!(grads["layers.0.attn.q_proj.lora_b"].shape(), &[7, 1]);
    assert_eq!(
        values(&grads["layers.0.attn.q_proj.lora_b"]),
        vec![mean_r; 7]
    );
    assert_eq!(grads["norm.bias"].dtype(), Dtype::Bfloat16);
    assert_eq!(values(&grads["norm.bias"]), vec![4.0 * mean_r; 4]);
    println!("rank {} ok: {stats:?}", g.rank());
}

fn child_mismatch() {
    let g = Group::init(&launch_env(), None, true).expect("init ring");
    // Rank 1's gradient has a different shape: caught before any averaging.
    let len = 3 + g.rank();
    let mut grads = BTreeMap::from([(
        "w".to_string(),
        Array::from_slice(&vec![1.0f32; len], &[len as i32]),
    )]);
    let e = g.average_gradients(&mut grads).unwrap_err();
    assert!(matches!(e, DistError::LayoutMismatch { .. }), "{e}");
    // The group is still usable afterwards.
    let x = Array::from_slice(&[1.0f32], &[1]);
    assert_eq!(values(&g.all_sum(&x).unwrap()), vec![2.0]);
    println!("rank {} mismatch ok", g.rank());
}

#[test]
fn distributed_two_ranks_ring() {
    check_collectives(2);
}

#[test]
fn distributed_three_ranks_ring() {
    check_collectives(3);
}

fn check_collectives(n: usize) {
    let size = n.to_string();
    let results = run_ranks(n, "collectives", &[("CSM_DIST_TEST_SIZE", &size)]);
    for (rank, (ok, out)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} of {n} failed:\n{out}");
        assert!(
            out.contains(&format!("rank {rank} ok")),
            "rank {rank}:\n{out}"
        );
    }
}

#[test]
fn distributed_gradient_layout_mismatch_is_an_error() {
    for (rank, (ok, out)) in run_ranks(2, "mismatch", &[]).iter().enumerate() {
        assert!(ok, "rank {rank} failed:\n{out}");
        assert!(out.contains("mismatch ok"), "rank {rank}:\n{out}");
    }
}

#[test]
fn distributed_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = write_hostfile(dir.path(), 2);
    let hostfile = hostfile.to_str().unwrap();
    let mut env = DistEnv::default();
    env.set("MLX_HOSTFILE", hostfile).set("MLX_RANK", "one");
    let e = Group::init(&env, None, false).unwrap_err();
    assert!(
        matches!(
            e,
            DistError::BadEnv {
                var: "MLX_RANK",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("MLX_RANK=\"one\""), "{e}");

    env.set("MLX_RANK", "7");
    let e = Group::init(&env, None, false).unwrap_err().to_string();
    assert!(e.contains("MLX_RANK=7") && e.contains(hostfile), "{e}");

    env.set("MLX_RANK", "0")
        .set("MLX_HOSTFILE", "/nonexistent/hosts.json");
    let e = Group::init(&env, None, false).unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent/hosts.json") && e.contains("MLX_HOSTFILE"),
        "{e}"
    );

    env.remove("MLX_HOSTFILE");
    let e = Group::init(&env, Some("ring"), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MLX_HOSTFILE"), "{e}");
    // MLX_RANK alone configures nothing: strict init refuses.
    let e = Group::init(&env, None, true).unwrap_err();
    assert!(matches!(e, DistError::NotConfigured), "{e}");

    env.set("CSM_DIST_TIMEOUT_SECS", "soon").remove("MLX_RANK");
    let e = Group::init(&env, None, false).unwrap_err().to_string();
    assert!(e.contains("CSM_DIST_TIMEOUT_SECS"), "{e}");
    env.remove("CSM_DIST_TIMEOUT_SECS");

    let e = Group::init(&env, Some("carrier-pigeon"), false).unwrap_err();
    assert!(matches!(e, DistError::UnknownBackend(_)), "{e}");
}

#[test]
fn distributed_single_process_fallback() {
    let g = Group::init(&DistEnv::default(), None, false).unwrap();
    assert_eq!((g.rank(), g.size(), g.backend()), (0, 1, "none"));
    assert!(!g.is_distributed());
    assert!(g.timeout().is_none());
    let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
    assert_eq!(values(&g.all_sum(&x).unwrap()), vec![1.0, 2.0, 3.0]);
    assert_eq!(values(&g.all_mean(&x).unwrap()), vec![1.0, 2.0, 3.0]);
    let mut grads = BTreeMap::from([("w".to_string(), x.clone())]);
    let stats = g.average_gradients(&mut grads).unwrap();
    assert_eq!((stats.collectives, stats.bytes_sent_per_rank), (0, 0));
    assert_eq!(values(&grads["w"]), vec![1.0, 2.0, 3.0]);
    // Strict init must refuse to fall back.
    assert!(matches!(
        Group::init(&DistEnv::default(), None, true),
        Err(DistError::NotConfigured)
    ));
}

/// Rank 0 of a two-rank hostfile started alone waits in `accept()` for its
/// neighbour; the watchdog bounds that too.
#[test]
fn distributed_setup_is_bounded_by_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let hostfile = write_hostfile(dir.path(), 2);
    let start = Instant::now();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "distributed_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "collectives")
        .env("CSM_DIST_TEST_SIZE", "2")
        .env("MLX_HOSTFILE", &hostfile)
        .env("MLX_RANK", "0")
        .env("CSM_DIST_TIMEOUT_SECS", "2")
        .env_remove("MLX_DISTRIBUTED_BACKEND")
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(csm_core::distributed::WATCHDOG_EXIT_CODE),
        "{err}"
    );
    assert!(err.contains("a peer never connected"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
