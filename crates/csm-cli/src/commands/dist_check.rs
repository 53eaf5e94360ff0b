//! `csm dist-check`: a connectivity and correctness check for distributed
//! runs. Start it on every rank (`csm launch -n 2 -- dist-check`); it joins
//! the group, checks `all_sum`, `all_mean` and gradient averaging against
//! known answers and measures all-reduce bandwidth.
//!
//! `--fail-rank` makes one rank fail on purpose (exit, abort or hang) after a
//! number of collectives, to check how the launcher and the watchdog react.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use csm_core::distributed::Group;
use csm_core::mlx_rs::{Array, Dtype};

/// How `--fail-rank` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailMode {
    /// Exit with status 3.
    Exit,
    /// Abort (SIGABRT), like a crash.
    Crash,
    /// Stop responding (sleep forever) without exiting.
    Hang,
}

/// Flags of `csm dist-check`.
#[derive(Debug, Args)]
pub struct DistCheckArgs {
    /// Backend: ring, mpi, nccl, jaccl or any (default: from the
    /// environment, as set by `csm launch`).
    #[arg(long)]
    backend: Option<String>,

    /// Fail unless launched distributed (default: a single process passes).
    #[arg(long)]
    strict: bool,

    /// Size of the bandwidth test buffer, in MiB of f32.
    #[arg(long, default_value_t = 16.0)]
    mib: f64,

    /// Timed all-reduces of the bandwidth buffer.
    #[arg(long, default_value_t = 5)]
    iters: usize,

    /// Make this rank fail on purpose (for testing the launcher/watchdog).
    #[arg(long, hide = true)]
    fail_rank: Option<usize>,

    /// How `--fail-rank` fails.
    #[arg(long, hide = true, value_enum, default_value_t = FailMode::Exit)]
    fail_mode: FailMode,

    /// Collectives that `--fail-rank` completes before failing.
    #[arg(long, hide = true, default_value_t = 1)]
    fail_after: u64,

    /// Seconds every rank sleeps before exiting successfully (to test
    /// Ctrl-C forwarding); on SIGINT it prints and exits 0 right away.
    #[arg(long, hide = true, default_value_t = 0.0)]
    linger: f64,
}

/// Runs the check on this rank.
pub fn run(args: DistCheckArgs) -> Result<()> {
    let group = Group::init(
        &crate::env::dist_env(),
        args.backend.as_deref(),
        args.strict,
    )?;
    let (rank, size) = (group.rank(), group.size());
    tell!(
        "rank {rank} of {size}, backend {}, watchdog {}",
        group.backend(),
        group
            .timeout()
            .map_or("off".to_string(), |t| format!("{:.0} s", t.as_secs_f64()))
    );

    let maybe_fail = |group: &Group| {
        if args.fail_rank == Some(rank) && group.collectives_run() >= args.fail_after {
            fail(rank, args.fail_mode);
        }
    };
    maybe_fail(&group);

    // all_sum: rank r contributes r + 1 everywhere.
    let n = 1000;
    let x = Array::from_slice(&vec![(rank + 1) as f32; n], &[10, 100]);
    let s = group.all_sum(&x).context("all_sum")?;
    let want = (size * (size + 1) / 2) as f32;
    check("all_sum", &s, want)?;
    maybe_fail(&group);

    let m = group.all_mean(&x).context("all_mean")?;
    check("all_mean", &m, want / size as f32)?;
    maybe_fail(&group);

    // Gradient averaging over mixed shapes and dtypes.
    let mut grads = BTreeMap::new();
    grads.insert(
        "a.lora_a".to_string(),
        Array::from_slice(&[rank as f32; 12], &[3, 4]),
    );
    grads.insert(
        "b.lora_b".to_string(),
        Array::from_slice(&[2.0 * rank as f32; 5], &[5]),
    );
    grads.insert(
        "c.bias".to_string(),
        Array::from_slice(&[rank as f32 * 4.0; 6], &[2, 3])
            .as_dtype(Dtype::Bfloat16)
            .context("bf16 cast")?,
    );
    let stats = group.average_gradients(&mut grads)?;
    let mean_rank = (size - 1) as f32 / 2.0;
    check("average_gradients a", &grads["a.lora_a"], mean_rank)?;
    check("average_gradients b", &grads["b.lora_b"], 2.0 * mean_rank)?;
    check("average_gradients c", &grads["c.bias"], 4.0 * mean_rank)?;
    if grads["a.lora_a"].shape() != [3, 4] || grads["c.bias"].dtype() != Dtype::Bfloat16 {
        bail!("average_gradients changed a shape or dtype");
    }
    tell!(
        "average_gradients: {} tensors in {} collectives, {} B payload, ~{} B sent per rank, {:.2} ms",
        stats.tensors,
        stats.collectives,
        stats.payload_bytes,
        stats.bytes_sent_per_rank,
        stats.elapsed.as_secs_f64() * 1e3
    );
    maybe_fail(&group);

    if group.is_distributed() && args.iters > 0 {
        let elems = ((args.mib * 1024.0 * 1024.0 / 4.0) as usize).max(size);
        let buf = Array::from_slice(&vec![1.0f32; elems], &[elems as i32]);
        buf.eval()?;
        // Warm-up (first use of the buffers and sockets).
        let first = group.all_sum(&buf)?;
        check("all_sum (bandwidth buffer)", &first, size as f32)?;
        let mut best = Duration::MAX;
        let mut total = Duration::ZERO;
        for _ in 0..args.iters {
            let t = Instant::now();
            let _ = group.all_sum(&buf)?;
            let dt = t.elapsed();
            best = best.min(dt);
            total += dt;
            maybe_fail(&group);
        }
        let payload = (elems * 4) as f64;
        let sent = group.ring_bytes_sent(elems as u64 * 4) as f64;
        let mean = total.as_secs_f64() / args.iters as f64;
        tell!(
            "all_sum {:.1} MiB x{}: mean {:.2} ms, best {:.2} ms; algorithm bandwidth {:.2} GB/s, \
             bytes sent per rank {:.1} MiB -> {:.2} GB/s on the wire",
            payload / (1024.0 * 1024.0),
            args.iters,
            mean * 1e3,
            best.as_secs_f64() * 1e3,
            payload / best.as_secs_f64() / 1e9,
            sent / (1024.0 * 1024.0),
            sent / best.as_secs_f64() / 1e9,
        );
    }

    if args.linger > 0.0 {
        linger(rank, Duration::from_secs_f64(args.linger));
    }
    tell!("dist-check passed on rank {rank} of {size}");
    Ok(())
}

/// Every element of `a` must be `want`.
fn check(what: &str, a: &Array, want: f32) -> Result<()> {
    let a = a.as_dtype(Dtype::Float32)?;
    a.eval()?;
    let got = a.as_slice::<f32>();
    if let Some((i, v)) = got
        .iter()
        .enumerate()
        .find(|(_, v)| (**v - want).abs() > 1e-3 * want.abs().max(1.0))
    {
        bail!("{what}: element {i} is {v}, expected {want}");
    }
    Ok(())
}

fn fail(rank: usize, mode: FailMode) -> ! {
    match mode {
        FailMode::Exit => {
            say!("rank {rank}: failing on purpose (--fail-rank, exit 3)");
            std::process::exit(3)
        }
        FailMode::Crash => {
            say!("rank {rank}: crashing on purpose (--fail-rank, abort)");
            std::process::abort()
        }
        FailMode::Hang => {
            say!("rank {rank}: hanging on purpose (--fail-rank)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Sleeps up to `d`, returning early on SIGINT (as a trainer would, after
/// saving a checkpoint).
fn linger(rank: usize, d: Duration) {
    // SAFETY: installs an async-signal-safe handler (one atomic store).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let start = Instant::now();
    while start.elapsed() < d {
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            tell!("rank {rank}: SIGINT received, stopping cleanly");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
