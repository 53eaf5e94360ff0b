//! `csm models`: what the hub cache holds; `csm models rm REPO_ID` deletes
//! one repo.

use anyhow::Result;
use clap::{Args, Subcommand};
use csm_hub::{human_bytes, RepoKind};

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
    /// Delete a repo from the cache (every revision and partial download).
    Rm {
        /// `org/name`, as `csm models` lists it.
        #[arg(value_name = "REPO_ID")]
        repo: String,
    },
}

/// Runs `csm models` or `csm models rm`.
pub fn run(args: ModelsArgs) -> Result<()> {
    let hub = hub()?;
    let cache = hub.cache();
    if let Some(ModelsAction::Rm { repo }) = args.action {
        let deleted = cache.delete_repo(&repo)?;
        println!(
            "removed {repo} ({} freed, {})",
            human_bytes(deleted.freed),
            deleted.path.display()
        );
        return Ok(());
    }
    let repos = cache.list()?;
    if repos.is_empty() {
        println!("no models in {}", cache.root().display());
        return Ok(());
    }
    let rows: Vec<[String; 4]> = repos
        .iter()
        .flat_map(|r| {
            let name = match r.kind {
                RepoKind::Model => r.repo.clone(),
                RepoKind::Dataset => format!("{} (dataset)", r.repo),
                RepoKind::Space => format!("{} (space)", r.repo),
            };
            let mut size = human_bytes(r.size_on_disk);
            if r.incomplete_bytes > 0 {
                size.push_str(&format!(" (+{} partial)", human_bytes(r.incomplete_bytes)));
            }
            let mut rows: Vec<[String; 4]> = r
                .revisions
                .iter()
                .map(|rev| {
                    let short = &rev.commit[..rev.commit.len().min(8)];
                    let revision = if rev.refs.is_empty() {
                        short.to_string()
                    } else {
                        format!("{} ({short})", rev.refs.join(", "))
                    };
                    let files: Vec<&str> = rev.files.iter().map(|f| f.name.as_str()).collect();
                    [String::new(), revision, String::new(), files.join(", ")]
                })
                .collect();
            if rows.is_empty() {
                rows.push([String::new(), "-".into(), String::new(), String::new()]);
            }
            rows[0][0] = name;
            rows[0][2] = size;
            rows
        })
        .collect();
    let header = ["REPO", "REVISION", "SIZE", "FILES"].map(String::from);
    let width = |i: usize| {
        std::iter::once(&header)
            .chain(&rows)
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:w0$}  {:w1$}  {:>w2$}  {}",
            row[0], row[1], row[2], row[3]
        );
    }
    let total: u64 = repos
        .iter()
        .map(|r| r.size_on_disk + r.incomplete_bytes)
        .sum();
    println!("{} in {}", human_bytes(total), cache.root().display());
    Ok(())
}
