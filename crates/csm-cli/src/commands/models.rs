//! `csm models`: the bundles and what the caches hold (hub repos, and
//! files from PyPI wheels); `csm models rm NAME` deletes a repo, a bundle
//! or a release.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use csm_hub::{find_bundle, human_bytes, RepoKind, BUNDLES};

use super::download::{hub, ENV_HELP};

/// Flags of `csm models`.
#[derive(Debug, Args)]
#[command(after_long_help = ENV_HELP)]
pub struct ModelsArgs {
    #[command(subcommand)]
    action: Option<ModelsAction>,
}

#[derive(Debug, Subcommand)]
enum ModelsAction {
    /// Delete from the caches: a repo (every revision and partial
    /// download), a bundle (the repos and PyPI files it uses, e.g.
    /// `whisper-tiny`, `speaker-encoder`), or a release from PyPI
    /// (`pypi:resemblyzer==0.1.4`, as `csm models` lists it).
    Rm {
        /// `org/name`, a bundle name, or `pypi:project==version`.
        #[arg(value_name = "REPO_ID_OR_BUNDLE")]
        name: String,
    },
}

/// Prints rows with columns padded to their widest cell (the last one
/// free).
fn table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:w$}  ", w = widths[i]));
            }
        }
        tell!("{}", line.trim_end());
    }
}

/// Runs `csm models` or `csm models rm`.
pub fn run(args: ModelsArgs) -> Result<()> {
    let hub = hub()?;
    let cache = hub.cache();
    let packages = hub.packages();
    if let Some(ModelsAction::Rm { name }) = args.action {
        if let Some(bundle) = find_bundle(&name) {
            let removed = bundle.delete(&hub)?;
            for deleted in &removed {
                tell!(
                    "removed {} ({} freed)",
                    deleted.path.display(),
                    human_bytes(deleted.freed)
                );
            }
            let total: u64 = removed.iter().map(|d| d.freed).sum();
            tell!("removed bundle {name} ({} freed)", human_bytes(total));
            return Ok(());
        }
        let deleted = match name.strip_prefix("pypi:") {
            Some(release) => {
                let Some((project, version)) = release.split_once("==") else {
                    bail!(
                        "`{name}`: write a release as pypi:project==version, as `csm models` \
                         lists it"
                    );
                };
                packages.delete(project, version)?
            }
            None => cache.delete_repo(&name)?,
        };
        tell!(
            "removed {name} ({} freed, {})",
            human_bytes(deleted.freed),
            deleted.path.display()
        );
        return Ok(());
    }

    let mut rows = vec![["BUNDLE", "CACHED", "SIZE", "WHAT"]
        .map(String::from)
        .to_vec()];
    for b in BUNDLES {
        let (bytes, n) = b.cached_size(&hub);
        let status = match n {
            0 => "no".to_string(),
            n if n == b.files.len() => "yes".to_string(),
            n => format!("{n} of {} files", b.files.len()),
        };
        let size = if n == 0 {
            "-".to_string()
        } else {
            human_bytes(bytes)
        };
        rows.push(vec![b.name.into(), status, size, b.description.into()]);
    }
    table(&rows);
    tell!();

    let repos = cache.list()?;
    let releases = packages.list()?;
    if repos.is_empty() && releases.is_empty() {
        tell!(
            "no models in {} or {}",
            cache.root().display(),
            packages.root().display()
        );
        return Ok(());
    }
    let mut rows = vec![["REPO", "REVISION", "SIZE", "FILES"]
        .map(String::from)
        .to_vec()];
    let size = |complete: u64, partial: u64| {
        let mut size = human_bytes(complete);
        if partial > 0 {
            size.push_str(&format!(" (+{} partial)", human_bytes(partial)));
        }
        size
    };
    for r in &repos {
        let name = match r.kind {
            RepoKind::Model => r.repo.clone(),
            RepoKind::Dataset => format!("{} (dataset)", r.repo),
            RepoKind::Space => format!("{} (space)", r.repo),
        };
        let mut first = true;
        for rev in &r.revisions {
            let short = &rev.commit[..rev.commit.len().min(8)];
            let revision = if rev.refs.is_empty() {
                short.to_string()
            } else {
                format!("{} ({short})", rev.refs.join(", "))
            };
            let files: Vec<&str> = rev.files.iter().map(|f| f.name.as_str()).collect();
            rows.push(vec![
                if first { name.clone() } else { String::new() },
                revision,
                if first {
                    size(r.size_on_disk, r.incomplete_bytes)
                } else {
                    String::new()
                },
                files.join(", "),
            ]);
            first = false;
        }
        if first {
            rows.push(vec![
                name,
                "-".into(),
                size(r.size_on_disk, r.incomplete_bytes),
                String::new(),
            ]);
        }
    }
    for p in &releases {
        let files: Vec<&str> = p.files.iter().map(|f| f.name.as_str()).collect();
        rows.push(vec![
            format!("pypi:{}", p.project),
            p.version.clone(),
            size(p.size_on_disk, p.incomplete_bytes),
            files.join(", "),
        ]);
    }
    table(&rows);
    let total: u64 = repos
        .iter()
        .map(|r| r.size_on_disk + r.incomplete_bytes)
        .chain(releases.iter().map(|p| p.size_on_disk + p.incomplete_bytes))
        .sum();
    tell!(
        "{} in {} and {}",
        human_bytes(total),
        cache.root().display(),
        packages.root().display()
    );
    Ok(())
}
