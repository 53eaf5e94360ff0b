//! CSM Studio desktop app: Tauri wiring only. Commands live in [`commands`];
//! the IPC contract they implement is `docs/ipc.md`.

pub mod commands;
pub mod contract;
pub mod error;
pub mod player;
pub mod state;
pub mod time;

use tauri::{Builder, DragDropEvent, Manager, Runtime, WindowEvent};

/// Registers plugins and commands on any runtime, so tests can use
/// `tauri::test::mock_builder()`.
pub fn app_builder<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    state::manage(builder)
        .manage(commands::hub::HubDownloads::default())
        .manage(commands::transcribe::TranscriptionJobs::default())
        .manage(commands::lr_find::LrFindJobs::default())
        .plugin(tauri_plugin_dialog::init())
        .on_window_event(|window, event| {
            // Folders dropped on the window become readable by the commands.
            if let WindowEvent::DragDrop(DragDropEvent::Drop { paths, .. }) = event {
                let allowed = window.state::<state::AllowedPaths>();
                for p in paths {
                    allowed.allow(p);
                }
            }
        })
        .invoke_handler(tauri::generate_handler![
            commands::app::app_info,
            commands::app::blas_status,
            commands::config::read_config_file,
            commands::config::write_config_file,
            commands::files::reveal_path,
            commands::dataset::scan_dataset,
            commands::dataset::dataset_usage,
            commands::speakers::dataset_speakers,
            commands::speakers::save_speakers,
            commands::transcribe::scan_recordings,
            commands::transcribe::whisper_models,
            commands::transcribe::transcribe_recordings,
            commands::transcribe::cancel_transcription,
            commands::proofread::save_transcript,
            commands::proofread::exclude_recording,
            commands::proofread::restore_recording,
            commands::proofread::list_excluded,
            commands::models::inspect_model,
            commands::models::demo_assets,
            commands::hub::hub_status,
            commands::hub::list_bundles,
            commands::hub::download_bundle,
            commands::hub::cancel_download,
            commands::hub::list_cached_models,
            commands::hub::delete_cached_model,
            commands::hub::save_hub_token,
            commands::training::estimate_run,
            commands::training::start_training,
            commands::training::stop_training,
            commands::lr_find::find_learning_rate,
            commands::lr_find::cancel_lr_find,
            commands::generate::generate_sample,
            commands::generate::cancel_generation,
            commands::audio::list_output_devices,
            commands::audio::play_audio,
            commands::audio::stop_audio,
            commands::audio::audio_peaks,
            commands::history::list_runs,
            commands::history::run_metrics,
            commands::history::export_adapter,
            commands::voices::voice_library,
            commands::voices::rename_voice,
            commands::voices::delete_voice,
            commands::voices::export_voice,
            commands::voices::start_voice,
            commands::voices::cancel_voice,
        ])
}

/// Starts the app (called by `main`).
///
/// # Panics
/// When the window system cannot be initialised.
pub fn run() {
    app_builder(Builder::default())
        .run(tauri::generate_context!())
        .expect("error while running CSM Studio");
}

#[cfg(test)]
mod tests {
    use tauri::ipc::{CallbackFn, InvokeBody};
    use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, INVOKE_KEY};
    use tauri::webview::InvokeRequest;

    fn invoke(cmd: &str, body: serde_json::Value) -> Result<serde_json::Value, serde_json::Value> {
        let app = super::app_builder(mock_builder())
            .build(mock_context(noop_assets()))
            .unwrap();
        let webview = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .unwrap();
        get_ipc_response(
            &webview,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                // tauri://localhost: http://tauri.localhost is Windows/Android only.
                url: "tauri://localhost".parse().unwrap(),
                body: InvokeBody::Json(body),
                headers: Default::default(),
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|r| r.deserialize::<serde_json::Value>().unwrap())
    }

    #[test]
    fn app_info_over_ipc() {
        let info = invoke("app_info", serde_json::json!({})).unwrap();
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["mlxVersion"], env!("CSM_MLX_VERSION"));
        assert!(["cpu", "metal", "cuda"].contains(&info["backend"].as_str().unwrap()));
    }

    #[test]
    fn config_file_errors_cross_ipc_as_kind_and_message() {
        let err = invoke(
            "read_config_file",
            serde_json::json!({ "path": "/no/such/run.json" }),
        )
        .unwrap_err();
        assert_eq!(err["kind"], "notFound");
        assert_eq!(err["message"], "/no/such/run.json does not exist");
    }

    #[test]
    fn config_file_round_trip_over_ipc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg.json");
        // The UI sends TrainConfig's JSON; keys it leaves out take the defaults.
        let config = serde_json::json!({ "lora_r": 4, "model_path": "/m" });
        invoke(
            "write_config_file",
            serde_json::json!({ "path": path, "config": config }),
        )
        .unwrap();
        let back = invoke("read_config_file", serde_json::json!({ "path": path })).unwrap();
        assert_eq!(
            (&back["lora_r"], &back["model_path"]),
            (&config["lora_r"], &config["model_path"])
        );
        assert_eq!(back["batch_size"], 2, "defaults filled in: {back}");
        let err = invoke(
            "write_config_file",
            serde_json::json!({ "path": path, "config": { "lora_rank": 4 } }),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("lora_rank"),
            "unknown keys are refused: {err}"
        );
    }
}
