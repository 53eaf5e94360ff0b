//! Where the hub is, where the cache is, which token to send, whether to go
//! online: everything the client needs, passed in, never read from the
//! process environment by the library itself.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The public Hugging Face hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The public Python package index, whose JSON API
/// (`{url}/pypi/{project}/{version}/json`) names a release's wheels.
pub const DEFAULT_PYPI_URL: &str = "https://pypi.org";

/// Where a token came from, so that error messages can say which one the
/// hub refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// An environment variable (`HF_TOKEN` or the legacy
    /// `HUGGING_FACE_HUB_TOKEN`), named here.
    Environment(String),
    /// The token file `huggingface-cli login` writes.
    File(PathBuf),
    /// Given by the program (for example typed into the app).
    Explicit,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Environment(var) => write!(f, "${var}"),
            TokenSource::File(path) => write!(f, "the token file {}", path.display()),
            TokenSource::Explicit => f.write_str("the token given"),
        }
    }
}

/// An access token and where it came from. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    source: TokenSource,
}

impl Token {
    /// A token from `source`; surrounding whitespace is trimmed.
    pub fn new(value: impl Into<String>, source: TokenSource) -> Self {
        Self {
            value: value.into().trim().to_string(),
            source,
        }
    }

    /// The secret itself (for the `Authorization` header).
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// Where it came from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Everything the hub client needs to know about its surroundings.
///
/// Build it with [`HubSettings::new`] and set fields, or let the program
/// (the CLI, the app) call [`HubSettings::from_environment`] with its own
/// look-up function: the library never reads environment variables itself.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Base URL of the hub, without a trailing slash
    /// (`https://huggingface.co`, or a mirror).
    pub endpoint: String,
    /// The hub cache (`~/.cache/huggingface/hub`): `models--org--name/...`.
    pub cache_dir: PathBuf,
    /// Sent as `Authorization: Bearer` to the hub's own origin only.
    pub token: Option<Token>,
    /// Where `huggingface-cli login` keeps the token (`$HF_HOME/token`);
    /// where [`crate::save_token`] writes one.
    pub token_path: PathBuf,
    /// The assets cache of huggingface_hub (`$HF_HOME/assets`), where
    /// libraries keep files that are not hub repos; ours go under its `csm/`
    /// folder (see [`crate::PackageCache`]). Never inside `cache_dir`, whose
    /// every folder huggingface_hub takes for a repo.
    pub assets_dir: PathBuf,
    /// Base URL of a PyPI-compatible JSON API, without a trailing slash
    /// (`https://pypi.org`): where wheels such as resemblyzer's are looked
    /// up. The token is never sent there.
    pub pypi_url: String,
    /// No network at all: only what is cached resolves.
    pub offline: bool,
    /// An HTTP(S) proxy URL for every request, if any.
    pub proxy: Option<String>,
    /// How many times a broken transfer is resumed (with `Range`) within one
    /// call before giving up; the partial file is kept either way.
    pub retries: u32,
    /// Pause before the first retry; doubled for each further one.
    pub retry_delay: Duration,
    /// Connect and per-read timeout: a transfer that stalls this long is
    /// treated as broken (and resumed).
    pub timeout: Duration,
}

impl HubSettings {
    /// Settings for the public hub and PyPI with the cache in `cache_dir`,
    /// the token path and assets beside it (`../token`, `../assets`), no
    /// token, online.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        let cache_dir = cache_dir.into();
        let parent = cache_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            cache_dir,
            token: None,
            token_path: parent.join("token"),
            assets_dir: parent.join("assets"),
            pypi_url: DEFAULT_PYPI_URL.to_string(),
            offline: false,
            proxy: None,
            retries: 3,
            retry_delay: Duration::from_millis(500),
            timeout: Duration::from_secs(30),
        }
    }

    /// The settings `huggingface_hub` (Python) would use, read through
    /// `lookup` (pass `|k| std::env::var(k).ok()` to use the process
    /// environment). Same names and precedence as huggingface_hub:
    ///
    /// - cache: `HF_HUB_CACHE`, else the legacy `HUGGINGFACE_HUB_CACHE`, else
    ///   `$HF_HOME/hub`; `HF_HOME` defaults to
    ///   `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`;
    /// - assets: `HF_ASSETS_CACHE`, else the legacy
    ///   `HUGGINGFACE_ASSETS_CACHE`, else `$HF_HOME/assets`;
    /// - endpoint: `HF_ENDPOINT`, else `https://huggingface.co`;
    /// - token: `HF_TOKEN` (or the legacy `HUGGING_FACE_HUB_TOKEN`), else
    ///   the file at `HF_TOKEN_PATH`, else `$HF_HOME/token` (what
    ///   `huggingface-cli login` writes);
    /// - offline: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to 1, ON,
    ///   YES or TRUE;
    /// - proxy: `HTTPS_PROXY`, `https_proxy`, `ALL_PROXY` or `all_proxy`.
    ///
    /// and one of ours: `CSM_PYPI_URL`, the package index's JSON API
    /// [default: `https://pypi.org`]. (pip's `PIP_INDEX_URL` names a
    /// "simple" index, another API, so it is not read.)
    ///
    /// Reads the token file if it is used; fails only when no home folder is
    /// known and neither `HF_HOME` nor `HF_HUB_CACHE` is set.
    pub fn from_environment(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, crate::HubError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let home = get("HOME")
            .or_else(|| get("USERPROFILE"))
            .map(PathBuf::from);
        let expand = |v: String| -> PathBuf {
            match (v.strip_prefix("~/"), &home) {
                (Some(rest), Some(h)) => h.join(rest),
                _ if v == "~" => home.clone().unwrap_or_else(|| PathBuf::from(&v)),
                _ => PathBuf::from(v),
            }
        };
        let hf_home = match get("HF_HOME") {
            Some(v) => Some(expand(v)),
            None => match get("XDG_CACHE_HOME") {
                Some(x) => Some(expand(x).join("huggingface")),
                None => home.as_ref().map(|h| h.join(".cache").join("huggingface")),
            },
        };
        let cache_dir = match get("HF_HUB_CACHE").or_else(|| get("HUGGINGFACE_HUB_CACHE")) {
            Some(v) => expand(v),
            None => hf_home
                .as_ref()
                .map(|h| h.join("hub"))
                .ok_or(crate::HubError::NoCacheDir)?,
        };
        let assets_dir = match get("HF_ASSETS_CACHE").or_else(|| get("HUGGINGFACE_ASSETS_CACHE")) {
            Some(v) => expand(v),
            None => match &hf_home {
                Some(h) => h.join("assets"),
                None => cache_dir.parent().unwrap_or(Path::new(".")).join("assets"),
            },
        };
        let token_path = match get("HF_TOKEN_PATH") {
            Some(v) => expand(v),
            None => match &hf_home {
                Some(h) => h.join("token"),
                None => cache_dir.parent().unwrap_or(Path::new(".")).join("token"),
            },
        };
        let token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
            .iter()
            .find_map(|k| get(k).map(|v| Token::new(v, TokenSource::Environment(k.to_string()))))
            .or_else(|| read_token_file(&token_path));
        let truthy = |k: &str| {
            get(k).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_uppercase().as_str(),
                    "1" | "ON" | "YES" | "TRUE"
                )
            })
        };
        let endpoint = get("HF_ENDPOINT")
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let proxy = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .find_map(|k| get(k));
        let pypi_url = get("CSM_PYPI_URL")
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_PYPI_URL.to_string());
        Ok(Self {
            endpoint,
            token,
            token_path,
            assets_dir,
            pypi_url,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            proxy,
            ..Self::new(cache_dir)
        })
    }
}

/// The token stored in `path` (as `huggingface-cli login` writes it), if
/// the file exists and is not empty.
pub fn read_token_file(path: &Path) -> Option<Token> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| Token::new(text, TokenSource::File(path.to_path_buf())))
}

/// Stores `token` where `huggingface-cli login` does (`settings.token_path`),
/// readable by the owner only, replacing the file atomically. Call it only
/// with the user's consent: Python tools on this machine will use it too.
pub fn save_token(settings: &HubSettings, token: &str) -> Result<PathBuf, crate::HubError> {
    let path = settings.token_path.clone();
    let io = |action: &str, p: &Path, source| crate::HubError::io(action, p, source);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("create the folder", dir, e))?;
    let tmp = dir.join(format!(".token.{}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(|e| io("write", &tmp, e))?;
        std::io::Write::write_all(&mut file, token.trim().as_bytes())
            .map_err(|e| io("write", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io("replace", &path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> HubSettings {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubSettings::from_environment(&|k| map.get(k).cloned()).unwrap()
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let s = settings(&[("HOME", "/home/u")]);
        assert_eq!(s.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert_eq!(
            s.token_path,
            PathBuf::from("/home/u/.cache/huggingface/token")
        );
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(
            s.assets_dir,
            PathBuf::from("/home/u/.cache/huggingface/assets")
        );
        assert_eq!(s.pypi_url, DEFAULT_PYPI_URL);
        assert!(!s.offline);
        assert!(s.token.is_none());
    }

    #[test]
    fn hf_home_xdg_and_hub_cache() {
        let s = settings(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(s.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let s = settings(&[("HOME", "/h"), ("HF_HOME", "~/hf")]);
        assert_eq!(s.cache_dir, PathBuf::from("/h/hf/hub"));
        assert_eq!(s.token_path, PathBuf::from("/h/hf/token"));
        let s = settings(&[("HOME", "/h"), ("HF_HOME", "/a"), ("HF_HUB_CACHE", "/b")]);
        assert_eq!(s.cache_dir, PathBuf::from("/b"));
        // The token and assets stay in HF_HOME when only the hub cache moves.
        assert_eq!(s.token_path, PathBuf::from("/a/token"));
        assert_eq!(s.assets_dir, PathBuf::from("/a/assets"));
        let s = settings(&[
            ("HOME", "/h"),
            ("HF_ASSETS_CACHE", "~/as"),
            ("CSM_PYPI_URL", "http://127.0.0.1:9/"),
        ]);
        assert_eq!(s.assets_dir, PathBuf::from("/h/as"));
        assert_eq!(s.pypi_url, "http://127.0.0.1:9");
    }

    #[test]
    fn endpoint_offline_token_from_environment() {
        let s = settings(&[
            ("HOME", "/h"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_TOKEN", " hf_abc \n"),
        ]);
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert!(s.offline);
        let token = s.token.unwrap();
        assert_eq!(token.secret(), "hf_abc");
        assert_eq!(token.source(), &TokenSource::Environment("HF_TOKEN".into()));
        assert!(!format!("{token:?}").contains("hf_abc"));
        assert!(!settings(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "0")]).offline);
    }

    #[test]
    fn token_file_is_used_without_hf_token() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        let mut s = settings(&[("HF_HOME", home)]);
        assert!(s.token.is_none());
        s.token_path = dir.path().join("token");
        let written = save_token(&s, "hf_saved\n").unwrap();
        assert_eq!(written, dir.path().join("token"));
        let s = settings(&[("HF_HOME", home)]);
        let token = s.token.unwrap();
        assert_eq!(token.secret(), "hf_saved");
        assert_eq!(token.source(), &TokenSource::File(dir.path().join("token")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&written).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn no_home_no_cache_is_an_error() {
        let err = HubSettings::from_environment(&|_| None).unwrap_err();
        assert!(err.to_string().contains("HF_HOME"), "{err}");
    }
}
