//! The espeak-ng demo dataset (needs `espeak-ng`, which CI installs).

use csm_core::data::audio;
use csm_core::data::espeak::{generate_demo_dataset, DemoOptions, DEMO_SENTENCES};
use csm_core::data::{
    load_dataset, scan_dataset, DataError, DatasetLayout, LoadOptions, ScanOptions,
};

#[test]
fn demo_dataset_is_spoken_paired_and_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        count: Some(2),
        ..DemoOptions::default()
    };
    let summary = generate_demo_dataset(dir.path(), &opts).unwrap();
    assert_eq!(summary.files, 2);
    assert!(summary.duration_s > 2.0, "{}", summary.duration_s);

    for (i, sentence) in DEMO_SENTENCES[..2].iter().enumerate() {
        let wav = dir.path().join(format!("audio/{i:03}.wav"));
        let info = audio::read_wav_info(&wav).unwrap();
        assert_eq!(
            (info.sample_rate, info.channels, info.bits_per_sample),
            (24_000, 1, 16)
        );
        assert!(info.duration_s() > 1.0, "{}", info.duration_s());
        let samples = audio::read_wav(&wav).unwrap().to_mono();
        assert!(
            audio::to_dbfs(audio::rms(&samples)) > -40.0,
            "speech, not silence"
        );
        let txt =
            std::fs::read_to_string(dir.path().join(format!("transcripts/{i:03}.txt"))).unwrap();
        assert_eq!(txt.trim(), *sentence);
    }
    // No temporary files left behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join("audio")).unwrap().count(),
        2
    );

    let layout = DatasetLayout::from_root(dir.path());
    let report = scan_dataset(&layout, &ScanOptions::default()).unwrap();
    assert_eq!(report.totals.usable_files, 2);
    assert!(
        report.files.iter().all(|f| f.problems.is_empty()),
        "{:?}",
        report.files
    );
    let ds = load_dataset(&layout, &LoadOptions::default()).unwrap();
    assert_eq!(ds.len(), 2);

    // A second run refuses to mix into the existing files.
    let err = generate_demo_dataset(dir.path(), &opts).unwrap_err();
    assert!(matches!(err, DataError::OutputNotEmpty { .. }), "{err:?}");
    let again = DemoOptions {
        overwrite: true,
        ..opts
    };
    assert_eq!(generate_demo_dataset(dir.path(), &again).unwrap().files, 2);
}
