"""The peer of `csm bench-transcribe`: transformers' Whisper on the same work.

A `WhisperForConditionalGeneration` of a released shape with random
weights (built from a config; nothing is downloaded), the recording cut
into consecutive 30 s windows, and per window what transformers' ASR
pipeline does for one chunk: `WhisperFeatureExtractor` features, then
`generate` (greedy, English, transcribe, no timestamps) with exactly
`--tokens` new tokens (`min_new_tokens = max_new_tokens`: end of text is
suppressed until then, so a random model decodes as much as ours). Timed:
features, encoder and decoder of every window. Not timed: reading the file,
building the model, the warm-up window.

    python bench/whisper/peer.py --size tiny --audio speech16k.wav --tokens 100 \
        [--device cuda] [--dtype float32] [--threads N] [--json OUT.json]

Needs torch, transformers and numpy (the venv of scripts/fixtures/README.md).
The vocabulary's special ids and non-speech tokens come from the committed
fixture tests/fixtures/whisper/reference.json (tiny80: the 99-language
vocabulary of tiny ... large-v2; tiny128: the 100-language one of large-v3).
"""

import argparse
import json
import os
import platform
import sys
import time
import wave
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "tests" / "fixtures" / "whisper" / "reference.json"

# (mel bins, d_model, encoder layers, decoder layers, heads, fixture with its vocabulary)
SHAPES = {
    "tiny": (80, 384, 4, 4, 6, "tiny80"),
    "large-v3-turbo": (128, 1280, 32, 4, 20, "tiny128"),
}


def read_wav_16k(path):
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == 16000, f"{path}: {w.getframerate()} Hz, need 16000"
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, f"{path}: need mono 16-bit"
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def build(size, device, dtype):
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    mels, d, enc, dec, heads, fixture = SHAPES[size]
    ref = json.loads(REFERENCE.read_text())["models"][fixture]
    sp = ref["special"]
    vocab = ref["vocab_size"]
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=mels, d_model=d,
        encoder_layers=enc, decoder_layers=dec,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d,
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=sp["sot"], pad_token_id=sp["eot"],
        bos_token_id=sp["eot"], eos_token_id=sp["eot"],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval().to(device=device, dtype=dtype)
    # Only the ids generate() needs: English at sot + 1.
    model.generation_config = GenerationConfig(
        begin_suppress_tokens=[220, sp["eot"]],
        bos_token_id=sp["eot"], decoder_start_token_id=sp["sot"],
        eos_token_id=sp["eot"], pad_token_id=sp["eot"],
        is_multilingual=True,
        lang_to_id={"<|en|>": sp["en"]},
        task_to_id={"transcribe": sp["transcribe"], "translate": sp["translate"]},
        max_initial_timestamp_index=50,
        no_timestamps_token_id=sp["no_timestamps"], prev_sot_token_id=sp["sot_prev"],
        suppress_tokens=ref["non_speech_tokens"], return_timestamps=False,
    )
    params = sum(p.numel() for p in model.parameters())
    return model, params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--audio", required=True, help="16 kHz mono 16-bit WAV")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args()

    from transformers import WhisperFeatureExtractor
    import transformers

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    audio = read_wav_16k(args.audio)
    audio_s = len(audio) / 16000
    model, params = build(args.size, device, dtype)
    mels = SHAPES[args.size][0]
    fe = WhisperFeatureExtractor(feature_size=mels)
    chunk = 30 * 16000
    windows = [audio[i:i + chunk] for i in range(0, len(audio) // 160 * 160, chunk)]
    fe_kwargs = {"device": args.device} if device.type == "cuda" else {}
    sp = json.loads(REFERENCE.read_text())["models"][SHAPES[args.size][5]]["special"]
    # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>, as ours.
    prompt = [sp["sot"], sp["en"], sp["transcribe"], sp["no_timestamps"]]

    def run_window(x):
        t0 = time.perf_counter()
        feats = fe(x, sampling_rate=16000, return_tensors="pt", **fe_kwargs).input_features
        feats = feats.to(device=device, dtype=dtype)
        sync()
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                feats, language="en", task="transcribe", return_timestamps=False,
                max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                do_sample=False, num_beams=1, return_dict_in_generate=True,
            ).sequences
        sync()
        t2 = time.perf_counter()
        assert out[0, :4].tolist() == prompt, f"prompt {out[0, :4].tolist()}, not {prompt}"
        new = out.shape[-1] - len(prompt)
        assert new == args.tokens, f"decoded {new} tokens, not {args.tokens}"
        return t1 - t0, t2 - t1, new

    for _ in range(args.warmup):
        run_window(windows[0])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    feature_s = generate_s = 0.0
    tokens = 0
    for x in windows:
        f, g, n = run_window(x)
        feature_s += f
        generate_s += g
        tokens += n
    total_s = time.perf_counter() - start

    result = {
        "side": "transformers",
        "size": args.size,
        "dtype": args.dtype,
        "device": str(device),
        "parameters": params,
        "audio_s": audio_s,
        "windows": len(windows),
        "tokens_per_window": args.tokens,
        "tokens": tokens,
        "features_s": feature_s,
        "generate_s": generate_s,
        "total_s": total_s,
        "rtf": total_s / audio_s,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "attn_implementation": model.config._attn_implementation,
        },
    }
    text = json.dumps(result)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
