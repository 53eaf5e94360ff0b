//! Data-parallel fine-tuning over MLX's ring backend on 127.0.0.1: two
//! ranks with batch b must follow the same run as one rank with batch 2b,
//! and a rank that dies must stop the other with a clear message.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{demo, run, step_losses, text, train_args};
use csm_core::checkpoint::WeightMap;

fn launch(n: usize, args: Vec<String>) -> Vec<String> {
    let mut v = vec![
        "launch".to_string(),
        "-n".into(),
        n.to_string(),
        "--".into(),
    ];
    v.extend(args);
    v
}

#[test]
fn two_ranks_match_one_rank_with_the_doubled_batch() {
    let paths = demo();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    let (out, _) = run(
        &train_args(&paths, &one, 4, &[]),
        &cache,
        Duration::from_secs(600),
    );
    assert!(out.status.success(), "{}", text(&out));
    let (out, _) = run(
        &launch(2, train_args(&paths, &two, 2, &[])),
        &cache,
        Duration::from_secs(600),
    );
    assert!(out.status.success(), "{}", text(&out));

    let (a, b) = (step_losses(&one), step_losses(&two));
    assert!(!a.is_empty());
    assert_eq!(a.len(), b.len(), "step counts differ");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "step {}: {x} vs {y}",
            i + 1
        );
    }
    let wa = WeightMap::from_safetensors(&[one.join("adapters.safetensors")], None).unwrap();
    let wb = WeightMap::from_safetensors(&[two.join("adapters.safetensors")], None).unwrap();
    assert_eq!(
        wa.tensors.keys().collect::<Vec<_>>(),
        wb.tensors.keys().collect::<Vec<_>>()
    );
    for (k, x) in &wa.tensors {
        let d = common::max_abs_diff(x, &wb.tensors[k]);
        let s = common::max_abs(x);
        assert!(d <= 1e-3 * s.max(1e-3), "{k}: max diff {d} (scale {s})");
    }
    // Only rank 0 wrote outputs; the metrics report the all-reduce.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"commBytes\""), "no communication stats");
}

#[test]
fn a_dead_rank_stops_the_other_and_the_checkpoint_survives() {
    let paths = demo();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let outdir = tmp.path().join("run");
    // Rank 1 aborts itself at step 3 (debug hook), after checkpoint 2.
    let mut args = launch(2, train_args(&paths, &outdir, 2, &[]));
    args.insert(1, "--env".into());
    args.insert(2, "CSM_DEBUG_ABORT_AT_STEP=1:3".into());
    let (out, took) = run(&args, &cache, Duration::from_secs(600));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("rank 1"), "the dead rank is not named:\n{t}");
    assert!(took < Duration::from_secs(300), "took {took:?}");
    let latest = outdir.join("checkpoint_latest.safetensors");
    csm_core::train::state::load(&latest).expect("checkpoint intact");
    // Resuming completes.
    let resumed: PathBuf = latest;
    let (out, _) = run(
        &launch(
            2,
            train_args(
                &paths,
                &outdir,
                2,
                &["--resume-from", resumed.to_str().unwrap()],
            ),
        ),
        &cache,
        Duration::from_secs(600),
    );
    assert!(out.status.success(), "{}", text(&out));
}
