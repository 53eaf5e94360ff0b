//! The environment, read here at the edge: csm-core reads no variables, so
//! `csm` reads them and passes settings in.
//!
//! - `CSM_COMPILE=1`, `CSM_CACHE_DIR` (and `XDG_CACHE_HOME`/`HOME` for the
//!   default cache) and the distributed launch variables that `csm launch`
//!   sets for each rank: [`run_settings`];
//! - the hub and package-index settings of `csm download`, `csm models` and
//!   every flag that takes a hub id or bundle name: huggingface_hub's
//!   `HF_HOME`, `HF_HUB_CACHE`, `HF_ASSETS_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`,
//!   `HF_HUB_OFFLINE`, proxies, and `CSM_PYPI_URL` ([`hub_settings`]);
//! - with the `fault-injection` feature (test builds only), the
//!   `CSM_DEBUG_*_AT_STEP` faults of the crash tests.

use anyhow::{anyhow, Result};
use csm_core::distributed::DistEnv;
use csm_core::train::codes::CodesCache;
use csm_core::train::RunSettings;

/// The settings of a training run in this process.
pub fn run_settings() -> Result<RunSettings> {
    RunSettings::from_env(|k| std::env::var_os(k)).map_err(|e| anyhow!(e))
}

/// The Mimi codes cache directory.
pub fn codes_cache() -> std::path::PathBuf {
    CodesCache::default_dir(|k| std::env::var_os(k))
}

/// The hub client's settings from this process's environment (the same
/// variables, read the same way, as the app's).
pub fn hub_settings() -> Result<csm_hub::HubSettings> {
    Ok(csm_hub::HubSettings::from_environment(&|k| {
        std::env::var(k).ok()
    })?)
}

/// This process's distributed launch variables.
pub fn dist_env() -> DistEnv {
    DistEnv::capture(|k| std::env::var(k).ok())
}
