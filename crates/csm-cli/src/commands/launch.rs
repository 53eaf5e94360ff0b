//! `csm launch`: start N ranks of a `csm` subcommand for data-parallel
//! training, locally or over ssh, following `mlx.launch`'s conventions.
//!
//! ```text
//! csm launch -n 2 -- finetune-lora --config run.json        # 2 local ranks (ring)
//! csm launch --hostfile hosts.json -- finetune-lora ...     # one rank per host, over ssh
//! csm launch -n 4 --backend nccl -- finetune-lora ...       # 4 local GPUs (NCCL)
//! ```
//!
//! Everything after `--` is passed to `csm` on every rank (`--exec` runs an
//! arbitrary program instead). Each rank gets MLX's environment: for the ring
//! backend `MLX_HOSTFILE` (a temporary JSON file of `ip:port` per rank) and
//! `MLX_RANK`; for NCCL `NCCL_HOST_IP`, `NCCL_PORT`, `MLX_RANK` and
//! `MLX_WORLD_SIZE`; plus `MLX_DISTRIBUTED_BACKEND`.
//!
//! Host file (`--hostfile`), as `mlx.launch` accepts it: a JSON list with one
//! object per rank, or an object with that list under `"hosts"` (and
//! optionally `"backend"` and `"envs": ["K=V", ...]`):
//!
//! ```json
//! [{"ssh": "mac1.local", "ips": ["10.0.0.1"]}, {"ssh": "mac2.local", "ips": ["10.0.0.2"]}]
//! ```
//!
//! `ssh` is how to reach the host (`127.0.0.1` or `localhost` run locally
//! without ssh); `ips` are the addresses the ranks use to reach each other
//! (the ring listens on `ips[0]:starting_port + rank`; NCCL bootstraps at
//! rank 0's `ips[0]`). `rdma` (JACCL) is passed through as `MLX_IBV_DEVICES`.
//!
//! Output of every rank is merged line by line with a `[rank N]` prefix. If a
//! rank exits non-zero or is killed, the others are sent SIGTERM, then
//! SIGKILL after `--kill-timeout`, and the launcher fails naming that rank.
//! Ctrl-C is forwarded once as SIGINT to every rank (they save a checkpoint
//! and stop); a second Ctrl-C terminates them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};

/// Backends `csm launch` can set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LaunchBackend {
    /// MLX's ring over TCP (any OS; Ethernet or Thunderbolt bridge).
    Ring,
    /// NCCL (CUDA build of MLX), one GPU per rank.
    Nccl,
    /// MPI, through `mpirun`.
    Mpi,
    /// JACCL: RDMA over Thunderbolt 5 between Macs (needs `rdma` in the host file).
    Jaccl,
}

impl LaunchBackend {
    fn name(self) -> &'static str {
        match self {
            LaunchBackend::Ring => "ring",
            LaunchBackend::Nccl => "nccl",
            LaunchBackend::Mpi => "mpi",
            LaunchBackend::Jaccl => "jaccl",
        }
    }
}

/// Flags of `csm launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Number of ranks (local runs; with --hostfile, defaults to one per host).
    #[arg(short = 'n', long = "num-ranks")]
    num_ranks: Option<usize>,

    /// JSON host file for multi-host runs, one rank per host:
    /// `[{"ssh": "host1", "ips": ["10.0.0.1"]}, ...]` (docs/distributed.md).
    #[arg(long, value_name = "FILE")]
    hostfile: Option<PathBuf>,

    /// Communication backend (default ring, or the host file's "backend").
    #[arg(long, value_enum)]
    backend: Option<LaunchBackend>,

    /// GPUs per rank for local NCCL runs: a number or `auto` (one each when
    /// enough GPUs are visible); sets CUDA_VISIBLE_DEVICES per rank.
    #[arg(long, value_name = "K|auto")]
    gpus_per_rank: Option<String>,

    /// First TCP port for multi-host ring (one per rank) or NCCL bootstrap.
    #[arg(long, default_value_t = 32323)]
    starting_port: u16,

    /// Extra environment for every rank (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    envs: Vec<String>,

    /// Working directory on every host (default: the current one, if it exists there).
    #[arg(long)]
    cwd: Option<PathBuf>,

    /// `csm` executable on remote hosts (default: this executable's path).
    #[arg(long, value_name = "PATH")]
    remote_csm: Option<String>,

    /// Run this program instead of `csm` (the arguments after `--` follow it).
    #[arg(long, value_name = "PROGRAM")]
    exec: Option<String>,

    /// Seconds to wait after SIGTERM before SIGKILL when stopping ranks.
    #[arg(long, default_value_t = 10.0)]
    kill_timeout: f64,

    /// Bound on each collective in the ranks (sets CSM_DIST_TIMEOUT_SECS).
    #[arg(long, value_name = "SECS")]
    dist_timeout: Option<f64>,

    /// Arguments for every rank: a `csm` subcommand and its flags.
    #[arg(last = true, required = true, value_name = "ARGS")]
    command: Vec<String>,
}

/// One entry of the host file.
#[derive(Debug, Clone, serde::Deserialize)]
struct Host {
    ssh: String,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    rdma: Option<serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum HostFile {
    List(Vec<Host>),
    Object {
        hosts: Vec<Host>,
        #[serde(default)]
        backend: Option<String>,
        #[serde(default)]
        envs: Vec<String>,
    },
}

/// Reads a host file; returns the hosts, its backend and its environment.
fn read_hostfile(path: &Path) -> Result<(Vec<Host>, Option<String>, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read host file {}", path.display()))?;
    let parsed: HostFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "host file {}: expected a JSON list of {{\"ssh\": HOST, \"ips\": [IP, ...]}} \
             (or {{\"hosts\": [...]}})",
            path.display()
        )
    })?;
    let (hosts, backend, envs) = match parsed {
        HostFile::List(h) => (h, None, Vec::new()),
        HostFile::Object {
            hosts,
            backend,
            envs,
        } => (hosts, backend, envs),
    };
    if hosts.is_empty() {
        bail!("host file {} lists no hosts", path.display());
    }
    Ok((hosts, backend, envs))
}

/// How one rank is started.
#[derive(Debug, Clone)]
struct RankPlan {
    /// `None` = local.
    ssh_host: Option<String>,
    env: Vec<(String, String)>,
    /// Files to create on the rank's host: (env var, content).
    files: Vec<(String, String)>,
}

fn is_local(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// Reserves `n` distinct free localhost TCP ports. They are released before
/// the ranks bind them, so another program could take one in between (then
/// the ring fails to bind and the launcher reports it).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("finding free localhost ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn count_gpus() -> usize {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count()
        })
        .unwrap_or(0)
}

/// Runs the ranks; fails naming the first rank that failed.
pub fn run(args: LaunchArgs) -> Result<()> {
    let (hosts, file_backend, file_envs) = match &args.hostfile {
        Some(p) => {
            let (h, b, e) = read_hostfile(p)?;
            (Some(h), b, e)
        }
        None => (None, None, Vec::new()),
    };
    let backend = match (args.backend, file_backend.as_deref()) {
        (Some(b), _) => b,
        (None, None) => LaunchBackend::Ring,
        (None, Some(name)) => LaunchBackend::from_str(name, true).map_err(|_| {
            anyhow!("host file backend {name:?}: expected ring, nccl, mpi or jaccl")
        })?,
    };
    let n = match (&hosts, args.num_ranks) {
        (Some(h), None) => h.len(),
        (Some(h), Some(n)) if n == h.len() => n,
        (Some(h), Some(n)) => bail!(
            "-n {n} but the host file lists {} hosts (one rank per host)",
            h.len()
        ),
        (None, Some(n)) => n,
        (None, None) => bail!("give the number of ranks (-n N) or a --hostfile"),
    };
    if n == 0 {
        bail!("-n must be at least 1");
    }
    if backend == LaunchBackend::Mpi {
        return run_mpi(&args, hosts.as_deref(), n);
    }

    let tmp = tempfile::Builder::new()
        .prefix("csm-launch-")
        .tempdir()
        .context("creating a temporary directory for the host file")?;
    let mut common: Vec<(String, String)> =
        vec![("MLX_DISTRIBUTED_BACKEND".into(), backend.name().to_string())];
    if let Some(t) = args.dist_timeout {
        common.push(("CSM_DIST_TIMEOUT_SECS".into(), t.to_string()));
    }
    for e in file_envs.iter().chain(&args.envs) {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| anyhow!("--env {e:?}: expected KEY=VALUE"))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("--env {e:?}: {k:?} is not a valid variable name");
        }
        common.push((k.into(), v.into()));
    }

    let mut plans: Vec<RankPlan> = Vec::with_capacity(n);
    match &hosts {
        None => {
            // All ranks on this machine.
            let progress = tmp.path().join("progress");
            std::fs::create_dir_all(&progress)?;
            common.push((
                "CSM_DIST_PROGRESS_DIR".into(),
                progress.display().to_string(),
            ));
            let gpus = gpu_assignment(&args, backend, n)?;
            let ports = free_ports(n.max(1))?;
            let mut shared = common.clone();
            match backend {
                LaunchBackend::Ring => {
                    let nodes: Vec<Vec<String>> =
                        ports.iter().map(|p| vec![format!("127.0.0.1:{p}")]).collect();
                    let hostfile = tmp.path().join("hostfile.json");
                    std::fs::write(&hostfile, serde_json::to_string(&nodes)?)?;
                    shared.push(("MLX_HOSTFILE".into(), hostfile.display().to_string()));
                }
                LaunchBackend::Nccl => {
                    shared.push(("NCCL_HOST_IP".into(), "127.0.0.1".into()));
                    shared.push(("NCCL_PORT".into(), ports[0].to_string()));
                    shared.push(("MLX_WORLD_SIZE".into(), n.to_string()));
                }
                LaunchBackend::Jaccl => bail!(
                    "the jaccl backend needs a host file with \"rdma\" device names (one Mac per rank)"
                ),
                LaunchBackend::Mpi => unreachable!("handled above"),
            }
            for rank in 0..n {
                let mut env = shared.clone();
                env.push(("MLX_RANK".into(), rank.to_string()));
                if let Some(g) = &gpus {
                    env.push(("CUDA_VISIBLE_DEVICES".into(), g[rank].clone()));
                }
                plans.push(RankPlan {
                    ssh_host: None,
                    env,
                    files: Vec::new(),
                });
            }
        }
        Some(hosts) => {
            let mut shared = common.clone();
            let mut files = Vec::new();
            match backend {
                LaunchBackend::Ring => {
                    let mut nodes = Vec::new();
                    for (rank, h) in hosts.iter().enumerate() {
                        let ip = h.ips.first().ok_or_else(|| {
                            anyhow!(
                                "host file: rank {rank} ({}) has no \"ips\"; the ring backend needs \
                                 the address the other ranks reach it on",
                                h.ssh
                            )
                        })?;
                        let port = u32::from(args.starting_port) + rank as u32;
                        let port = u16::try_from(port).context("--starting-port too high")?;
                        nodes.push(vec![format!("{ip}:{port}")]);
                    }
                    files.push(("MLX_HOSTFILE".to_string(), serde_json::to_string(&nodes)?));
                }
                LaunchBackend::Nccl => {
                    let ip = hosts[0].ips.first().ok_or_else(|| {
                        anyhow!("host file: rank 0 needs \"ips\" for the NCCL bootstrap")
                    })?;
                    shared.push(("NCCL_HOST_IP".into(), ip.clone()));
                    shared.push(("NCCL_PORT".into(), args.starting_port.to_string()));
                    shared.push(("MLX_WORLD_SIZE".into(), n.to_string()));
                }
                LaunchBackend::Jaccl => {
                    let ip = hosts[0].ips.first().ok_or_else(|| {
                        anyhow!("host file: rank 0 needs \"ips\" for the JACCL coordinator")
                    })?;
                    let rdma: Vec<serde_json::Value> = hosts
                        .iter()
                        .enumerate()
                        .map(|(r, h)| {
                            h.rdma.clone().ok_or_else(|| {
                                anyhow!("host file: rank {r} ({}) has no \"rdma\"", h.ssh)
                            })
                        })
                        .collect::<Result<_>>()?;
                    shared.push((
                        "MLX_JACCL_COORDINATOR".into(),
                        format!("{ip}:{}", args.starting_port),
                    ));
                    files.push(("MLX_IBV_DEVICES".to_string(), serde_json::to_string(&rdma)?));
                }
                LaunchBackend::Mpi => unreachable!("handled above"),
            }
            for (rank, h) in hosts.iter().enumerate() {
                let mut env = shared.clone();
                env.push(("MLX_RANK".into(), rank.to_string()));
                plans.push(RankPlan {
                    ssh_host: (!is_local(&h.ssh)).then(|| h.ssh.clone()),
                    env,
                    files: files.clone(),
                });
            }
        }
    }

    let program = match &args.exec {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating the csm executable")?
            .display()
            .to_string(),
    };
    let remote_program = args
        .exec
        .clone()
        .or_else(|| args.remote_csm.clone())
        .unwrap_or_else(|| program.clone());
    let cwd = match &args.cwd {
        Some(c) => Some(c.clone()),
        None => std::env::current_dir().ok(),
    };

    say!(
        "csm launch: {n} ranks, backend {}, running `{}`",
        backend.name(),
        args.command.join(" ")
    );
    let launched = Launched::start(&plans, &program, &remote_program, &args, cwd.as_deref())?;
    let outcome = launched.supervise(Duration::from_secs_f64(args.kill_timeout.max(0.0)));
    drop(tmp);
    outcome
}

/// CUDA_VISIBLE_DEVICES per local rank, or `None` to leave it alone.
fn gpu_assignment(
    args: &LaunchArgs,
    backend: LaunchBackend,
    n: usize,
) -> Result<Option<Vec<String>>> {
    let per_rank =
        match args.gpus_per_rank.as_deref() {
            None if backend != LaunchBackend::Nccl => return Ok(None),
            None | Some("auto") => {
                if std::env::var_os("CUDA_VISIBLE_DEVICES").is_some() {
                    // The user chose the GPUs; MLX's NCCL backend then uses
                    // GPU `rank % visible`.
                    return Ok(None);
                }
                let found = count_gpus();
                if found < n {
                    if backend == LaunchBackend::Nccl && found > 0 {
                        bail!("{n} ranks but only {found} GPUs are visible (nvidia-smi -L)");
                    }
                    return Ok(None);
                }
                1
            }
            Some(k) => k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
                anyhow!("--gpus-per-rank {k:?}: expected a positive number or auto")
            })?,
        };
    Ok(Some(
        (0..n)
            .map(|r| {
                (r * per_rank..(r + 1) * per_rank)
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect(),
    ))
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The bash script that starts a rank on a host (remote or via a local
/// host file entry): writes the files, exports the environment, changes
/// directory and `exec`s the program (so signals reach it directly).
fn rank_script(plan: &RankPlan, program: &str, command: &[String], cwd: Option<&Path>) -> String {
    let mut s = String::new();
    if plan.ssh_host.is_some() {
        s.push_str("stty -echo 2>/dev/null; ");
    }
    if let Some(d) = cwd {
        let d = shell_quote(&d.display().to_string());
        s.push_str(&format!("if [ -d {d} ]; then cd {d}; fi; "));
    }
    for (k, v) in &plan.env {
        s.push_str(&format!("export {k}={}; ", shell_quote(v)));
    }
    for (k, content) in &plan.files {
        s.push_str(&format!(
            "f=$(mktemp); printf '%s' {} > \"$f\"; export {k}=\"$f\"; ",
            shell_quote(content)
        ));
    }
    s.push_str("exec ");
    s.push_str(&shell_quote(program));
    for a in command {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

/// A started rank.
struct RankProc {
    rank: usize,
    /// Process (and process group) id; signalled only until reaped.
    pid: i32,
    /// For remote ranks: the ssh pty's stdin, to send ^C.
    stdin: Option<ChildStdin>,
    remote: bool,
    status: Option<ExitStatus>,
}

struct Launched {
    ranks: Vec<RankProc>,
    pumps: Vec<JoinHandle<()>>,
    /// Exits in the order they happened, from one reaper thread per rank
    /// (so the first rank to fail is named, not the lowest-numbered one).
    exits_tx: Sender<(usize, ExitStatus)>,
    exits: Receiver<(usize, ExitStatus)>,
}

static SIGINTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, Ordering::SeqCst);
}

static OUT_LOCK: Mutex<()> = Mutex::new(());

/// Copies `src` to our stdout or stderr line by line with a `[rank N]` prefix.
fn pump(rank: usize, src: impl Read + Send + 'static, to_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']);
                    let _guard = OUT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                    if to_stderr {
                        let mut e = std::io::stderr().lock();
                        let _ = writeln!(e, "[rank {rank}] {text}");
                        let _ = e.flush();
                    } else {
                        let mut o = std::io::stdout().lock();
                        let _ = writeln!(o, "[rank {rank}] {text}");
                        let _ = o.flush();
                    }
                }
            }
        }
    })
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) if c == csm_core::distributed::WATCHDOG_EXIT_CODE => {
            format!(
                "exited with status {c} (its distributed watchdog fired: a collective timed out)"
            )
        }
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s} ({})", signal_name(s)),
        _ => format!("ended ({status})"),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

impl Launched {
    fn start(
        plans: &[RankPlan],
        program: &str,
        remote_program: &str,
        args: &LaunchArgs,
        cwd: Option<&Path>,
    ) -> Result<Launched> {
        // SAFETY: installs an async-signal-safe handler (one atomic add).
        unsafe {
            libc::signal(
                libc::SIGINT,
                on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        let (exits_tx, exits) = channel();
        let mut launched = Launched {
            ranks: Vec::new(),
            pumps: Vec::new(),
            exits_tx,
            exits,
        };
        for (rank, plan) in plans.iter().enumerate() {
            let mut cmd = match &plan.ssh_host {
                None if plan.files.is_empty() => {
                    let mut c = Command::new(program);
                    c.args(&args.command);
                    c.envs(plan.env.iter().map(|(k, v)| (k, v)));
                    if let Some(d) = cwd.filter(|d| d.is_dir()) {
                        c.current_dir(d);
                    }
                    c
                }
                None => {
                    let mut c = Command::new("bash");
                    c.arg("-c")
                        .arg(rank_script(plan, program, &args.command, cwd));
                    c
                }
                Some(host) => {
                    let mut c = Command::new("ssh");
                    // -tt: the remote rank gets a pty, so it is hung up when
                    // ssh goes away, and ^C on stdin becomes SIGINT there.
                    // Keep-alives: if the host vanishes (power, cable), ssh
                    // exits after about a minute and the rank is reported.
                    c.args([
                        "-tt",
                        "-o",
                        "LogLevel=QUIET",
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "ServerAliveInterval=15",
                        "-o",
                        "ServerAliveCountMax=4",
                        host,
                    ]);
                    c.arg(rank_script(plan, remote_program, &args.command, cwd));
                    c
                }
            };
            // Own process group: a terminal Ctrl-C reaches only the launcher,
            // which forwards it once.
            cmd.process_group(0)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .stdin(if plan.ssh_host.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                });
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    launched.terminate_all(Duration::from_secs(2));
                    return Err(anyhow!("starting rank {rank}: {e}"));
                }
            };
            let stdout = child.stdout.take().expect("piped");
            let stderr = child.stderr.take().expect("piped");
            launched.pumps.push(pump(rank, stdout, false));
            launched.pumps.push(pump(rank, stderr, true));
            let stdin = child.stdin.take();
            let pid = child.id() as i32;
            let tx = launched.exits_tx.clone();
            std::thread::spawn(move || {
                if let Ok(st) = child.wait() {
                    let _ = tx.send((rank, st));
                }
            });
            launched.ranks.push(RankProc {
                rank,
                stdin,
                pid,
                remote: plan.ssh_host.is_some(),
                status: None,
            });
        }
        Ok(launched)
    }

    /// Reaps finished ranks; returns the newly failed ones in exit order.
    fn poll(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut failed = Vec::new();
        while let Ok((rank, st)) = self.exits.try_recv() {
            self.ranks[rank].status = Some(st);
            if !st.success() {
                failed.push((rank, st));
            }
        }
        failed
    }

    fn all_done(&self) -> bool {
        self.ranks.iter().all(|r| r.status.is_some())
    }

    fn signal_all(&mut self, sig: i32) {
        for r in &mut self.ranks {
            if r.status.is_some() {
                continue;
            }
            if r.remote && sig == libc::SIGINT {
                // ^C through the ssh pty reaches the remote rank as SIGINT.
                if let Some(stdin) = r.stdin.as_mut() {
                    let _ = stdin.write_all(&[3]);
                    let _ = stdin.flush();
                }
                continue;
            }
            let pid = r.pid;
            // SAFETY: kill(2) has no memory-safety preconditions. It
            // signals the rank's own process group (created with
            // process_group(0), so its id is the child's pid). The rank has
            // not been reported as exited; its reaper may have reaped it a
            // moment ago, a narrow window in which the id could be reused,
            // as with any supervisor that signals by pid.
            unsafe { libc::kill(-pid, sig) };
        }
    }

    /// SIGTERM to every running rank, then SIGKILL after `grace`.
    fn terminate_all(&mut self, grace: Duration) {
        self.signal_all(libc::SIGTERM);
        let start = Instant::now();
        while !self.all_done() && start.elapsed() < grace {
            self.poll();
            std::thread::sleep(Duration::from_millis(50));
        }
        if !self.all_done() {
            self.signal_all(libc::SIGKILL);
            let start = Instant::now();
            while !self.all_done() && start.elapsed() < Duration::from_secs(5) {
                self.poll();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn finish_output(&mut self) {
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }

    fn supervise(mut self, grace: Duration) -> Result<()> {
        let mut interrupted = 0usize;
        let mut failure: Option<(usize, ExitStatus)> = None;
        let mut also_failed: Vec<(usize, ExitStatus)> = Vec::new();
        loop {
            let mut failed = self.poll();
            if !failed.is_empty() && failure.is_none() {
                // A rank's death makes its peers' collectives fail a few
                // milliseconds later, which can race with reaping. Collect
                // what fails in a short window and blame, in order: a rank
                // killed by a signal (a crash; the peers exit with a status),
                // else the first to exit.
                let window = Instant::now();
                while window.elapsed() < Duration::from_millis(300) && !self.all_done() {
                    std::thread::sleep(Duration::from_millis(20));
                    failed.extend(self.poll());
                }
                let primary = failed
                    .iter()
                    .position(|(_, st)| st.signal().is_some())
                    .unwrap_or(0);
                let f = failed.remove(primary);
                say!(
                    "csm launch: rank {} {}; stopping the other ranks",
                    f.0,
                    describe(f.1)
                );
                failure = Some(f);
                also_failed = failed;
                self.terminate_all(grace);
            }
            if self.all_done() {
                break;
            }
            let sigints = SIGINTS.load(Ordering::SeqCst);
            if sigints > interrupted {
                if interrupted == 0 {
                    say!(
                        "csm launch: forwarding SIGINT to every rank (they save and stop); \
                         Ctrl-C again to terminate them"
                    );
                    self.signal_all(libc::SIGINT);
                } else {
                    say!("csm launch: terminating every rank");
                    self.terminate_all(grace);
                }
                interrupted = sigints;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.finish_output();
        if let Some((rank, st)) = failure {
            let also = if also_failed.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = also_failed
                    .iter()
                    .map(|(r, st)| format!("rank {r} {}", describe(*st)))
                    .collect();
                format!(" (then {})", list.join(", "))
            };
            bail!(
                "rank {rank} {}{also}; the other ranks were stopped",
                describe(st)
            );
        }
        if interrupted > 0 {
            let bad: Vec<String> = self
                .ranks
                .iter()
                .filter_map(|r| match r.status {
                    Some(st) if !st.success() => Some(format!("rank {} {}", r.rank, describe(st))),
                    _ => None,
                })
                .collect();
            if bad.is_empty() {
                bail!("interrupted; every rank stopped cleanly");
            }
            bail!("interrupted; {}", bad.join(", "));
        }
        Ok(())
    }
}

/// `--backend mpi`: hands the ranks to `mpirun` (which does its own process
/// management and output forwarding).
fn run_mpi(args: &LaunchArgs, hosts: Option<&[Host]>, n: usize) -> Result<()> {
    let program = match &args.exec {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.display().to_string(),
    };
    let tmp = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("mpirun");
    cmd.arg("-np").arg(n.to_string());
    if let Some(hosts) = hosts {
        let mut f = tmp.as_file();
        let mut counts: Vec<(String, usize)> = Vec::new();
        for h in hosts {
            match counts.iter_mut().find(|(name, _)| *name == h.ssh) {
                Some((_, c)) => *c += 1,
                None => counts.push((h.ssh.clone(), 1)),
            }
        }
        for (h, c) in counts {
            writeln!(f, "{h} slots={c}")?;
        }
        cmd.arg("--hostfile").arg(tmp.path());
    }
    let mut envs = vec!["MLX_DISTRIBUTED_BACKEND=mpi".to_string()];
    if let Some(t) = args.dist_timeout {
        envs.push(format!("CSM_DIST_TIMEOUT_SECS={t}"));
    }
    envs.extend(args.envs.iter().cloned());
    for e in &envs {
        cmd.arg("-x").arg(e);
    }
    cmd.arg("--").arg(&program).args(&args.command);
    let status = cmd
        .status()
        .context("starting mpirun (is MPI installed and on PATH?)")?;
    if !status.success() {
        bail!("mpirun {}", describe(status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn hostfile_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.json");
        std::fs::write(&p, r#"[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b"}]"#).unwrap();
        let (h, b, _) = read_hostfile(&p).unwrap();
        assert_eq!(h.len(), 2);
        assert!(b.is_none() && h[1].ips.is_empty());
        std::fs::write(
            &p,
            r#"{"backend": "nccl", "envs": ["A=1"], "hosts": [{"ssh": "a", "ips": ["x"]}]}"#,
        )
        .unwrap();
        let (h, b, e) = read_hostfile(&p).unwrap();
        assert_eq!((h.len(), b.as_deref(), e.len()), (1, Some("nccl"), 1));
        std::fs::write(&p, "[]").unwrap();
        assert!(read_hostfile(&p).is_err());
    }
}
