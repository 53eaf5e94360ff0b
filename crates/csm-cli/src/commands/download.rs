//! `csm download`: fetch files or a named bundle from the Hugging Face hub
//! into the shared hub cache and print their local paths.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use csm_hub::{
    find_bundle, human_bytes, Cancel, DownloadEvent, DownloadObserver, Hub, Role, BUNDLES, MAIN,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `csm download`.
#[derive(Debug, Args)]
#[command(after_long_help = bundles_help())]
pub struct DownloadArgs {
    /// A repo id (`sesame/csm-1b`) or a bundle name: `csm-1b`,
    /// `whisper-large-v3-turbo`, `whisper-small`, `whisper-base`,
    /// `whisper-tiny`, `speaker-encoder` (listed below).
    #[arg(value_name = "REPO_ID_OR_BUNDLE")]
    pub target: String,
    /// Files to fetch from the repo [default: the files csm uses from a
    /// known repo, else every file of the repo].
    #[arg(value_name = "FILE")]
    pub files: Vec<String>,
    /// Branch, tag or commit.
    #[arg(long, default_value = MAIN)]
    pub revision: String,
}

/// The environment variables the hub commands read (shown in `--help`).
pub const ENV_HELP: &str = "Environment (the same as Python's huggingface_hub):\n  \
    HF_HOME          folder of the caches and token [default: ~/.cache/huggingface]\n  \
    HF_HUB_CACHE     the hub cache itself [default: $HF_HOME/hub]\n  \
    HF_ASSETS_CACHE  files that are not hub repos; the speaker encoder goes to its\n                   csm/pypi--resemblyzer/0.1.4/ [default: $HF_HOME/assets]\n  \
    HF_ENDPOINT      the hub [default: https://huggingface.co]\n  \
    HF_TOKEN         access token for gated or private repos [default: the file\n                   `huggingface-cli login` writes, $HF_HOME/token]\n  \
    HF_HUB_OFFLINE   1: no network, cached files only\n\
and ours:\n  \
    CSM_PYPI_URL     PyPI's JSON API, where the speaker encoder's wheel is found\n                   [default: https://pypi.org]";

/// The bundles with what they are for, then [`ENV_HELP`].
pub fn bundles_help() -> String {
    let width = BUNDLES.iter().map(|b| b.name.len()).max().unwrap_or(0);
    let mut out = String::from("Bundles:\n");
    for b in BUNDLES {
        out.push_str(&format!("  {:width$}  {}\n", b.name, b.description));
    }
    out.push_str(
        "Use them by name: --model-path csm-1b, --whisper-model whisper-tiny,\n\
         --speaker-encoder speaker-encoder (downloaded on first use).\n\n",
    );
    out.push_str(ENV_HELP);
    out
}

/// The hub client with the settings of this process's environment.
pub fn hub() -> Result<Hub> {
    Ok(Hub::new(crate::env::hub_settings()?)?)
}

/// A terminal progress bar per file on stderr (bytes, rate, ETA).
#[derive(Default)]
pub struct TerminalProgress {
    bar: Option<ProgressBar>,
}

impl TerminalProgress {
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => say!("{line}"),
        }
    }
}

impl DownloadObserver for TerminalProgress {
    fn on_event(&mut self, event: &DownloadEvent<'_>) {
        match *event {
            DownloadEvent::Cached {
                repo, file, size, ..
            } => {
                say!("{repo}/{file}: cached ({})", human_bytes(size));
            }
            DownloadEvent::WaitingForLock { repo, file } => {
                say!("{repo}/{file}: waiting for another download of it to finish");
            }
            DownloadEvent::Started {
                repo,
                file,
                total,
                resumed_from,
            } => {
                self.finish();
                let bar = ProgressBar::new(total.unwrap_or(0)).with_style(
                    ProgressStyle::with_template(
                        "{msg} {bar:30} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_message(format!("{repo}/{file}"));
                bar.set_position(resumed_from);
                bar.reset_eta();
                bar.enable_steady_tick(Duration::from_millis(250));
                if resumed_from > 0 {
                    bar.println(format!(
                        "{repo}/{file}: resuming at {}",
                        human_bytes(resumed_from)
                    ));
                }
                self.bar = Some(bar);
            }
            DownloadEvent::Progress { done, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                }
            }
            DownloadEvent::Retrying {
                repo,
                file,
                attempt,
                reason,
            } => self.println(format!(
                "{repo}/{file}: transfer broke ({reason}); resuming (retry {attempt})"
            )),
            DownloadEvent::Finished {
                repo, file, size, ..
            } => {
                self.finish();
                say!(
                    "{repo}/{file}: downloaded and verified ({})",
                    human_bytes(size)
                );
            }
            _ => {}
        }
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Stops downloads on Ctrl-C (the partial file stays for resuming).
fn ctrl_c_cancels() -> Cancel {
    let cancel = Cancel::new();
    let flag = cancel.clone();
    // Another handler may already be installed; then Ctrl-C just exits,
    // which also keeps the partial file.
    let _ = ctrlc::set_handler(move || flag.cancel());
    cancel
}

/// Runs `csm download`.
pub fn run(args: DownloadArgs) -> Result<()> {
    let hub = hub()?;
    let cancel = ctrl_c_cancels();
    let mut progress = TerminalProgress::default();
    if let Some(bundle) = find_bundle(&args.target) {
        if !args.files.is_empty() {
            anyhow::bail!(
                "`{}` is a bundle: it takes no file names (use a repo id to pick files)",
                bundle.name
            );
        }
        let got = bundle.download(&hub, &mut progress, &cancel)?;
        for (_, resolved) in &got {
            tell!("{}", resolved.path.display());
        }
        let path_of = |role| {
            got.iter()
                .find(|(f, _)| f.role == role)
                .map(|(_, r)| r.path.clone())
        };
        let name = bundle.name;
        if let Some(model) = path_of(Role::Model) {
            say!(
                "use it with --model-path {} (or --model-path {name}: codec and tokenizer follow)",
                model.parent().unwrap_or(&model).display(),
            );
        }
        if let Some(file) = path_of(Role::Whisper) {
            say!(
                "use it with --whisper-model {name} (or the folder {})",
                file.parent().unwrap_or(&file).display()
            );
        }
        if let Some(file) = path_of(Role::SpeakerEncoder) {
            say!(
                "use it with --speaker-encoder {name} (or the file {}); csm score uses it by default",
                file.display()
            );
        }
        return Ok(());
    }
    let repo = args.target.as_str();
    csm_hub::validate_repo_id(repo).with_context(|| {
        let names: Vec<&str> = BUNDLES.iter().map(|b| b.name).collect();
        format!(
            "`{repo}` is neither a repo id nor a bundle ({})",
            names.join(", ")
        )
    })?;
    let files: Vec<String> = if !args.files.is_empty() {
        args.files.clone()
    } else if let Some(known) = known_files(repo) {
        known
    } else {
        hub.repo_files(repo, &args.revision)?.files
    };
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    for resolved in hub.download_files(repo, &args.revision, &names, &mut progress, &cancel)? {
        tell!("{}", resolved.path.display());
    }
    Ok(())
}

/// The files a bundle takes from `repo`, if a bundle uses it.
pub fn known_files(repo: &str) -> Option<Vec<String>> {
    let files: Vec<String> = BUNDLES
        .iter()
        .flat_map(|b| b.files)
        .filter(|f| f.repo == repo)
        .map(|f| f.file.to_string())
        .collect();
    (!files.is_empty()).then_some(files)
}
