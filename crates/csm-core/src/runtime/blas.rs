//! Which OpenBLAS kernels run on this x86-64 CPU, and the better choice
//! when OpenBLAS does not know the CPU.
//!
//! Debian 12's OpenBLAS (0.3.21, built with `DYNAMIC_ARCH`) picks its kernel
//! set from the CPU model when it loads. CPUs newer than its tables (Intel
//! Sapphire Rapids and later Xeons, with AVX-512 and AMX) get its generic
//! `Prescott` kernels: f32 matmul at 31-53 GFLOP/s where the AVX-512 kernels
//! reach 231 on the same two cores, and a CSM-1B training step 4x slower
//! (issue 19's measurements on such a Xeon). OpenBLAS reads the choice only
//! from `OPENBLAS_CORETYPE`, and only at load time, which is before `main`.
//! So a binary that finds generic kernels on a CPU with better ones starts
//! itself again with `OPENBLAS_CORETYPE` set ([`reexec_with_better_kernels`],
//! first thing in `main`); the `csm` tool and the app do.

use std::ffi::OsString;

/// Kernel families of OpenBLAS, by the widest instructions they use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// SSE only (`Prescott`, `Core2`, `Nehalem`, `Atom`, ...): generic.
    Sse,
    /// AVX without FMA (`Sandybridge`, `Bulldozer`, ...).
    Avx,
    /// AVX2 + FMA (`Haswell`, `Zen`, `Excavator`).
    Avx2,
    /// AVX-512 (`SkylakeX`, `Cooperlake`, `SapphireRapids`).
    Avx512,
}

/// The tier of an OpenBLAS core name (`openblas_get_corename`).
pub fn tier_of(core: &str) -> Tier {
    let core = core.to_ascii_lowercase();
    let any = |names: &[&str]| names.iter().any(|n| core.contains(n));
    if any(&["skylakex", "cooperlake", "sapphirerapids"]) {
        Tier::Avx512
    } else if any(&["haswell", "zen", "excavator"]) {
        Tier::Avx2
    } else if any(&["sandybridge", "bulldozer", "piledriver", "steamroller"]) {
        Tier::Avx
    } else {
        Tier::Sse
    }
}

/// The instruction sets of a CPU that decide its best kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// AVX-512 F, BW, VL, DQ and CD (what OpenBLAS's SkylakeX kernels use).
    pub avx512: bool,
    /// AVX-512 BF16 (Cooperlake's extra kernels).
    pub avx512_bf16: bool,
    /// AVX2 and FMA.
    pub avx2_fma: bool,
    /// AVX.
    pub avx: bool,
}

impl CpuFeatures {
    /// What this CPU supports (all false off x86-64).
    pub fn detect() -> CpuFeatures {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            CpuFeatures {
                avx512: has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512vl")
                    && has!("avx512dq")
                    && has!("avx512cd"),
                avx512_bf16: has!("avx512bf16"),
                avx2_fma: has!("avx2") && has!("fma"),
                avx: has!("avx"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::default()
    }

    /// The OpenBLAS core type (an `OPENBLAS_CORETYPE` value) that uses the
    /// widest instructions this CPU has, and its tier.
    pub fn best_core(self) -> Option<(&'static str, Tier)> {
        if self.avx512 && self.avx512_bf16 {
            Some(("Cooperlake", Tier::Avx512))
        } else if self.avx512 {
            Some(("SkylakeX", Tier::Avx512))
        } else if self.avx2_fma {
            Some(("Haswell", Tier::Avx2))
        } else if self.avx {
            Some(("Sandybridge", Tier::Avx))
        } else {
            None
        }
    }
}

/// OpenBLAS runs narrower kernels than the CPU supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlasAdvice {
    /// The core OpenBLAS chose (`Prescott`, ...).
    pub chosen: String,
    /// The `OPENBLAS_CORETYPE` that fits the CPU (`SkylakeX`, ...).
    pub recommended: &'static str,
}

/// The advice for OpenBLAS core `chosen` on a CPU with `cpu`: `None` where
/// the chosen kernels already use the CPU's widest instructions.
pub fn advice_for(chosen: &str, cpu: CpuFeatures) -> Option<BlasAdvice> {
    let (recommended, best) = cpu.best_core()?;
    (tier_of(chosen) < best).then(|| BlasAdvice {
        chosen: chosen.to_string(),
        recommended,
    })
}

/// The advice for this process: `None` where OpenBLAS is not the BLAS or
/// its kernels fit the CPU.
pub fn advice() -> Option<BlasAdvice> {
    advice_for(&super::openblas_core()?, CpuFeatures::detect())
}

/// The CPU's model name, for messages next to kernel choices (Linux:
/// `model name` in `/proc/cpuinfo`; `None` elsewhere or when absent).
pub fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
}

/// Set on the restarted process, so it never restarts twice; its value is
/// the core OpenBLAS had chosen.
pub const REEXEC_MARKER: &str = "CSM_BLAS_CHOSE";

/// How this process's BLAS kernels came to be (for `csm info` and the
/// app's start-up check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelOrigin {
    /// OpenBLAS's own choice, and it fits the CPU.
    Fits,
    /// This program restarted itself with `OPENBLAS_CORETYPE` because
    /// OpenBLAS had chosen `chosen`.
    SetByUs {
        /// What OpenBLAS had chosen.
        chosen: String,
    },
    /// Narrower kernels than the CPU supports are running (the user's own
    /// `OPENBLAS_CORETYPE`, or the restart failed).
    Narrow(BlasAdvice),
}

/// How this process's kernels came to be; `lookup` reads the environment.
pub fn kernel_origin(lookup: impl Fn(&str) -> Option<OsString>) -> KernelOrigin {
    match advice() {
        Some(a) => KernelOrigin::Narrow(a),
        None => match lookup(REEXEC_MARKER) {
            Some(chosen) => KernelOrigin::SetByUs {
                chosen: chosen.to_string_lossy().into_owned(),
            },
            None => KernelOrigin::Fits,
        },
    }
}

/// Whether a binary should restart itself with better kernels: OpenBLAS
/// chose narrow ones, the user did not set `OPENBLAS_CORETYPE` and this is
/// not the restarted process already.
pub fn restart_advice(lookup: impl Fn(&str) -> Option<OsString>) -> Option<BlasAdvice> {
    if lookup("OPENBLAS_CORETYPE").is_some() || lookup(REEXEC_MARKER).is_some() {
        return None;
    }
    advice()
}

/// Restarts this program (same executable, arguments and environment)
/// with `OPENBLAS_CORETYPE` set where [`restart_advice`] says so. Call it
/// first thing in `main`, before any thread starts. Returns only when no
/// restart was needed (`Ok`) or when it failed (`Err`: the program goes on
/// with the narrow kernels, and [`kernel_origin`] reports it).
///
/// # Errors
/// The executable cannot be found or `exec` fails.
pub fn reexec_with_better_kernels(
    lookup: impl Fn(&str) -> Option<OsString>,
) -> std::io::Result<()> {
    let Some(advice) = restart_advice(lookup) else {
        return Ok(());
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("OPENBLAS_CORETYPE", advice.recommended)
            .env(REEXEC_MARKER, &advice.chosen)
            .exec();
        Err(err)
    }
    #[cfg(not(unix))]
    {
        let _ = advice;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAPPHIRE_RAPIDS: CpuFeatures = CpuFeatures {
        avx512: true,
        avx512_bf16: true,
        avx2_fma: true,
        avx: true,
    };
    const SKYLAKE_SP: CpuFeatures = CpuFeatures {
        avx512: true,
        avx512_bf16: false,
        avx2_fma: true,
        avx: true,
    };
    const HASWELL: CpuFeatures = CpuFeatures {
        avx512: false,
        avx512_bf16: false,
        avx2_fma: true,
        avx: true,
    };

    #[test]
    fn generic_kernels_on_an_avx512_cpu_get_the_avx512_set() {
        let a = advice_for("Prescott", SAPPHIRE_RAPIDS).unwrap();
        assert_eq!(
            (a.chosen.as_str(), a.recommended),
            ("Prescott", "Cooperlake")
        );
        assert_eq!(
            advice_for("Prescott", SKYLAKE_SP).unwrap().recommended,
            "SkylakeX"
        );
        // AVX2 kernels on an AVX-512 CPU are narrower too (about 1.5x on
        // the project's EPYC).
        assert_eq!(
            advice_for("Zen", SKYLAKE_SP).unwrap().recommended,
            "SkylakeX"
        );
    }

    #[test]
    fn fitting_kernels_get_no_advice() {
        for (core, cpu) in [
            ("Cooperlake", SAPPHIRE_RAPIDS),
            ("SkylakeX", SAPPHIRE_RAPIDS),
            ("SapphireRapids", SAPPHIRE_RAPIDS),
            ("Haswell", HASWELL),
            ("Zen", HASWELL),
        ] {
            assert_eq!(advice_for(core, cpu), None, "{core}");
        }
        assert_eq!(advice_for("Prescott", CpuFeatures::default()), None);
        assert_eq!(
            advice_for("Nehalem", HASWELL).unwrap().recommended,
            "Haswell"
        );
    }

    #[test]
    fn tiers_follow_the_instruction_sets() {
        assert_eq!(tier_of("Prescott"), Tier::Sse);
        assert_eq!(tier_of("Sandybridge"), Tier::Avx);
        assert_eq!(tier_of("Haswell"), Tier::Avx2);
        assert_eq!(tier_of("Zen"), Tier::Avx2);
        assert_eq!(tier_of("SkylakeX"), Tier::Avx512);
        assert!(Tier::Sse < Tier::Avx && Tier::Avx2 < Tier::Avx512);
    }

    #[test]
    fn a_user_choice_or_a_restart_is_never_overridden() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            restart_advice(env(&[("OPENBLAS_CORETYPE", "Prescott")])),
            None
        );
        assert_eq!(restart_advice(env(&[(REEXEC_MARKER, "Prescott")])), None);
    }

    #[test]
    fn this_process_reports_where_its_kernels_came_from() {
        // On this machine's own choice (no variables), the report agrees
        // with the advice computed from the CPU and OpenBLAS's core.
        let origin = kernel_origin(|_| None);
        match advice() {
            Some(a) => assert_eq!(origin, KernelOrigin::Narrow(a)),
            None => assert_eq!(origin, KernelOrigin::Fits),
        }
    }
}
