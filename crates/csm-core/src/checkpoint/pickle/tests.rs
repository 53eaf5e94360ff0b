//! Tests for the restricted torch checkpoint reader.
//!
//! Fixtures live in `tests/fixtures/pickle/` at the repository root and are
//! made by `scripts/fixtures/make_pickle_fixtures.py`.

use std::io::{Cursor, Write};
use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/pickle")
        .join(name)
}

fn load(name: &str) -> Result<TorchCheckpoint, PickleError> {
    load_torch_checkpoint(fixture(name))
}

/// Build an in-memory zip (stored entries, as torch writes them).
fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    make_zip_with(entries, zip::CompressionMethod::Stored)
}

fn make_zip_with(entries: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, data) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }
    out.into_inner()
}

fn read_bytes(bytes: Vec<u8>) -> Result<TorchCheckpoint, PickleError> {
    read_torch_checkpoint(Cursor::new(bytes), "test.pt", &PickleLimits::default())
}

/// Run only the interpreter and the flattening on raw pickle bytes.
fn interpret(pkl: &[u8], limits: &PickleLimits) -> Result<Vec<String>, PickleError> {
    let mut machine = Machine::new(pkl, "test.pkl", limits);
    let root = machine.run()?;
    let (tensors, _, _) = machine.flatten(&root)?;
    Ok(tensors.into_iter().map(|(n, _)| n).collect())
}

fn i64s(t: &RawTensor) -> Vec<i64> {
    assert_eq!(t.dtype, DType::I64);
    t.data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn check_state_dict(ck: &TorchCheckpoint) {
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(
        names,
        [
            "f32",
            "f16",
            "bf16",
            "f64_scalar",
            "i64",
            "i32",
            "i16",
            "i8",
            "u8",
            "bool",
            "transposed",
            "view_offset",
            "shared_a",
            "shared_b",
            "expanded",
            "empty",
            "param",
            "from_type",
        ]
    );
    assert!(ck.skipped.is_empty(), "{:?}", ck.skipped);
    assert_eq!(ck.unwrapped, None);

    let t = ck.get("f32").unwrap();
    assert_eq!((t.dtype, t.shape.as_slice()), (DType::F32, &[2, 3][..]));
    assert_eq!(t.to_f32_vec(), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);

    let t = ck.get("f16").unwrap();
    assert_eq!((t.dtype, t.shape.as_slice()), (DType::F16, &[4][..]));
    assert_eq!(t.to_f32_vec(), [1.0, -2.0, 0.25, 65504.0]);

    let t = ck.get("bf16").unwrap();
    assert_eq!(t.dtype, DType::BF16);
    assert_eq!(t.data, [0x80, 0x3f, 0x40, 0xc0, 0x00, 0x3f]);
    assert_eq!(t.to_f32_vec(), [1.0, -3.0, 0.5]);

    let t = ck.get("f64_scalar").unwrap();
    assert_eq!((t.dtype, t.shape.len(), t.numel()), (DType::F64, 0, 1));
    assert_eq!(t.data, 3.25f64.to_le_bytes());

    assert_eq!(i64s(ck.get("i64").unwrap()), [-2, -1, 0, 1, 1 << 40]);
    let t = ck.get("i32").unwrap();
    assert_eq!((t.dtype, t.to_f32_vec()), (DType::I32, vec![-7.0, 7.0]));
    let t = ck.get("i16").unwrap();
    assert_eq!((t.dtype, t.to_f32_vec()), (DType::I16, vec![-300.0, 300.0]));
    let t = ck.get("i8").unwrap();
    assert_eq!((t.dtype, t.shape.as_slice()), (DType::I8, &[1, 2][..]));
    assert_eq!(t.data, [(-5i8) as u8, 5]);
    let t = ck.get("u8").unwrap();
    assert_eq!((t.dtype, t.data.as_slice()), (DType::U8, &[0, 255, 7][..]));
    let t = ck.get("bool").unwrap();
    assert_eq!((t.dtype, t.data.as_slice()), (DType::Bool, &[1, 0, 1][..]));

    // x = arange(12).view(3, 4); x.t() has shape [4, 3], strides (1, 4)
    let t = ck.get("transposed").unwrap();
    assert_eq!(t.shape, [4, 3]);
    assert_eq!(
        t.to_f32_vec(),
        [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]
    );
    // offset 3, shape [2, 2], strides (3, 1) into arange(10)
    let t = ck.get("view_offset").unwrap();
    assert_eq!(t.shape, [2, 2]);
    assert_eq!(t.to_f32_vec(), [3.0, 4.0, 6.0, 7.0]);

    let a = ck.get("shared_a").unwrap();
    assert_eq!(a.shape, [2, 3]);
    assert_eq!(i64s(a), [10, 11, 12, 13, 14, 15]);
    assert_eq!(i64s(ck.get("shared_b").unwrap()), [12, 13, 14]);

    let t = ck.get("expanded").unwrap();
    assert_eq!(t.shape, [3, 2]);
    assert_eq!(t.to_f32_vec(), [4.0, 5.0, 4.0, 5.0, 4.0, 5.0]);

    let t = ck.get("empty").unwrap();
    assert_eq!((t.shape.as_slice(), t.data.len()), (&[0, 4][..], 0));

    assert_eq!(ck.get("param").unwrap().to_f32_vec(), [9.0, 8.0]);
    assert_eq!(ck.get("from_type").unwrap().to_f32_vec(), [7.0]);

    for (name, t) in &ck.tensors {
        assert_eq!(t.data.len(), t.numel() * t.dtype.size_in_bytes(), "{name}");
    }
}

#[test]
fn reads_protocol_2_state_dict() {
    check_state_dict(&load("state_dict_p2.pt").unwrap());
}

#[test]
fn reads_protocol_4_state_dict_with_file_stem_prefix() {
    check_state_dict(&load("state_dict_p4.pt").unwrap());
}

#[test]
fn reads_big_endian_checkpoint() {
    check_state_dict(&load("big_endian.pt").unwrap());
}

#[test]
fn unwraps_model_key_and_reports_skipped_entries() {
    let ck = load("wrapped_model_p5.pt").unwrap();
    assert_eq!(ck.unwrapped.as_deref(), Some("model"));
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(names, ["embed.weight", "decoder.proj.weight"]);
    assert_eq!(
        ck.get("embed.weight").unwrap().to_f32_vec(),
        [1.0, 2.0, 3.0, 4.0]
    );
    let t = ck.get("decoder.proj.weight").unwrap();
    assert_eq!((t.dtype, t.to_f32_vec()), (DType::F16, vec![0.5, 1.5]));
    let skipped: Vec<(&str, &str)> = ck
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("epoch", "int"),
            ("tag", "str"),
            ("optimizer", "dict"),
            ("decoder.scale", "int"),
        ]
    );
}

#[test]
fn unwraps_state_dict_key() {
    let ck = load("wrapped_state_dict_p2.pt").unwrap();
    assert_eq!(ck.unwrapped.as_deref(), Some("state_dict"));
    assert_eq!(ck.len(), 1);
    assert_eq!(ck.get("w").unwrap().to_f32_vec(), [2.0, 3.0, 4.0]);
    let skipped: Vec<&str> = ck.skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(skipped, ["global_step", "hparams"]);
}

#[test]
fn converts_to_safetensors() {
    let ck = load("state_dict_p2.pt").unwrap();
    let bytes =
        safetensors::serialize(ck.tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in &ck.tensors {
        let view = st.tensor(name).unwrap();
        assert_eq!(view.dtype(), t.dtype.to_safetensors());
        assert_eq!(view.shape(), t.shape.as_slice());
        assert_eq!(view.data(), t.data.as_slice());
    }
}

fn assert_forbidden(err: PickleError, module: &str, name: &str) {
    let message = err.to_string();
    match err {
        PickleError::ForbiddenGlobal {
            module: m,
            name: n,
            file,
        } => {
            assert_eq!((m.as_str(), n.as_str()), (module, name));
            assert!(message.contains(&file), "{message}");
        }
        other => panic!("expected ForbiddenGlobal, got {other:?}"),
    }
    assert!(message.starts_with("refusing to load "), "{message}");
    assert!(
        message.contains(&format!("asks for {module}.{name}")),
        "{message}"
    );
    assert!(message.contains("safetensors"), "{message}");
}

#[test]
fn refuses_os_system_and_runs_nothing() {
    let marker = Path::new("/tmp/csm_pwned_test");
    let _ = std::fs::remove_file(marker);
    let err = load("malicious_os_system.pt").unwrap_err();
    assert!(err.to_string().contains("malicious_os_system.pt"), "{err}");
    assert_forbidden(err, "os", "system");
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn refuses_builtins_eval_in_protocol_4() {
    let err = load("malicious_eval_p4.pt").unwrap_err();
    assert_forbidden(err, "builtins", "eval");
    assert!(!Path::new("/tmp/csm_pwned_test").exists());
}

#[test]
fn refuses_python2_builtin_eval_in_protocol_0_text_global() {
    let err = load("malicious_builtin_p0.pt").unwrap_err();
    assert_forbidden(err, "__builtin__", "eval");
}

#[test]
fn refuses_posix_system_via_inst() {
    let err = load("malicious_posix_inst.pt").unwrap_err();
    assert_forbidden(err, "posix", "system");
}

#[test]
fn refuses_other_globals() {
    let limits = PickleLimits::default();
    let cases: &[(&[u8], &str, &str)] = &[
        (b"\x80\x02csubprocess\nPopen\n.", "subprocess", "Popen"),
        (
            b"\x80\x04\x8c\x02os\x94\x8c\x05popen\x94\x93.",
            "os",
            "popen",
        ),
        (b"cnt\nsystem\n.", "nt", "system"),
        (b"ctorch\nload\n.", "torch", "load"),
        (
            b"ctorch.nn.modules.linear\nLinear\n.",
            "torch.nn.modules.linear",
            "Linear",
        ),
        (
            b"ctorch\nComplexFloatStorage\n.",
            "torch",
            "ComplexFloatStorage",
        ),
        (
            b"ccollections\ndefaultdict\n.",
            "collections",
            "defaultdict",
        ),
        // control characters are escaped in the report
        (b"cos\x1b[2J\nsystem\n.", "os\\u{1b}[2J", "system"),
    ];
    for (pkl, module, name) in cases {
        let err = interpret(pkl, &limits).unwrap_err();
        assert_forbidden(err, module, name);
    }
}

#[test]
fn protocol_0_text_opcodes() {
    // A protocol-0 dict holding ints, a float, strings and a unicode value:
    // all skipped (not tensors), no error.
    let pkl = b"(dp0\nS'a'\np1\nI7\nsS\"b\\x41\"\np2\nF1.5\nsVn\\u00e9\np3\nL12345678901234567890L\nsI01\nI00\ns.";
    let limits = PickleLimits::default();
    let mut machine = Machine::new(pkl, "p0.pkl", &limits);
    let root = machine.run().unwrap();
    let (tensors, skipped, _) = machine.flatten(&root).unwrap();
    assert!(tensors.is_empty());
    let names: Vec<(&str, &str)> = skipped
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("a", "int"),
            ("bA", "float"),
            ("n\u{e9}", "int"),
            ("True", "bool")
        ]
    );
}

#[test]
fn rejects_non_dict_root_and_bad_structures() {
    let limits = PickleLimits::default();
    let err = interpret(b"\x80\x02]q\x00.", &limits).unwrap_err();
    assert!(
        matches!(&err, PickleError::NotAStateDict { found, .. } if found == "list"),
        "{err}"
    );
    // stack underflow, missing mark, bad memo, non-tuple REDUCE args
    for pkl in [
        &b"\x80\x02."[..],
        b"\x80\x02t.",
        b"\x80\x02h\x05.",
        b"\x80\x02ccollections\nOrderedDict\nK\x01R.",
        b"\x80\x02K\x01K\x02R.",
        b"\x80\x02}K\x01a.",
        b"\x80\x07}.",
    ] {
        let err = interpret(pkl, &limits).unwrap_err();
        assert!(matches!(err, PickleError::Malformed { .. }), "{err:?}");
    }
    // EXT1 and NEXT_BUFFER are refused
    for pkl in [&b"\x80\x02\x82\x01."[..], b"\x80\x05\x97."] {
        let err = interpret(pkl, &limits).unwrap_err();
        assert!(
            matches!(err, PickleError::UnsupportedOpcode { .. }),
            "{err:?}"
        );
    }
    // truncated
    let err = interpret(b"\x80\x02X\xff\x00\x00\x00abc", &limits).unwrap_err();
    assert!(matches!(err, PickleError::Truncated { .. }), "{err:?}");
}

#[test]
fn rejects_unsafe_storage_keys() {
    // ('storage', torch.FloatStorage, '../x', 'cpu', 1) as a persistent id
    let pkl = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x04\x00\x00\x00../xX\x03\x00\x00\x00cpuK\x01tQK\x00K\x01\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.";
    let err = interpret(pkl, &PickleLimits::default()).unwrap_err();
    assert!(err.to_string().contains("unsafe storage key"), "{err}");
    // The same with a plain key works at the pickle level.
    let at = pkl.windows(4).position(|w| w == b"../x").unwrap();
    let mut ok = pkl.to_vec();
    ok[at..at + 4].copy_from_slice(b"key0");
    assert_eq!(interpret(&ok, &PickleLimits::default()).unwrap(), ["w"]);
}

#[test]
fn enforces_limits() {
    let tight = PickleLimits {
        max_stack_depth: 8,
        max_memo_entries: 2,
        max_string_bytes: 8,
        max_container_items: 5,
        max_nesting_depth: 1,
        ..PickleLimits::default()
    };
    let cases: &[(&[u8], &str)] = &[
        (
            b"\x80\x02K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01K\x01.",
            "pickle stack depth",
        ),
        (b"\x80\x02((((((((((.", "MARK depth"),
        (b"\x80\x02K\x01q\x00q\x01q\x02.", "memo entries"),
        (
            b"\x80\x02X\x09\x00\x00\x00123456789.",
            "string length in bytes",
        ),
        (
            b"\x80\x02}K\x01K\x01sK\x02K\x02sK\x03K\x03sK\x04K\x04sK\x05K\x05s.",
            "container items",
        ),
        (b"\x80\x02}K\x01}K\x02}ss.", "state dict nesting depth"),
    ];
    for (pkl, what) in cases {
        match interpret(pkl, &tight) {
            Err(PickleError::LimitExceeded { what: w, .. }) => assert_eq!(&w, what),
            other => panic!("{what}: expected LimitExceeded, got {other:?}"),
        }
    }
    // a self-referencing dict is caught by the nesting limit, not a stack overflow
    let cyclic = b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.";
    assert!(matches!(
        interpret(cyclic, &PickleLimits::default()),
        Err(PickleError::LimitExceeded { .. })
    ));
    // data.pkl size
    let small = PickleLimits {
        max_pickle_bytes: 16,
        ..PickleLimits::default()
    };
    let err = load_torch_checkpoint_with_limits(fixture("state_dict_p2.pt"), &small).unwrap_err();
    assert!(matches!(err, PickleError::LimitExceeded { .. }), "{err}");
    // tensor size
    let small = PickleLimits {
        max_tensor_bytes: 8,
        ..PickleLimits::default()
    };
    let err = load_torch_checkpoint_with_limits(fixture("state_dict_p2.pt"), &small).unwrap_err();
    assert!(matches!(err, PickleError::LimitExceeded { .. }), "{err}");
}

/// data.pkl of state_dict_p2.pt
fn p2_pickle() -> Vec<u8> {
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(fixture("state_dict_p2.pt")).unwrap()).unwrap();
    let mut pkl = Vec::new();
    archive
        .by_name("archive/data.pkl")
        .unwrap()
        .read_to_end(&mut pkl)
        .unwrap();
    pkl
}

#[test]
fn archive_level_errors() {
    // not a zip
    let err = read_bytes(b"hello, not a zip".to_vec()).unwrap_err();
    assert!(matches!(err, PickleError::Zip { .. }), "{err}");
    assert_eq!(err.file(), "test.pt");
    assert!(err.to_string().contains("test.pt"));
    // a bare pickle without the legacy magic number
    let err = read_bytes(b"\x80\x02}q\x00.".to_vec()).unwrap_err();
    assert!(matches!(err, PickleError::LegacyFormat { .. }), "{err}");
    // the legacy magic number and nothing after it
    let err = read_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec()).unwrap_err();
    assert!(matches!(err, PickleError::Truncated { .. }), "{err}");
    // zip without data.pkl
    let err = read_bytes(make_zip(&[("archive/version", b"3\n")])).unwrap_err();
    assert!(matches!(err, PickleError::MissingRecord { .. }), "{err}");
    // missing storage record
    let pkl = p2_pickle();
    let err = read_bytes(make_zip(&[("archive/data.pkl", &pkl)])).unwrap_err();
    assert!(
        matches!(&err, PickleError::MissingRecord { record, .. } if record == "archive/data/0"),
        "{err}"
    );
    // storage shorter than declared
    let mut entries: Vec<(String, Vec<u8>)> = vec![("archive/data.pkl".into(), pkl.clone())];
    for key in 0..20 {
        entries.push((format!("archive/data/{key}"), vec![0u8; 2]));
    }
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let err = read_bytes(make_zip(&refs)).unwrap_err();
    assert!(matches!(err, PickleError::BadStorage { .. }), "{err}");
    // a bad byteorder record
    let err = read_bytes(make_zip(&[
        ("archive/data.pkl", &pkl),
        ("archive/byteorder", b"middle"),
    ]))
    .unwrap_err();
    assert!(matches!(err, PickleError::Malformed { .. }), "{err}");
    // root-level data.pkl (no prefix directory) is accepted
    let ck = read_bytes(make_zip(&[("data.pkl", b"\x80\x02}.")])).unwrap();
    assert!(ck.is_empty());
}

#[test]
fn tensor_out_of_storage_bounds() {
    // one f32 element of storage, tensor of shape [2]
    let pkl = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRu.";
    let err = read_bytes(make_zip(&[
        ("archive/data.pkl", pkl),
        ("archive/data/0", &1.0f32.to_le_bytes()),
    ]))
    .unwrap_err();
    assert!(
        matches!(&err, PickleError::BadTensor { name, .. } if name == "w"),
        "{err}"
    );
    // huge strides on a size-1 dimension do not overflow
    let t = TensorRef {
        storage: Rc::new(StorageRef {
            dtype: DType::F32,
            key: "0".into(),
            numel: 1,
        }),
        offset: 0,
        shape: vec![1, 1],
        strides: vec![usize::MAX, usize::MAX],
    };
    assert_eq!(gather(&[1, 2, 3, 4], 4, &t, 1 << 20).unwrap(), [1, 2, 3, 4]);
    let t = TensorRef {
        shape: vec![2, 2],
        strides: vec![usize::MAX / 2, 1],
        ..t
    };
    assert!(gather(&[0; 16], 4, &t, 1 << 20).is_err());
}

/// Tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzz_interpreter_never_panics() {
    let limits = PickleLimits {
        max_stack_depth: 1 << 12,
        max_memo_entries: 1 << 12,
        max_string_bytes: 1 << 12,
        max_container_items: 1 << 14,
        ..PickleLimits::default()
    };
    let seed = p2_pickle();
    // every truncation of a real pickle
    for len in 0..seed.len() {
        assert!(
            interpret(&seed[..len], &limits).is_err(),
            "prefix {len} parsed"
        );
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    // byte flips, insertions and deletions of a real pickle
    for _ in 0..3000 {
        let mut data = seed.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(data.len());
            match rng.below(3) {
                0 => data[at] = rng.next() as u8,
                1 => data.insert(at, rng.next() as u8),
                _ => {
                    data.remove(at);
                }
            }
        }
        let _ = interpret(&data, &limits);
    }
    // random opcode soup, biased towards real opcodes and small operands
    const OPS: &[u8] = b"()]}.0123NJKMGIFLSVXBCTUacdeghijlopqrstub\x80\x81\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98Q";
    for _ in 0..20000 {
        let len = rng.below(64);
        let data: Vec<u8> = (0..len)
            .map(|_| match rng.below(4) {
                0 => rng.next() as u8,
                1 => rng.below(4) as u8,
                _ => OPS[rng.below(OPS.len())],
            })
            .collect();
        let _ = interpret(&data, &limits);
    }
}

#[test]
fn fuzz_archive_never_panics() {
    let seed = std::fs::read(fixture("state_dict_p2.pt")).unwrap();
    let limits = PickleLimits::default();
    let read = |bytes: Vec<u8>| read_torch_checkpoint(Cursor::new(bytes), "fuzz.pt", &limits);
    for len in (0..seed.len()).step_by(7) {
        assert!(read(seed[..len].to_vec()).is_err(), "prefix {len} parsed");
    }
    let mut rng = Rng(0xfeed_beef_0bad_f00d);
    for _ in 0..1500 {
        let mut data = seed.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(data.len());
            data[at] = rng.next() as u8;
        }
        let _ = read(data);
    }
}

#[test]
fn reads_deflated_entries() {
    // torch stores entries uncompressed, but a re-zipped checkpoint may deflate them
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(fixture("state_dict_p2.pt")).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.push((entry.name().to_string(), data));
    }
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let ck = read_bytes(make_zip_with(&refs, zip::CompressionMethod::Deflated)).unwrap();
    check_state_dict(&ck);
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let err = load("does_not_exist.pt").unwrap_err();
    assert!(matches!(err, PickleError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does_not_exist.pt"), "{err}");
}

#[test]
fn error_is_send_sync_and_static() {
    fn check<E: std::error::Error + Send + Sync + 'static>() {}
    check::<PickleError>();
}

/// Checks shared by the files written by real `torch.save` (torch 2.15,
/// scripts/fixtures/make_torch_fixtures.py).
fn check_real_state_dict(ck: &TorchCheckpoint) {
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "half",
            "bf16",
            "long",
            "int32",
            "int16",
            "int8",
            "uint8",
            "bool",
            "scalar",
            "transposed",
            "offset_view",
            "shared_a",
            "shared_b",
            "expanded",
        ]
    );
    assert!(ck.skipped.is_empty(), "{:?}", ck.skipped);
    let w = ck.get("0.weight").unwrap();
    assert_eq!((w.dtype, w.shape.as_slice()), (DType::F32, &[2, 3][..]));
    assert_eq!(w.to_f32_vec(), [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    assert_eq!(ck.get("0.bias").unwrap().to_f32_vec(), [1.0, -1.0]);
    assert_eq!(ck.get("1.weight").unwrap().to_f32_vec(), [2.0, 3.0]);
    assert_eq!(ck.get("1.bias").unwrap().to_f32_vec(), [0.5, -0.5]);
    let t = ck.get("half").unwrap();
    assert_eq!(
        (t.dtype, t.to_f32_vec()),
        (DType::F16, vec![-1.5, -0.5, 0.5, 1.5])
    );
    let t = ck.get("bf16").unwrap();
    assert_eq!(
        (t.dtype, t.to_f32_vec()),
        (DType::BF16, vec![1.0, -3.0, 0.5])
    );
    assert_eq!(i64s(ck.get("long").unwrap()), [-2, -1, 0, 1, 1 << 40]);
    let t = ck.get("int32").unwrap();
    assert_eq!((t.dtype, t.to_f32_vec()), (DType::I32, vec![-7.0, 7.0]));
    let t = ck.get("int16").unwrap();
    assert_eq!((t.dtype, t.to_f32_vec()), (DType::I16, vec![-300.0, 300.0]));
    let t = ck.get("int8").unwrap();
    assert_eq!((t.dtype, t.shape.as_slice()), (DType::I8, &[1, 2][..]));
    assert_eq!(t.to_f32_vec(), [-5.0, 5.0]);
    let t = ck.get("uint8").unwrap();
    assert_eq!((t.dtype, t.data.as_slice()), (DType::U8, &[0, 255, 7][..]));
    let t = ck.get("bool").unwrap();
    assert_eq!((t.dtype, t.data.as_slice()), (DType::Bool, &[1, 0, 1][..]));
    let t = ck.get("scalar").unwrap();
    assert_eq!((t.dtype, t.shape.len()), (DType::F64, 0));
    assert_eq!(t.data, 3.25f64.to_le_bytes());
    let t = ck.get("transposed").unwrap();
    assert_eq!(t.shape, [4, 3]);
    assert_eq!(
        t.to_f32_vec(),
        [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]
    );
    let t = ck.get("offset_view").unwrap();
    assert_eq!(t.shape, [2, 2]);
    assert_eq!(t.to_f32_vec(), [3.0, 4.0, 6.0, 7.0]);
    assert_eq!(i64s(ck.get("shared_a").unwrap()), [10, 11, 12, 13, 14, 15]);
    assert_eq!(ck.get("shared_a").unwrap().shape, [2, 3]);
    assert_eq!(i64s(ck.get("shared_b").unwrap()), [12, 13, 14]);
    let t = ck.get("expanded").unwrap();
    assert_eq!(t.shape, [3, 2]);
    assert_eq!(t.to_f32_vec(), [4.0, 5.0, 4.0, 5.0, 4.0, 5.0]);
}

#[test]
fn reads_real_torch_save() {
    check_real_state_dict(&load("real_state_dict.pt").unwrap());
}

#[test]
fn reads_real_torch_save_protocol_4() {
    check_real_state_dict(&load("real_state_dict_p4.pt").unwrap());
}

#[test]
fn reads_real_torch_parameters() {
    let ck = load("real_parameters.pt").unwrap();
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias"]);
    assert_eq!(ck.get("0.bias").unwrap().to_f32_vec(), [1.0, -1.0]);
}

#[test]
fn reads_real_torch_training_checkpoint() {
    let ck = load("real_wrapped.pt").unwrap();
    assert_eq!(ck.unwrapped.as_deref(), Some("model"));
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias"]);
    assert_eq!(
        ck.get("0.weight").unwrap().to_f32_vec(),
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    );
    let skipped: Vec<(&str, &str)> = ck
        .skipped
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(skipped, [("optimizer", "dict"), ("epoch", "int")]);
}

#[test]
fn reads_real_legacy_format() {
    // torch.save(..., _use_new_zipfile_serialization=False): a stream of pickles
    let ck = load("real_legacy.pt").unwrap();
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(names, ["w"]);
    let w = ck.get("w").unwrap();
    assert_eq!((w.dtype, w.to_f32_vec()), (DType::F32, vec![1.0, 1.0]));
}

/// The pickles of a legacy file up to the object: magic, version, sys_info.
const LEGACY_HEADER: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\
    \x80\x02M\xe9\x03.\
    \x80\x02}X\r\x00\x00\x00little_endianq\x00\x88s.";

#[test]
fn legacy_format_errors() {
    let real = std::fs::read(fixture("real_legacy.pt")).unwrap();
    // Every cut of the real file is an error, never a panic or a short tensor.
    for len in 0..real.len() {
        assert!(
            read_bytes(real[..len].to_vec()).is_err(),
            "prefix {len} parsed"
        );
    }
    // The storage's size header (before its 8 bytes of data) disagrees.
    let mut bad = real.clone();
    let at = bad.len() - 16;
    bad[at] = 3;
    let err = read_bytes(bad).unwrap_err();
    assert!(matches!(err, PickleError::BadStorage { .. }), "{err}");
    // The same allow-list guards the object pickle.
    let mut evil = LEGACY_HEADER.to_vec();
    evil.extend_from_slice(b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.");
    let err = read_bytes(evil).unwrap_err();
    assert_forbidden(err, "posix", "system");
    // A view into a storage (PyTorch < 1.0) is refused.
    let mut view = LEGACY_HEADER.to_vec();
    view.extend_from_slice(
        b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(\
          (X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02\
          (X\x01\x00\x00\x001K\x00K\x01ttQK\x00K\x01\x85K\x01\x85\x89)tRs.",
    );
    let err = read_bytes(view).unwrap_err();
    assert!(
        matches!(&err, PickleError::Malformed { reason, .. } if reason.contains("views")),
        "{err}"
    );
    // A big-endian sys_info is refused.
    let big = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\
        \x80\x02}X\r\x00\x00\x00little_endianq\x00\x89s.\x80\x02}.\x80\x02].";
    let err = read_bytes(big.to_vec()).unwrap_err();
    assert!(matches!(err, PickleError::Malformed { .. }), "{err}");
    // The smallest well-formed file: an empty dict and no storages.
    let mut empty = LEGACY_HEADER.to_vec();
    empty.extend_from_slice(b"\x80\x02}.\x80\x02].");
    assert!(read_bytes(empty).unwrap().is_empty());
}

#[test]
fn fuzz_real_pickle_never_panics() {
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(fixture("real_wrapped.pt")).unwrap()).unwrap();
    let mut seed = Vec::new();
    archive
        .by_name("real_wrapped/data.pkl")
        .unwrap()
        .read_to_end(&mut seed)
        .unwrap();
    let limits = PickleLimits::default();
    for len in 0..seed.len() {
        assert!(
            interpret(&seed[..len], &limits).is_err(),
            "prefix {len} parsed"
        );
    }
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..3000 {
        let mut data = seed.clone();
        let at = rng.below(data.len());
        data[at] = rng.next() as u8;
        let _ = interpret(&data, &limits);
    }
}

#[test]
fn reads_real_tensors_with_python_state() {
    // _rebuild_from_type_v2 (tensor with an attribute) and
    // _rebuild_parameter_with_state (parameter with an attribute)
    let ck = load("real_with_state.pt").unwrap();
    let names: Vec<&str> = ck.names().collect();
    assert_eq!(names, ["tagged", "param"]);
    assert_eq!(ck.get("tagged").unwrap().to_f32_vec(), [0.0, 1.0, 2.0]);
    assert_eq!(ck.get("param").unwrap().to_f32_vec(), [1.0, 2.0]);
}
