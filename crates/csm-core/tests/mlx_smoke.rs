//! Smoke tests of the MLX layer on the CPU: each checks real numbers against
//! an independent reference (naive loops, calculus, exact bit patterns).

use csm_core::checkpoint::{load_strict, CheckpointError, WeightMap};
use csm_core::mlx_rs::error::Exception;
use csm_core::mlx_rs::module::{Module, ModuleParameters};
use csm_core::mlx_rs::transforms::{self, compile::compile};
use csm_core::mlx_rs::{random, Array, Dtype};
use csm_core::model::proj::Proj;

fn to_vec(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn matmul_matches_naive_loops() {
    let (m, k, n) = (37usize, 53usize, 29usize);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let mut expected = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            expected[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    let got = Array::from_slice(&a, &[m as i32, k as i32])
        .matmul(Array::from_slice(&b, &[k as i32, n as i32]))
        .unwrap();
    assert_eq!(got.shape(), &[m as i32, n as i32]);
    assert!(max_abs_diff(&to_vec(&got), &expected) < 1e-4);
}

#[test]
fn grad_of_known_function() {
    // f(x) = sum(x^3 + 2x) -> f'(x) = 3x^2 + 2
    let xs = [-2.0f32, -0.5, 0.0, 1.5, 3.0];
    let f = |x: &Array| -> Result<Array, Exception> {
        x.power(Array::from_f32(3.0))?
            .add(&x.multiply(Array::from_f32(2.0))?)?
            .sum(None)
    };
    let mut g = transforms::grad(f);
    let got = g(&Array::from_slice(&xs, &[5])).unwrap();
    let expected: Vec<f32> = xs.iter().map(|x| 3.0 * x * x + 2.0).collect();
    assert!(max_abs_diff(&to_vec(&got), &expected) < 1e-4);
}

#[test]
fn half_precision_round_trips_are_exact_on_representable_values() {
    // Values exactly representable in both bf16 and f16.
    let xs = [0.0f32, 1.0, -2.5, 0.15625, 1024.0, -0.0078125];
    for dtype in [Dtype::Bfloat16, Dtype::Float16] {
        let back = Array::from_slice(&xs, &[6])
            .as_dtype(dtype)
            .unwrap()
            .as_dtype(Dtype::Float32)
            .unwrap();
        assert_eq!(to_vec(&back), xs.to_vec(), "{dtype:?}");
    }
    // bf16 keeps 8 bits of mantissa: 1 + 2^-9 rounds to 1 (to nearest even).
    let r = Array::from_f32(1.0 + 1.0 / 512.0)
        .as_dtype(Dtype::Bfloat16)
        .unwrap()
        .as_dtype(Dtype::Float32)
        .unwrap();
    assert_eq!(to_vec(&r), vec![1.0]);
}

#[test]
fn safetensors_round_trip_through_our_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let a = Array::from_slice(&[1.0f32, -2.0, 3.5, 4.25, 0.5, 6.0], &[2, 3]);
    let b = Array::from_slice(&[7i32, -8, 9], &[3]);
    let c = Array::from_slice(&[1.5f32, -0.25], &[2])
        .as_dtype(Dtype::Bfloat16)
        .unwrap();
    Array::save_safetensors([("a", &a), ("b", &b), ("c", &c)], None, &path).unwrap();
    let map = WeightMap::from_safetensors(std::slice::from_ref(&path), None).unwrap();
    assert_eq!(map.tensors.len(), 3);
    assert_eq!(map.tensors["a"].shape(), &[2, 3]);
    assert_eq!(to_vec(&map.tensors["a"]), to_vec(&a));
    assert_eq!(map.tensors["b"].dtype(), Dtype::Int32);
    assert_eq!(map.tensors["b"].as_slice::<i32>(), &[7, -8, 9]);
    assert_eq!(map.tensors["c"].dtype(), Dtype::Bfloat16);
    assert_eq!(to_vec(&map.tensors["c"]), vec![1.5, -0.25]);
    // Casting floats on read leaves integers alone.
    let cast = WeightMap::from_safetensors(&[path], Some(Dtype::Float16)).unwrap();
    assert_eq!(cast.tensors["a"].dtype(), Dtype::Float16);
    assert_eq!(cast.tensors["b"].dtype(), Dtype::Int32);
}

#[test]
fn corrupt_safetensors_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, b"not a safetensors file at all").unwrap();
    let err = WeightMap::from_safetensors(std::slice::from_ref(&path), None).unwrap_err();
    assert!(matches!(err, CheckpointError::Safetensors { .. }));
    assert!(err.to_string().contains("bad.safetensors"), "{err}");
}

#[test]
fn compiled_function_matches_eager() {
    let f = |inputs: &[Array]| -> Result<Vec<Array>, Exception> {
        let y = inputs[0].multiply(&inputs[1])?.add(&inputs[0].exp()?)?;
        Ok(vec![y.sum(None)?])
    };
    let mut compiled = compile(f, None);
    let x = Array::from_slice(&[0.5f32, -1.0, 2.0, 0.25], &[4]);
    let w = Array::from_slice(&[1.0f32, 2.0, -3.0, 4.0], &[4]);
    let eager = f(&[x.clone(), w.clone()]).unwrap();
    let fast = compiled(&[x.clone(), w.clone()]).unwrap();
    let expected: f32 = [0.5f32, -1.0, 2.0, 0.25]
        .iter()
        .zip([1.0f32, 2.0, -3.0, 4.0])
        .map(|(x, w)| x * w + x.exp())
        .sum();
    assert!((to_vec(&eager[0])[0] - expected).abs() < 1e-4);
    assert!((to_vec(&fast[0])[0] - expected).abs() < 1e-4);
    // A second call with new values reuses the compiled graph correctly.
    let x2 = Array::from_slice(&[1.0f32, 1.0, 1.0, 1.0], &[4]);
    let again = compiled(&[x2, w]).unwrap();
    let expected2: f32 = [1.0f32, 2.0, -3.0, 4.0]
        .iter()
        .map(|w| w + 1f32.exp())
        .sum();
    assert!((to_vec(&again[0])[0] - expected2).abs() < 1e-4);
}

#[test]
fn seeding_makes_random_draws_reproducible() {
    random::seed(1234).unwrap();
    let a = to_vec(&random::normal::<f32>(&[64], None, None, None).unwrap());
    random::seed(1234).unwrap();
    let b = to_vec(&random::normal::<f32>(&[64], None, None, None).unwrap());
    random::seed(4321).unwrap();
    let c = to_vec(&random::normal::<f32>(&[64], None, None, None).unwrap());
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Explicit keys are independent of the global state.
    let k = random::key(9).unwrap();
    let d = to_vec(&random::uniform::<_, f32>(0.0, 1.0, &[8], &k).unwrap());
    random::seed(1).unwrap();
    let e = to_vec(&random::uniform::<_, f32>(0.0, 1.0, &[8], &k).unwrap());
    assert_eq!(d, e);
}

#[test]
fn lora_starts_at_base_output_and_merges_exactly() {
    random::seed(3).unwrap();
    let w = random::normal::<f32>(&[6, 4], None, None, None).unwrap();
    let x = random::normal::<f32>(&[3, 4], None, None, None).unwrap();
    let mut base = Proj::new(w.clone());
    let y0 = to_vec(&base.forward(&x).unwrap());
    let mut adapted = Proj::new(w);
    adapted.attach_lora(2, 16.0, 0.0, false).unwrap();
    // B = 0 at start: identical output.
    assert_eq!(to_vec(&adapted.forward(&x).unwrap()), y0);
    // Only the adapter is trainable.
    let trainable: Vec<String> = adapted
        .trainable_parameters()
        .flatten()
        .keys()
        .map(|k| k.to_string())
        .collect();
    let mut sorted = trainable.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["lora_a", "lora_b"]);
    // Give B values, then merging must reproduce the adapted output.
    adapted.lora_b.value = Some(random::normal::<f32>(&[2, 6], None, None, None).unwrap());
    let y_lora = to_vec(&adapted.forward(&x).unwrap());
    assert!(max_abs_diff(&y_lora, &y0) > 1e-3, "adapter had no effect");
    adapted.merge_lora().unwrap();
    assert!(!adapted.has_lora());
    assert!(max_abs_diff(&to_vec(&adapted.forward(&x).unwrap()), &y_lora) < 1e-4);
}

#[test]
fn strict_loading_lists_missing_unexpected_and_misshaped_keys() {
    let mut proj = Proj::new(Array::zeros::<f32>(&[4, 3]).unwrap());
    let mut weights = WeightMap::new("test.safetensors");
    weights.insert("weight", Array::zeros::<f32>(&[3, 4]).unwrap());
    weights.insert("extra", Array::zeros::<f32>(&[1]).unwrap());
    let err = load_strict(&mut proj, weights).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("test.safetensors"), "{text}");
    assert!(
        text.contains("1 unexpected") && text.contains("extra"),
        "{text}"
    );
    assert!(text.contains("weight: [4, 3] vs [3, 4]"), "{text}");

    let mut weights = WeightMap::new("ok.safetensors");
    weights.insert("weight", Array::ones::<f32>(&[4, 3]).unwrap());
    load_strict(&mut proj, weights).unwrap();
    assert_eq!(to_vec(&proj.weight.value), vec![1.0; 12]);

    let err = load_strict(&mut proj, WeightMap::new("empty")).unwrap_err();
    assert!(err.to_string().contains("1 missing"), "{err}");
}
