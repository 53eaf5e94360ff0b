//! Hub ids where paths are accepted: `--model-path sesame/csm-1b` (or the
//! bundle name `csm-1b`), `--mimi-path kyutai/moshiko-pytorch-bf16`,
//! `--tokenizer-path unsloth/Llama-3.2-1B`. A value that is an existing
//! path is left alone; one that looks like `org/name` is resolved from the
//! hub cache, downloading what is missing (with progress) unless
//! `HF_HUB_OFFLINE` is set.
//!
//! When the model comes from a bundle's repo and no codec or tokenizer was
//! given, the bundle's codec and tokenizer are used: they live in other
//! repos, so "next to the model" would not find them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use csm_hub::{find_bundle, Bundle, Cancel, Hub, Role, BUNDLES, MAIN};

use super::download::{hub, TerminalProgress};

/// What a path flag names on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HubRef {
    Bundle(&'static Bundle),
    Repo(String),
}

/// `Some` when `path` is not an existing path and reads as a bundle name
/// (model only) or `org/name`.
fn hub_ref(path: &Path, bundles: bool) -> Option<HubRef> {
    if path.exists() {
        return None;
    }
    let s = path.to_str()?;
    if bundles {
        if let Some(b) = find_bundle(s) {
            return Some(HubRef::Bundle(b));
        }
    }
    (s.contains('/') && !s.starts_with('.') && csm_hub::validate_repo_id(s).is_ok())
        .then(|| HubRef::Repo(s.to_string()))
}

/// The bundle whose model comes from `repo`.
fn bundle_with_model(repo: &str) -> Option<&'static Bundle> {
    BUNDLES
        .iter()
        .find(|b| b.files_for(Role::Model).any(|f| f.repo == repo))
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
    let model_ref = hub_ref(model, true);
    let mimi_ref = mimi.as_deref().and_then(|p| hub_ref(p, false));
    let tokenizer_ref = tokenizer.as_deref().and_then(|p| hub_ref(p, false));
    if model_ref.is_none() && mimi_ref.is_none() && tokenizer_ref.is_none() {
        return Ok(());
    }
    let mut r = Resolver {
        hub: hub()?,
        progress: TerminalProgress::default(),
        cancel: Cancel::new(),
    };
    let given = model.display().to_string();
    let bundle = match &model_ref {
        Some(HubRef::Bundle(b)) => Some(*b),
        Some(HubRef::Repo(repo)) => bundle_with_model(repo),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_refs_only_for_what_is_not_a_path() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(hub_ref(dir.path(), true), None);
        assert!(matches!(
            hub_ref(Path::new("csm-1b"), true),
            Some(HubRef::Bundle(b)) if b.name == "csm-1b"
        ));
        assert_eq!(hub_ref(Path::new("csm-1b"), false), None);
        assert_eq!(
            hub_ref(Path::new("sesame/csm-1b"), false),
            Some(HubRef::Repo("sesame/csm-1b".into()))
        );
        for not_ids in ["./a/b", "/abs/path", "a/b/c", "model.safetensors", "../x/y"] {
            assert_eq!(hub_ref(Path::new(not_ids), true), None, "{not_ids}");
        }
        assert_eq!(bundle_with_model("sesame/csm-1b").unwrap().name, "csm-1b");
        assert_eq!(
            bundle_file("kyutai/moshiko-pytorch-bf16", Role::Codec),
            Some("tokenizer-e351c8d8-checkpoint125.safetensors")
        );
        assert_eq!(
            snapshot_dir(Path::new("/c/snapshots/abc/sub/x.json"), "sub/x.json"),
            PathBuf::from("/c/snapshots/abc")
        );
    }
}
