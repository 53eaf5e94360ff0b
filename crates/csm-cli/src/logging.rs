//! `--log-level` parsing and the tracing subscriber.

use std::ffi::OsStr;
use std::io::IsTerminal;

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

/// Whether log lines get ANSI colours: only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (no-color.org), so
/// `csm demo > log 2>&1` writes plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The filter for `level`. Below debug, the audio decoders (symphonia's
/// crates) log errors only: their warnings ("skipped 45 bytes of junk" at
/// every MP3's ID3 tag) say nothing a user can act on, and a file they
/// cannot decode is reported by our own code, by name.
fn directive(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info,symphonia=error",
        Level::Warning => "warn,symphonia=error",
        // tracing has no level above error; critical shows errors only.
        Level::Error | Level::Critical => "error",
    }
}

/// stderr for log lines, a write that fails taken as done: tracing's own
/// report of a failed write goes through `eprintln!`, which panics when
/// stderr is a pipe whose reader has gone (see `say!` in main.rs).
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Installs a stderr subscriber; `RUST_LOG` overrides the level when set.
pub fn init(level: Level) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directive(level)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_warnings_are_quiet_unless_debugging() {
        for level in [Level::Info, Level::Warning] {
            let d = directive(level);
            assert!(d.contains("symphonia=error"), "{d}");
            // A directive EnvFilter rejects would be dropped silently.
            assert!(d.parse::<EnvFilter>().is_ok(), "{d} is not a valid filter");
        }
        assert_eq!(directive(Level::Debug), "debug");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, Some(OsStr::new("1"))));
        // An empty NO_COLOR is unset, as no-color.org says.
        assert!(colour(true, Some(OsStr::new(""))));
    }
}
