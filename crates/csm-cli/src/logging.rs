//! `--log-level` parsing and the tracing subscriber.

use tracing_subscriber::EnvFilter;

/// Log levels accepted on the command line (Python-style names, as in the
/// user guide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    /// The name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
        }
    }
}

/// Parses `debug|info|warning|error|critical` (case-insensitive).
pub fn parse_level(s: &str) -> Result<Level, String> {
    match s.to_ascii_lowercase().as_str() {
        "debug" => Ok(Level::Debug),
        "info" => Ok(Level::Info),
        "warning" | "warn" => Ok(Level::Warning),
        "error" => Ok(Level::Error),
        "critical" => Ok(Level::Critical),
        other => Err(format!(
            "unknown log level `{other}`; use debug, info, warning, error or critical"
        )),
    }
}

/// Installs a stderr subscriber; `RUST_LOG` overrides the level when set.
pub fn init(level: Level) {
    let directive = match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warning => "warn",
        // tracing has no level above error; critical shows errors only.
        Level::Error | Level::Critical => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
