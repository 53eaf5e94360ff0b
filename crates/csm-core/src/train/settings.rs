//! Settings about the machine a job runs on, as opposed to the run itself.
//!
//! [`TrainConfig`](super::TrainConfig) says what to train and is written to
//! `config.json`, so that a run can be read back and resumed anywhere.
//! [`RunSettings`] says how this process runs it: where the codes cache
//! lives, which device, whether the step is compiled, which distributed
//! group to join. None of it belongs in `config.json`: the same run resumed
//! on another machine takes that machine's settings.
//!
//! csm-core reads no environment variables. The `csm` tool and the app read
//! them at their edge with [`RunSettings::from_env`], giving it
//! `|k| std::env::var_os(k)`, so both interpret `CSM_COMPILE`, `CSM_CACHE_DIR` and
//! the launch variables the same way; tests build settings by hand.

use std::ffi::OsString;
use std::path::PathBuf;

use super::auto_batch::AutoBatch;
use super::codes::CodesCache;
use crate::distributed::DistEnv;
use crate::model::TrainKernels;
use crate::runtime::DeviceChoice;

/// How and where this process runs a training job (see the module docs).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunSettings {
    /// Run the training step through `mx.compile` (`CSM_COMPILE=1`) or not
    /// (`CSM_COMPILE=0`); `None`: compiled on GPUs, not on the CPU
    /// ([`super::step::compile_step`]). Never with LoRA dropout, whose
    /// random mask would be frozen into the trace.
    pub compile: Option<bool>,
    /// Forms of the loss and attention ([`TrainKernels`]); `None`: the ones
    /// expected to pay on the device ([`TrainKernels::for_device`]).
    pub kernels: Option<TrainKernels>,
    /// Choose the batch size by memory (`--batch-size auto`,
    /// [`super::auto_batch`]); the choice replaces the config's
    /// `batch_size` and is written to `config.json`.
    pub auto_batch: Option<AutoBatch>,
    /// Root of the Mimi codes cache (see [`CodesCache::default_dir`]).
    pub codes_cache: PathBuf,
    /// The device MLX runs on.
    pub device: DeviceChoice,
    /// This process's distributed launch variables; empty: one process.
    pub distributed: DistEnv,
    /// Build each optimizer step's graph while the device still runs the
    /// step before (one process only): the host's part of a step (the
    /// batch, the compiled trace's replay, the update's graph) then costs
    /// the device no idle time. The same numbers either way; `CSM_PIPELINE=0`
    /// turns it off.
    pub pipeline: bool,
    /// Faults to inject, for the crash-recovery tests.
    #[cfg(feature = "fault-injection")]
    pub faults: FaultPlan,
}

impl RunSettings {
    /// One process on the best device, compiled on GPUs, with the codes
    /// cache under `codes_cache`.
    pub fn new(codes_cache: impl Into<PathBuf>) -> RunSettings {
        RunSettings {
            compile: None,
            kernels: None,
            auto_batch: None,
            codes_cache: codes_cache.into(),
            device: DeviceChoice::Best,
            distributed: DistEnv::default(),
            pipeline: true,
            #[cfg(feature = "fault-injection")]
            faults: FaultPlan::default(),
        }
    }

    /// The settings the variables given by `lookup` describe:
    /// `CSM_COMPILE=1` or `0`, `CSM_PIPELINE=0` or `1`, the codes cache of [`CodesCache::default_dir`], the
    /// distributed launch variables ([`DistEnv::VARS`]) and, with the
    /// `fault-injection` feature, [`FaultPlan::from_env`]. The `csm` tool
    /// and the app pass `|k| std::env::var_os(k)`.
    ///
    /// # Errors
    /// A `CSM_COMPILE` or `CSM_PIPELINE` other than `1` or `0`, or a `CSM_DEBUG_*` value that
    /// cannot be parsed (with `fault-injection`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<OsString>) -> Result<RunSettings, String> {
        let text = |k: &str| lookup(k).and_then(|v| v.into_string().ok());
        let mut s = RunSettings::new(CodesCache::default_dir(&lookup));
        s.compile = match text(COMPILE_ENV).as_deref() {
            None | Some("") => None,
            Some("1") => Some(true),
            Some("0") => Some(false),
            Some(other) => {
                return Err(format!(
                    "{COMPILE_ENV}={other:?}: expected 1 (compile the training step) or 0 (do not)"
                ))
            }
        };
        s.pipeline = match text(PIPELINE_ENV).as_deref() {
            None | Some("") | Some("1") => true,
            Some("0") => false,
            Some(other) => {
                return Err(format!(
                    "{PIPELINE_ENV}={other:?}: expected 1 (build a step while the one before runs, \
                     the default) or 0 (one after the other)"
                ))
            }
        };
        s.distributed = DistEnv::capture(text);
        #[cfg(feature = "fault-injection")]
        {
            s.faults = FaultPlan::from_env(&lookup)?;
        }
        Ok(s)
    }
}

/// The variable that turns the compiled training step on (`1`) or off
/// (`0`).
pub const COMPILE_ENV: &str = "CSM_COMPILE";

/// The variable that turns the step pipeline ([`RunSettings::pipeline`])
/// off (`0`).
pub const PIPELINE_ENV: &str = "CSM_PIPELINE";

/// Faults the crash-recovery tests inject into a run, each at the start of
/// an optimizer step (1-based). Only with the `fault-injection` feature,
/// which the CLI's tests turn on; a release `csm` has none of this.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// `(rank, step)`: that rank aborts (SIGABRT).
    pub abort_at: Option<(usize, usize)>,
    /// `(rank, step)`: that rank sends itself SIGKILL, so nothing at all
    /// runs after it (no destructor, no handler, no flush).
    pub kill_at: Option<(usize, usize)>,
    /// The step whose gradients become NaN (the non-finite stop must catch
    /// it).
    pub nan_at: Option<usize>,
}

#[cfg(feature = "fault-injection")]
impl FaultPlan {
    /// `CSM_DEBUG_ABORT_AT_STEP=R:S`, `CSM_DEBUG_KILL_AT_STEP=R:S` and
    /// `CSM_DEBUG_NAN_AT_STEP=S` from `lookup`.
    ///
    /// # Errors
    /// A value that is not of that form, naming the variable.
    pub fn from_env(lookup: impl Fn(&str) -> Option<OsString>) -> Result<FaultPlan, String> {
        let get = |var: &str| -> Result<Option<String>, String> {
            lookup(var)
                .map(|v| {
                    v.into_string()
                        .map_err(|v| format!("{var}={v:?}: not UTF-8"))
                })
                .transpose()
        };
        let number = |var: &str, s: &str| -> Result<usize, String> {
            s.trim()
                .parse()
                .map_err(|_| format!("{var}={s:?}: expected a number"))
        };
        let rank_step = |var: &str| -> Result<Option<(usize, usize)>, String> {
            get(var)?
                .map(|v| match v.split_once(':') {
                    Some((r, s)) => Ok((number(var, r)?, number(var, s)?)),
                    None => Err(format!("{var}={v:?}: expected RANK:STEP")),
                })
                .transpose()
        };
        Ok(FaultPlan {
            abort_at: rank_step("CSM_DEBUG_ABORT_AT_STEP")?,
            kill_at: rank_step("CSM_DEBUG_KILL_AT_STEP")?,
            nan_at: get("CSM_DEBUG_NAN_AT_STEP")?
                .map(|v| number("CSM_DEBUG_NAN_AT_STEP", &v))
                .transpose()?,
        })
    }

    /// Runs the crash planned for rank `rank` at the start of optimizer
    /// step `step` (1-based), once the step before has been reported:
    /// aborts or kills the process here.
    pub(crate) fn crash_at_step_start(&self, rank: usize, step: usize) {
        if self.abort_at == Some((rank, step)) {
            tracing::error!("CSM_DEBUG_ABORT_AT_STEP: rank {rank} aborting at step {step}");
            std::process::abort();
        }
        if self.kill_at == Some((rank, step)) {
            tracing::error!("CSM_DEBUG_KILL_AT_STEP: rank {rank} killing itself at step {step}");
            #[cfg(unix)]
            // SAFETY: getpid and kill have no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            std::process::abort();
        }
    }

    /// Whether optimizer step `step`'s gradients become NaN.
    pub(crate) fn nan_at_step(&self, step: usize) -> bool {
        self.nan_at == Some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn from_env_reads_compile_cache_and_launch_variables() {
        let s = RunSettings::from_env(vars(&[
            ("CSM_COMPILE", "1"),
            ("CSM_CACHE_DIR", "/c"),
            ("MLX_RANK", "1"),
        ]))
        .unwrap();
        assert_eq!(s.compile, Some(true));
        assert_eq!(s.codes_cache, PathBuf::from("/c/codes"));
        assert_eq!(s.distributed.get("MLX_RANK"), Some("1"));
        // "0" forces it off; unset leaves it to the device; others are errors.
        let off = RunSettings::from_env(vars(&[("CSM_COMPILE", "0")])).unwrap();
        assert_eq!(off.compile, Some(false));
        let e = RunSettings::from_env(vars(&[("CSM_COMPILE", "yes")])).unwrap_err();
        assert!(e.contains("CSM_COMPILE=\"yes\""), "{e}");
        let s = RunSettings::from_env(vars(&[("HOME", "/h")])).unwrap();
        assert_eq!(s.compile, None);
        assert!(s.pipeline);
        assert_eq!(s.codes_cache, PathBuf::from("/h/.cache/csm/codes"));
        assert_eq!(s.distributed, DistEnv::default());
        let off = RunSettings::from_env(vars(&[("CSM_PIPELINE", "0")])).unwrap();
        assert!(!off.pipeline);
        let e = RunSettings::from_env(vars(&[("CSM_PIPELINE", "no")])).unwrap_err();
        assert!(e.contains("CSM_PIPELINE=\"no\""), "{e}");
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn fault_plan_parses_and_names_bad_values() {
        let f = FaultPlan::from_env(vars(&[
            ("CSM_DEBUG_KILL_AT_STEP", "0:6"),
            ("CSM_DEBUG_NAN_AT_STEP", "5"),
        ]))
        .unwrap();
        assert_eq!(
            f,
            FaultPlan {
                abort_at: None,
                kill_at: Some((0, 6)),
                nan_at: Some(5)
            }
        );
        let e = FaultPlan::from_env(vars(&[("CSM_DEBUG_ABORT_AT_STEP", "3")])).unwrap_err();
        assert!(e.contains("CSM_DEBUG_ABORT_AT_STEP"), "{e}");
    }
}
