//! Planning: what the launch variables say about this process's place in
//! a group (backend, rank, size, bound on a collective), checked before MLX
//! sees them. Pure logic over a [`DistEnv`]; nothing here touches MLX.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{DistError, BACKEND_ENV, DEFAULT_TIMEOUT_SECS, PROGRESS_DIR_ENV, TIMEOUT_ENV};

/// The distributed launch variables of this process, as its caller read
/// them: `csm launch`, `mlx.launch` or `mpirun` set them, the `csm` tool
/// captures them with `DistEnv::capture(|k| std::env::var(k).ok())`, and
/// [`Group::init`](super::Group::init) plans from them. An empty `DistEnv`
/// means one process.
///
/// MLX's backends read the same variables from the process environment
/// when the group is set up (mlx-c takes no other configuration), so a
/// `DistEnv` must describe this process's environment; planning from it
/// first is what turns MLX's terse failures into messages that name the
/// variable at fault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistEnv {
    vars: BTreeMap<String, String>,
}

impl DistEnv {
    /// Every variable planning reads.
    pub const VARS: &'static [&'static str] = &[
        BACKEND_ENV,
        "MLX_HOSTFILE",
        "MLX_RANK",
        "MLX_WORLD_SIZE",
        "MLX_IBV_DEVICES",
        "MLX_JACCL_COORDINATOR",
        "NCCL_HOST_IP",
        "NCCL_PORT",
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MV2_COMM_WORLD_SIZE",
        TIMEOUT_ENV,
        PROGRESS_DIR_ENV,
    ];

    /// Captures [`DistEnv::VARS`] through `lookup`; empty values count as
    /// unset.
    pub fn capture(lookup: impl Fn(&str) -> Option<String>) -> DistEnv {
        let mut env = DistEnv::default();
        for var in Self::VARS {
            if let Some(v) = lookup(var) {
                env.set(var, v);
            }
        }
        env
    }

    /// Sets one variable (an empty value unsets it).
    pub fn set(&mut self, var: &str, value: impl Into<String>) -> &mut DistEnv {
        let value = value.into();
        if value.is_empty() {
            self.vars.remove(var);
        } else {
            self.vars.insert(var.to_string(), value);
        }
        self
    }

    /// Unsets one variable.
    pub fn remove(&mut self, var: &str) -> &mut DistEnv {
        self.vars.remove(var);
        self
    }

    /// A variable's value, if set and not empty.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(String::as_str)
    }

    /// The bound on one collective from `CSM_DIST_TIMEOUT_SECS` (default
    /// [`DEFAULT_TIMEOUT_SECS`]; `None` = unbounded).
    ///
    /// # Errors
    /// [`DistError::BadEnv`] for a value that is not a non-negative number.
    pub fn timeout(&self) -> Result<Option<Duration>, DistError> {
        match self.get(TIMEOUT_ENV) {
            None => Ok(Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS))),
            Some(v) => {
                let secs: f64 = v.trim().parse().map_err(|_| DistError::BadEnv {
                    var: TIMEOUT_ENV,
                    value: v.to_string(),
                    reason: "expected a number of seconds (0 = no bound)".into(),
                })?;
                if !secs.is_finite() || secs < 0.0 {
                    return Err(DistError::BadEnv {
                        var: TIMEOUT_ENV,
                        value: v.to_string(),
                        reason: "expected a non-negative number of seconds".into(),
                    });
                }
                Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
            }
        }
    }

    /// Where ranks record their progress (`CSM_DIST_PROGRESS_DIR`).
    pub fn progress_dir(&self) -> Option<PathBuf> {
        self.get(PROGRESS_DIR_ENV).map(PathBuf::from)
    }
}

fn parse_usize(var: &'static str, value: &str) -> Result<usize, DistError> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| DistError::BadEnv {
            var,
            value: value.to_string(),
            reason: "expected a non-negative integer".into(),
        })
}

/// Reads and checks a ring hostfile: a JSON list with, per rank, a non-empty
/// list of `"host:port"` strings (all ranks the same count). Returns the
/// addresses by rank.
pub fn read_ring_hostfile(path: &Path) -> Result<Vec<Vec<String>>, DistError> {
    let bad = |reason: String| DistError::Hostfile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let ranks = value.as_array().ok_or_else(|| {
        bad("expected a JSON list with one list of \"host:port\" per rank".into())
    })?;
    if ranks.is_empty() {
        return Err(bad("it lists no ranks".into()));
    }
    let mut out = Vec::with_capacity(ranks.len());
    for (rank, entry) in ranks.iter().enumerate() {
        let addrs = entry.as_array().ok_or_else(|| {
            bad(format!(
                "rank {rank}: expected a list of \"host:port\" strings, found {entry}"
            ))
        })?;
        if addrs.is_empty() {
            return Err(bad(format!("rank {rank} has no address")));
        }
        let mut list = Vec::with_capacity(addrs.len());
        for a in addrs {
            let s = a
                .as_str()
                .ok_or_else(|| bad(format!("rank {rank}: {a} is not a \"host:port\" string")))?;
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(bad(format!("rank {rank}: {s:?} is not \"host:port\"")));
            }
            list.push(s.to_string());
        }
        out.push(list);
    }
    if out.iter().any(|l| l.len() != out[0].len()) {
        return Err(bad(
            "every rank must list the same number of addresses (one ring connection each)".into(),
        ));
    }
    Ok(out)
}

/// What [`plan`] found in a [`DistEnv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// Not launched distributed (or a one-rank configuration).
    Single,
    /// Initialise MLX with this backend name; `rank` when known up front.
    Backend { name: String, rank: Option<usize> },
}

const KNOWN_BACKENDS: &[&str] = &["ring", "mpi", "nccl", "jaccl", "jaccl-ring", "any"];

fn under_mpi(env: &DistEnv) -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MV2_COMM_WORLD_SIZE",
    ]
    .iter()
    .any(|v| env.get(v).is_some())
}

/// Picks the backend from the variables when none was given.
fn detect_backend(env: &DistEnv) -> Option<&'static str> {
    if env.get("MLX_HOSTFILE").is_some() {
        Some("ring")
    } else if env.get("MLX_IBV_DEVICES").is_some() || env.get("MLX_JACCL_COORDINATOR").is_some() {
        Some("jaccl")
    } else if env.get("NCCL_HOST_IP").is_some() || env.get("MLX_WORLD_SIZE").is_some() {
        Some("nccl")
    } else if under_mpi(env) {
        Some("mpi")
    } else {
        None
    }
}

fn require(
    env: &DistEnv,
    backend: &str,
    var: &'static str,
    hint: &str,
) -> Result<String, DistError> {
    env.get(var)
        .map(str::to_string)
        .ok_or_else(|| DistError::MissingEnv {
            backend: backend.into(),
            var,
            hint: hint.into(),
        })
}

/// Validates `env` for `backend` (before MLX sees it).
pub(super) fn plan(env: &DistEnv, backend: Option<&str>, strict: bool) -> Result<Plan, DistError> {
    let from_env = env.get(BACKEND_ENV).map(str::to_string);
    let name = match backend.map(str::to_string).or(from_env) {
        Some(n) => n,
        None => match detect_backend(env) {
            Some(n) => n.to_string(),
            None if strict => return Err(DistError::NotConfigured),
            None => return Ok(Plan::Single),
        },
    };
    if !KNOWN_BACKENDS.contains(&name.as_str()) {
        return Err(DistError::UnknownBackend(name));
    }
    let launcher = " (`csm launch` sets it)";
    match name.as_str() {
        "ring" => {
            let rank_s = env.get("MLX_RANK");
            let hostfile = env.get("MLX_HOSTFILE");
            let (hostfile, rank_s) = match (hostfile, rank_s) {
                (Some(h), Some(r)) => (h, r),
                (None, None) if !strict && backend.is_none() => return Ok(Plan::Single),
                (None, _) => {
                    return Err(DistError::MissingEnv {
                        backend: name,
                        var: "MLX_HOSTFILE",
                        hint: launcher.into(),
                    })
                }
                (_, None) => {
                    return Err(DistError::MissingEnv {
                        backend: name,
                        var: "MLX_RANK",
                        hint: launcher.into(),
                    })
                }
            };
            let rank = parse_usize("MLX_RANK", rank_s)?;
            let path = PathBuf::from(hostfile);
            let nodes = read_ring_hostfile(&path)?;
            if rank >= nodes.len() {
                return Err(DistError::RankOutOfRange {
                    rank,
                    size: nodes.len(),
                    source_of_size: format!("hostfile {}", path.display()),
                });
            }
            if nodes.len() == 1 {
                // MLX's ring would try to connect to itself; one rank needs
                // no communication.
                return Ok(Plan::Single);
            }
            Ok(Plan::Backend {
                name,
                rank: Some(rank),
            })
        }
        "nccl" => {
            require(
                env,
                &name,
                "NCCL_HOST_IP",
                " (rank 0's IP address, reachable from every rank)",
            )?;
            let port = require(env, &name, "NCCL_PORT", " (a free TCP port on rank 0)")?;
            if port.trim().parse::<u16>().is_err() {
                return Err(DistError::BadEnv {
                    var: "NCCL_PORT",
                    value: port,
                    reason: "expected a TCP port number".into(),
                });
            }
            let rank = parse_usize("MLX_RANK", &require(env, &name, "MLX_RANK", launcher)?)?;
            let size = parse_usize(
                "MLX_WORLD_SIZE",
                &require(env, &name, "MLX_WORLD_SIZE", launcher)?,
            )?;
            if rank >= size {
                return Err(DistError::RankOutOfRange {
                    rank,
                    size,
                    source_of_size: "MLX_WORLD_SIZE".into(),
                });
            }
            if size == 1 {
                return Ok(Plan::Single);
            }
            Ok(Plan::Backend {
                name,
                rank: Some(rank),
            })
        }
        "jaccl" | "jaccl-ring" => {
            let devices = require(
                env,
                &name,
                "MLX_IBV_DEVICES",
                " (a JSON file of RDMA device names)",
            )?;
            if !Path::new(&devices).is_file() {
                return Err(DistError::BadEnv {
                    var: "MLX_IBV_DEVICES",
                    value: devices,
                    reason: "no such file".into(),
                });
            }
            require(env, &name, "MLX_JACCL_COORDINATOR", " (ip:port of rank 0)")?;
            let rank = parse_usize("MLX_RANK", &require(env, &name, "MLX_RANK", launcher)?)?;
            Ok(Plan::Backend {
                name,
                rank: Some(rank),
            })
        }
        _ => Ok(Plan::Backend { name, rank: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_errors_name_the_rank() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts.json");
        std::fs::write(&p, r#"[["127.0.0.1:5000"], ["127.0.0.1"]]"#).unwrap();
        let e = read_ring_hostfile(&p).unwrap_err().to_string();
        assert!(e.contains("rank 1") && e.contains("hosts.json"), "{e}");
        std::fs::write(&p, r#"{"a": 1}"#).unwrap();
        assert!(read_ring_hostfile(&p).is_err());
        std::fs::write(&p, r#"[["127.0.0.1:5000"], ["127.0.0.1:5001"]]"#).unwrap();
        assert_eq!(read_ring_hostfile(&p).unwrap().len(), 2);
    }

    fn env(vars: &[(&str, &str)]) -> DistEnv {
        let mut e = DistEnv::default();
        for (k, v) in vars {
            e.set(k, *v);
        }
        e
    }

    #[test]
    fn nothing_configured_is_one_process() {
        assert_eq!(
            plan(&DistEnv::default(), None, false).unwrap(),
            Plan::Single
        );
        let e = plan(&DistEnv::default(), None, true).unwrap_err();
        assert!(matches!(e, DistError::NotConfigured), "{e}");
        // An empty value counts as unset.
        assert_eq!(
            plan(&env(&[("MLX_HOSTFILE", "")]), None, false).unwrap(),
            Plan::Single
        );
    }

    #[test]
    fn nccl_plan_and_its_errors() {
        let ok = env(&[
            ("NCCL_HOST_IP", "10.0.0.1"),
            ("NCCL_PORT", "5000"),
            ("MLX_RANK", "1"),
            ("MLX_WORLD_SIZE", "2"),
        ]);
        assert_eq!(
            plan(&ok, None, false).unwrap(),
            Plan::Backend {
                name: "nccl".into(),
                rank: Some(1)
            }
        );
        let mut bad = ok.clone();
        bad.set("NCCL_PORT", "http");
        let e = plan(&bad, None, false).unwrap_err().to_string();
        assert!(e.contains("NCCL_PORT=\"http\""), "{e}");
        let mut one = ok.clone();
        one.set("MLX_WORLD_SIZE", "1").set("MLX_RANK", "0");
        assert_eq!(plan(&one, None, false).unwrap(), Plan::Single);
    }

    #[test]
    fn timeout_default_off_and_bad() {
        let d = DistEnv::default().timeout().unwrap();
        assert_eq!(d, Some(Duration::from_secs(DEFAULT_TIMEOUT_SECS)));
        assert_eq!(env(&[(TIMEOUT_ENV, "0")]).timeout().unwrap(), None);
        assert_eq!(
            env(&[(TIMEOUT_ENV, "1.5")]).timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        let e = env(&[(TIMEOUT_ENV, "-3")])
            .timeout()
            .unwrap_err()
            .to_string();
        assert!(e.contains(TIMEOUT_ENV), "{e}");
    }

    #[test]
    fn capture_reads_only_the_listed_variables() {
        let e = DistEnv::capture(|k| (k == "MLX_RANK" || k == "HOME").then(|| "3".to_string()));
        assert_eq!(e.get("MLX_RANK"), Some("3"));
        assert_eq!(e.get("HOME"), None);
    }
}
