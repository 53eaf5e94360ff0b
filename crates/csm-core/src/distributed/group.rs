//! MLX's distributed group: set-up (bounded by the watchdog) and the
//! collectives the trainer uses (`all_sum`, `all_mean`, gradient
//! averaging).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype, Stream};

use super::plan::{plan, DistEnv, Plan};
use super::watchdog::{progress_path, Identity, Watchdog};
use super::{mlx_err, DistError};
use crate::ffi::mlx_call;

/// Statistics of one [`Group::average_gradients`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReduceStats {
    /// Collectives issued (one per gradient dtype; 0 on a single process).
    pub collectives: usize,
    /// Gradient tensors averaged.
    pub tensors: usize,
    /// Bytes of gradient data reduced per rank (the packed buffers' size).
    pub payload_bytes: u64,
    /// Estimated bytes each rank sends: a ring all-reduce sends
    /// `2 (n - 1) / n` times the payload (reduce-scatter + all-gather).
    pub bytes_sent_per_rank: u64,
    /// Wall time of the collectives alone (packing is evaluated first).
    pub elapsed: Duration,
}

/// A set of processes that reduce arrays together: MLX's distributed group,
/// plus this crate's watchdog.
///
/// Create it once per process with [`Group::init`]. MLX keeps the
/// connections of an initialised backend for the life of the process, so
/// dropping a `Group` frees only this handle.
pub struct Group {
    raw: mlx_sys::mlx_distributed_group,
    rank: usize,
    size: usize,
    backend: String,
    stream: Option<Stream>,
    watchdog: Option<Watchdog>,
    seq: AtomicU64,
    layout_checked: AtomicBool,
    progress_dir: Option<PathBuf>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("backend", &self.backend)
            .field("timeout", &self.timeout())
            .finish()
    }
}

impl Group {
    /// A group of one: collectives return their input.
    pub fn single() -> Group {
        Group {
            // SAFETY: creates an empty handle (null context); Drop frees it.
            raw: unsafe { mlx_sys::mlx_distributed_group_new() },
            rank: 0,
            size: 1,
            backend: "none".into(),
            stream: None,
            watchdog: None,
            seq: AtomicU64::new(0),
            layout_checked: AtomicBool::new(false),
            progress_dir: None,
        }
    }

    /// Joins the distributed group that `env` describes (the launch
    /// variables of this process, see [`DistEnv`]).
    ///
    /// `backend`: `ring`, `mpi`, `nccl`, `jaccl`, `jaccl-ring` or `any`;
    /// `None` reads `MLX_DISTRIBUTED_BACKEND`, else guesses from which
    /// variables are set (`MLX_HOSTFILE` → ring, `MLX_IBV_DEVICES` → jaccl,
    /// `NCCL_HOST_IP` → nccl, MPI's → mpi).
    ///
    /// Without any configuration, returns [`Group::single`] unless `strict`.
    /// A ring hostfile listing one rank also gives a single group. Set-up is
    /// bounded by `CSM_DIST_TIMEOUT_SECS` like every collective (ring ranks
    /// wait in `accept` for their neighbour).
    ///
    /// # Errors
    /// A variable, hostfile or rank that does not fit (named), a backend
    /// this libmlx lacks, or MLX failing to connect.
    pub fn init(env: &DistEnv, backend: Option<&str>, strict: bool) -> Result<Group, DistError> {
        let timeout = env.timeout()?;
        let (name, known_rank) = match plan(env, backend, strict)? {
            Plan::Single => return Ok(Group::single()),
            Plan::Backend { name, rank } => (name, rank),
        };
        let c_name =
            CString::new(name.clone()).map_err(|_| DistError::UnknownBackend(name.clone()))?;
        if name != "any" {
            // SAFETY: c_name is a valid NUL-terminated string for the call.
            let available = unsafe { mlx_sys::mlx_distributed_is_available(c_name.as_ptr()) };
            if !available {
                return Err(DistError::Unavailable(name));
            }
        }
        let progress_dir = env.progress_dir();
        let watchdog = timeout.map(|t| {
            Watchdog::new(
                t,
                Identity {
                    rank: known_rank,
                    size: None,
                    backend: name.clone(),
                    progress_dir: progress_dir.clone(),
                },
            )
        });

        // SAFETY: creates an empty handle that mlx_distributed_init fills.
        let mut raw = unsafe { mlx_sys::mlx_distributed_group_new() };
        let result = {
            let _armed = watchdog
                .as_ref()
                .map(|w| w.arm(format!("setting up the {name} group"), 0));
            // SAFETY: `raw` is a valid handle to write into; c_name outlives
            // the call. Errors are reported through the chained handler.
            mlx_call(|| unsafe { mlx_sys::mlx_distributed_init(&mut raw, strict, c_name.as_ptr()) })
        };
        if let Err(message) = result {
            // SAFETY: frees the handle created above (empty or filled).
            unsafe { mlx_sys::mlx_distributed_group_free(raw) };
            return Err(DistError::Init {
                backend: name,
                rank: known_rank.map_or("?".into(), |r| r.to_string()),
                message,
            });
        }
        // SAFETY: `raw` was filled by a successful mlx_distributed_init.
        let (rank, size) = unsafe {
            (
                mlx_sys::mlx_distributed_group_rank(raw),
                mlx_sys::mlx_distributed_group_size(raw),
            )
        };
        let (rank, size) = (rank.max(0) as usize, size.max(1) as usize);
        if let Some(w) = &watchdog {
            w.set_identity(rank, size);
        }
        let stream = if name == "nccl" {
            Stream::gpu()
        } else {
            // Ring, MPI and JACCL run their collectives on the CPU
            // (`communication_stream` picks `Device::cpu` in MLX).
            Stream::cpu()
        };
        let backend = if size == 1 { "none".into() } else { name };
        Ok(Group {
            raw,
            rank,
            size,
            backend,
            stream: Some(stream),
            watchdog: if size > 1 { watchdog } else { None },
            seq: AtomicU64::new(0),
            layout_checked: AtomicBool::new(false),
            progress_dir,
        })
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Backend name (`ring`, `nccl`, `mpi`, `jaccl`, ...; `none` for one
    /// process).
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Whether there is more than one process.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// Whether this is rank 0 (the one that logs and saves).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The watchdog's bound on one collective (`None` = unbounded or single).
    pub fn timeout(&self) -> Option<Duration> {
        self.watchdog.as_ref().map(Watchdog::timeout)
    }

    /// Collectives run so far.
    pub fn collectives_run(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Estimated bytes one rank sends in a ring all-reduce of `payload`
    /// bytes: `2 (n - 1) / n * payload`.
    pub fn ring_bytes_sent(&self, payload: u64) -> u64 {
        let n = self.size as u64;
        if n <= 1 {
            0
        } else {
            2 * (n - 1) * payload / n
        }
    }

    /// Sum of `x` over all ranks, evaluated. `x` is evaluated first, so the
    /// watchdog times only the communication. Returns `x` itself on one
    /// process.
    pub fn all_sum(&self, x: &Array) -> Result<Array, DistError> {
        if !self.is_distributed() {
            return Ok(x.clone());
        }
        x.eval()
            .map_err(mlx_err("evaluating the input of all_sum"))?;
        self.all_sum_evaluated(x, "all_sum")
    }

    /// Mean of `x` over all ranks, evaluated, in `x`'s dtype (f32 for
    /// integer and bool inputs).
    pub fn all_mean(&self, x: &Array) -> Result<Array, DistError> {
        if !self.is_distributed() {
            return scale(x, 1.0);
        }
        let sum = self.all_sum(x)?;
        let mean = scale(&sum, 1.0 / self.size as f32)?;
        mean.eval()
            .map_err(mlx_err("all_mean: dividing by the group size"))?;
        Ok(mean)
    }

    /// Like [`Group::all_sum`] with an explicit bound instead of the
    /// group's (`CSM_DIST_TIMEOUT_SECS`); the process still ends when it is
    /// exceeded, since MLX cannot cancel a collective.
    pub fn all_sum_with_timeout(&self, x: &Array, timeout: Duration) -> Result<Array, DistError> {
        if !self.is_distributed() {
            return Ok(x.clone());
        }
        x.eval()
            .map_err(mlx_err("evaluating the input of all_sum"))?;
        let dog = Watchdog::new(
            timeout,
            Identity {
                rank: Some(self.rank),
                size: Some(self.size),
                backend: self.backend.clone(),
                progress_dir: self.progress_dir.clone(),
            },
        );
        self.collective(x, "all_sum", Some(&dog))
    }

    /// Averages a whole gradient set across ranks in place, with one
    /// all-reduce per dtype: flattens and concatenates the gradients into one
    /// buffer, sums it across ranks, divides by the size and splits it back.
    /// Returns the payload, the estimated bytes sent and the collective time.
    ///
    /// Every rank must pass the same names, shapes and dtypes. The first
    /// call checks that with two tiny extra collectives (all-max and all-min
    /// of a layout hash) and fails with [`DistError::LayoutMismatch`].
    pub fn average_gradients(
        &self,
        grads: &mut BTreeMap<String, Array>,
    ) -> Result<ReduceStats, DistError> {
        let mut stats = ReduceStats {
            tensors: grads.len(),
            ..ReduceStats::default()
        };
        if !self.is_distributed() {
            return Ok(stats);
        }
        if !self.layout_checked.load(Ordering::Relaxed) {
            self.check_layout(grads)?;
            self.layout_checked.store(true, Ordering::Relaxed);
        }
        if grads.is_empty() {
            return Ok(stats);
        }
        // Group by dtype so no gradient changes precision in transit.
        let mut by_dtype: Vec<(Dtype, Vec<String>)> = Vec::new();
        for (name, g) in grads.iter() {
            let dt = g.dtype();
            match by_dtype.iter_mut().find(|(d, _)| *d == dt) {
                Some((_, names)) => names.push(name.clone()),
                None => by_dtype.push((dt, vec![name.clone()])),
            }
        }
        let inv = 1.0 / self.size as f32;
        for (dtype, names) in by_dtype {
            let mut flat = Vec::with_capacity(names.len());
            let mut offsets = Vec::with_capacity(names.len());
            let mut total: i64 = 0;
            for name in &names {
                let g = &grads[name];
                flat.push(
                    g.reshape(&[-1])
                        .map_err(mlx_err(format!("flattening gradient {name:?}")))?,
                );
                total += g.size() as i64;
                offsets.push(total);
            }
            let packed = if flat.len() == 1 {
                flat.pop().expect("one element")
            } else {
                mlx_rs::ops::concatenate(&flat, 0).map_err(mlx_err(format!(
                    "packing {} {dtype:?} gradients",
                    names.len()
                )))?
            };
            packed
                .eval()
                .map_err(mlx_err("evaluating the gradients before the all-reduce"))?;
            let payload = packed.nbytes() as u64;
            let started = Instant::now();
            let summed = self.all_sum_evaluated(&packed, "all_sum (average_gradients)")?;
            stats.elapsed += started.elapsed();
            stats.collectives += 1;
            stats.payload_bytes += payload;
            stats.bytes_sent_per_rank += self.ring_bytes_sent(payload);

            let mean = scale(&summed, inv)?;
            offsets.pop(); // the last offset is the end
            let split_at: Vec<i32> = offsets
                .iter()
                .map(|&o| i32::try_from(o))
                .collect::<Result<_, _>>()
                .map_err(|_| DistError::Mlx {
                    what: "average_gradients".into(),
                    source: Exception::custom(format!(
                        "{total} {dtype:?} gradient elements exceed MLX's 32-bit split indices"
                    )),
                })?;
            let parts = if split_at.is_empty() {
                vec![mean]
            } else {
                mean.split_at_indices(&split_at, 0)
                    .map_err(mlx_err("splitting the averaged gradients"))?
            };
            for (name, part) in names.iter().zip(parts) {
                let shape = grads[name].shape().to_vec();
                let restored = part
                    .reshape(&shape)
                    .map_err(mlx_err(format!("reshaping averaged gradient {name:?}")))?;
                grads.insert(name.clone(), restored);
            }
        }
        Ok(stats)
    }

    /// Checks once that every rank passes the same gradient names, shapes
    /// and dtypes (otherwise the packed buffers differ and the all-reduce
    /// mixes unrelated values or hangs): the all-max and all-min of a hash
    /// of the layout must agree.
    fn check_layout(&self, grads: &BTreeMap<String, Array>) -> Result<(), DistError> {
        let sig = layout_signature(grads);
        let x = Array::from_slice(&sig, &[sig.len() as i32]);
        let hi = self.reduce(
            &x,
            "all_max (gradient layout check)",
            Reduce::Max,
            self.watchdog.as_ref(),
        )?;
        let lo = self.reduce(
            &x,
            "all_min (gradient layout check)",
            Reduce::Min,
            self.watchdog.as_ref(),
        )?;
        if hi.as_slice::<i32>() != lo.as_slice::<i32>() {
            return Err(DistError::LayoutMismatch {
                rank: self.rank,
                tensors: grads.len(),
            });
        }
        Ok(())
    }

    /// `all_sum` of an already evaluated array under the group's watchdog.
    fn all_sum_evaluated(&self, x: &Array, op: &'static str) -> Result<Array, DistError> {
        self.collective(x, op, self.watchdog.as_ref())
    }

    fn collective(
        &self,
        x: &Array,
        op: &'static str,
        dog: Option<&Watchdog>,
    ) -> Result<Array, DistError> {
        self.reduce(x, op, Reduce::Sum, dog)
    }

    fn reduce(
        &self,
        x: &Array,
        op: &'static str,
        reduce: Reduce,
        dog: Option<&Watchdog>,
    ) -> Result<Array, DistError> {
        type RawReduce = unsafe extern "C" fn(
            *mut mlx_sys::mlx_array,
            mlx_sys::mlx_array,
            mlx_sys::mlx_distributed_group,
            mlx_sys::mlx_stream,
        ) -> std::ffi::c_int;
        let raw_op: RawReduce = match reduce {
            Reduce::Sum => mlx_sys::mlx_distributed_all_sum,
            Reduce::Max => mlx_sys::mlx_distributed_all_max,
            Reduce::Min => mlx_sys::mlx_distributed_all_min,
        };
        let fail = |message: String| DistError::Collective {
            op,
            rank: self.rank,
            size: self.size,
            backend: self.backend.clone(),
            message,
        };
        let stream = self
            .stream
            .as_ref()
            .expect("distributed groups have a stream");
        // SAFETY: a fresh empty array handle for mlx-c to fill.
        let mut res = unsafe { mlx_sys::mlx_array_new() };
        // SAFETY: `x`, `self.raw` and `stream` are live handles for the call;
        // `res` is a valid out-parameter.
        let built = mlx_call(|| unsafe { raw_op(&mut res, x.as_ptr(), self.raw, stream.as_ptr()) });
        if let Err(message) = built {
            // SAFETY: frees the handle created above, never handed out.
            unsafe { mlx_sys::mlx_array_free(res) };
            return Err(fail(message));
        }
        // SAFETY: `res` was filled by mlx-c and is owned by nobody else; the
        // Array now owns it and frees it on drop.
        let out = unsafe { Array::from_ptr(res) };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.record_progress(seq);
        let _armed = dog.map(|d| d.arm(format!("{op} of {} bytes", x.nbytes()), seq));
        out.eval().map_err(|e| fail(e.what().to_string()))?;
        Ok(out)
    }

    /// Writes this rank's last entered collective to the progress directory.
    fn record_progress(&self, seq: u64) {
        if let Some(dir) = &self.progress_dir {
            let _ = std::fs::write(
                progress_path(dir, self.rank),
                format!("{seq} {}\n", std::process::id()),
            );
        }
    }
}

/// Which reduction a collective performs.
#[derive(Debug, Clone, Copy)]
enum Reduce {
    Sum,
    Max,
    Min,
}

/// A hash of a gradient set's names, shapes and dtypes, as five
/// non-negative `i32` (tensor count, then four 16-bit pieces of FNV-1a 64).
fn layout_signature(grads: &BTreeMap<String, Array>) -> [i32; 5] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, g) in grads {
        eat(name.as_bytes());
        eat(&[0]);
        for d in g.shape() {
            eat(&d.to_le_bytes());
        }
        eat(format!("{:?}", g.dtype()).as_bytes());
        eat(&[0xff]);
    }
    let piece = |k: u32| ((h >> (16 * k)) & 0xffff) as i32;
    [
        (grads.len() as i32) & 0x7fff_ffff,
        piece(0),
        piece(1),
        piece(2),
        piece(3),
    ]
}

/// `x * factor` in `x`'s dtype (f32 for integer and bool arrays, whose
/// mean is not an integer).
fn scale(x: &Array, factor: f32) -> Result<Array, DistError> {
    if !x.dtype().is_inexact() {
        let xf = x
            .as_dtype(Dtype::Float32)
            .map_err(mlx_err("casting to f32 for the mean"))?;
        return scale(&xf, factor);
    }
    let f = Array::from_f32(factor)
        .as_dtype(x.dtype())
        .map_err(mlx_err("casting the averaging factor"))?;
    x.multiply(&f).map_err(mlx_err("scaling by 1/size"))
}

impl Drop for Group {
    fn drop(&mut self) {
        // Stop the watchdog before the handle goes.
        self.watchdog = None;
        // SAFETY: `raw` came from mlx_distributed_group_new/init and is freed
        // exactly once; MLX keeps its own reference to the backend.
        unsafe { mlx_sys::mlx_distributed_group_free(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlx_errors_are_captured_and_mlx_rs_still_gets_its_own() {
        // Ours: an unknown backend name, straight to mlx-c.
        let name = CString::new("carrier-pigeon").unwrap();
        // SAFETY: an empty handle, freed below; `name` outlives the call.
        let mut raw = unsafe { mlx_sys::mlx_distributed_group_new() };
        let err =
            mlx_call(|| unsafe { mlx_sys::mlx_distributed_init(&mut raw, true, name.as_ptr()) })
                .unwrap_err();
        // SAFETY: frees the handle created above.
        unsafe { mlx_sys::mlx_distributed_group_free(raw) };
        assert!(err.contains("carrier-pigeon"), "{err}");
        // mlx-rs's own errors still reach mlx-rs through the chained handler.
        let e = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])
            .reshape(&[2, 2])
            .unwrap_err();
        assert!(e.what().contains("reshape"), "{}", e.what());
    }

    #[test]
    fn layout_signature_sees_shapes_and_dtypes() {
        let a = BTreeMap::from([("w".to_string(), Array::from_slice(&[0.0f32; 6], &[2, 3]))]);
        let b = BTreeMap::from([("w".to_string(), Array::from_slice(&[0.0f32; 6], &[3, 2]))]);
        let c = BTreeMap::from([("v".to_string(), Array::from_slice(&[0.0f32; 6], &[2, 3]))]);
        assert_ne!(layout_signature(&a), layout_signature(&b));
        assert_ne!(layout_signature(&a), layout_signature(&c));
        assert_eq!(layout_signature(&a), layout_signature(&a.clone()));
        assert!(layout_signature(&a).iter().all(|v| *v >= 0));
    }

    #[test]
    fn ring_bytes_estimate() {
        let mut g = Group::single();
        assert_eq!(g.ring_bytes_sent(1000), 0);
        g.size = 4;
        assert_eq!(g.ring_bytes_sent(1000), 1500);
        g.size = 1;
    }
}
