#!/usr/bin/env python3
"""Peer benchmark: transformers CsmForConditionalGeneration.generate speed.

CSM-1B-shaped model with random weights (no adapter). A prompt of
--prompt-frames text frames (BOS, random words, text EOS) is followed by
exactly --frames generated audio frames. Each frame = one backbone step (KV
cache, transformers' default DynamicCache) + the depth decoder's own
generate() over codebooks 1..31.

Sampling: top-k 50, temperature 0.9 for codebook 0 and for the depth decoder
(HF's csm-1b generation config), or --greedy for argmax everywhere.

Fixed frame count: CSM's generate stops when a generated frame's first 31
codes are all codebook_eos_token_id (0). With random weights that is
practically impossible, but not excluded. We pass suppress_tokens=[0] (SuppressTokensLogitsProcessor on the
backbone's codebook-0 logits), so c0 is never 0 and no frame can be EOS; with
max_new_tokens=--frames the run produces exactly --frames frames (asserted).

Codec decode (Mimi, real kyutai/mimi size, random weights) is timed
separately and is NOT in the generation numbers (--no-decode skips it). Codes
>= 2048 (ids the random model may pick, unused by Mimi) are clamped to 2047
before decoding.

Real-time factor here = audio seconds produced per wall second
(frames / 12.5 / wall); > 1 is faster than real time.

Example:
  python bench/peer/generate.py --frames 25 --threads 8 --json gen.json
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FRAME_RATE = 12.5  # CSM / Mimi frames per second of audio


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["1b", "tiny"], default="1b")
    ap.add_argument("--frames", type=int, default=25, help="audio frames to generate per run (default 25 = 2 s)")
    ap.add_argument("--prompt-frames", type=int, default=20, help="text frames in the prompt incl. BOS/EOS (default 20)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs (default 3); medians are reported")
    ap.add_argument("--warmup-frames", type=int, default=3, help="frames of one untimed warm-up run (0 = none)")
    ap.add_argument("--greedy", action="store_true", help="argmax for c0 and the depth decoder instead of top-k 50 / T 0.9")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--codec", choices=["auto", "real", "tiny"], default="auto",
                    help="Mimi used for the decode timing: auto = real for --size 1b, tiny for --size tiny")
    ap.add_argument("--no-decode", action="store_true", help="skip the (separately timed) Mimi decode")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = os.cpu_count())")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.frames < 2 or a.prompt_frames < 2 or a.runs < 1:
        ap.error("need --frames >= 2, --prompt-frames >= 2, --runs >= 1")
    return a


class TimeStreamer:
    """generate() calls put() once with the prompt, then once per generated frame."""

    def __init__(self, device):
        self.device = device
        self.t = []
        self.shapes = []

    def put(self, value):
        self.t.append(time.perf_counter())  # value is already on the CPU: the step has synchronised
        self.shapes.append(tuple(value.shape))

    def end(self):
        pass


def main():
    args = parse_args()
    import torch

    threads = common.setup_threads(args.threads)
    if args.device == "cuda":
        assert torch.cuda.is_available(), "--device cuda but CUDA is not available"
    env = common.env_info(args.device)
    common.print_env(env)

    dtype = common.parse_dtype(args.dtype)
    codec = args.codec if args.codec != "auto" else ("real" if args.size == "1b" else "tiny")
    cfg = common.csm_config(args.size, codec=codec)
    t0 = time.perf_counter()
    model = common.build_model(cfg, args.device, dtype, attn=args.attn, seed=args.seed)
    model.eval()
    build_s = time.perf_counter() - t0
    rss_after_build = common.rss_mb()
    print(f"== model built in {build_s:.1f} s")

    gen = torch.Generator().manual_seed(args.seed + 1)
    tiny = args.size == "tiny"
    text_eos = 2 if tiny else 128001
    lo, hi = (5, cfg.text_vocab_size) if tiny else (0, 128000)
    words = torch.randint(lo, hi, (args.prompt_frames - 2,), generator=gen)
    ids = torch.cat([torch.tensor([cfg.bos_token_id]), words, torch.tensor([text_eos])])[None].long().to(args.device)
    attn_mask = torch.ones_like(ids)

    if args.greedy:
        sampling = dict(do_sample=False, depth_decoder_do_sample=False)
    else:
        sampling = dict(do_sample=True, top_k=args.top_k, temperature=args.temperature,
                        depth_decoder_do_sample=True, depth_decoder_top_k=args.top_k,
                        depth_decoder_temperature=args.temperature)

    def run(n_frames, seed):
        torch.manual_seed(seed)
        st = TimeStreamer(args.device)
        common.sync(args.device)
        ta = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=attn_mask, max_new_tokens=n_frames,
                             suppress_tokens=[cfg.codebook_eos_token_id], streamer=st,
                             output_audio=False, **sampling)
        common.sync(args.device)
        tb = time.perf_counter()
        codes = out if isinstance(out, torch.Tensor) else out.sequences
        assert codes.shape == (1, n_frames, cfg.num_codebooks), (codes.shape, n_frames)
        assert bool((codes[..., 0] != cfg.codebook_eos_token_id).all()), "suppress_tokens did not act on c0"
        frame_t = st.t[1:]  # first put is the prompt
        assert len(frame_t) == n_frames and st.shapes[0] == tuple(ids.shape), st.shapes[:2]
        first = frame_t[0] - ta
        steady = (frame_t[-1] - frame_t[0]) / (n_frames - 1)
        return {"wall_s": tb - ta, "first_frame_s": first, "per_frame_steady_s": steady}, codes

    if args.warmup_frames > 0:
        r, _ = run(max(2, args.warmup_frames), args.seed + 1000)
        print(f"  warm-up ({max(2, args.warmup_frames)} frames): {r['wall_s']:.3f} s")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = []
    codes = None
    with common.RssSampler() as sampler:
        for i in range(args.runs):
            r, codes = run(args.frames, args.seed + i)
            r["frames_per_s"] = args.frames / r["wall_s"]
            r["rtf_x"] = (args.frames / FRAME_RATE) / r["wall_s"]
            runs.append(r)
            print(f"  run {i}: {r['wall_s']:.3f} s, {r['frames_per_s']:.3f} frames/s, first frame {r['first_frame_s']:.3f} s, "
                  f"steady {r['per_frame_steady_s']*1000:.1f} ms/frame")
            sys.stdout.flush()

    decode = None
    if not args.no_decode:
        c = codes.clamp(max=model.codec_model.config.codebook_size - 1).transpose(1, 2)  # [1, nq, T]
        with torch.no_grad():
            model.codec_model.decode(c[..., :2])  # warm-up
            dts = []
            for _ in range(args.runs):
                common.sync(args.device)
                ta = time.perf_counter()
                audio = model.codec_model.decode(c).audio_values
                common.sync(args.device)
                dts.append(time.perf_counter() - ta)
        decode = {"decode_s_median": common.stats(dts)["median"], "decode_s": dts,
                  "audio_samples": int(audio.shape[-1]),
                  "codec": "real MimiConfig() defaults" if codec == "real" else "tiny fixture Mimi"}

    med = lambda k: common.stats([r[k] for r in runs])["median"]  # noqa: E731
    res = {
        "wall_s_median": med("wall_s"),
        "frames_per_s_median": med("frames_per_s"),
        "rtf_x_median": med("rtf_x"),
        "first_frame_s_median": med("first_frame_s"),
        "per_frame_steady_s_median": med("per_frame_steady_s"),
        "steady_frames_per_s": 1.0 / med("per_frame_steady_s"),
        "rss_after_build_mb": rss_after_build,
        "peak_rss_during_runs_mb": sampler.peak / 2**20,
        "maxrss_process_mb": common.maxrss_mb(),
    }
    if args.device == "cuda":
        res["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    rows = [
        ("size / device / dtype", f"{args.size} / {args.device} / {args.dtype}"),
        ("threads (intra-op)", threads),
        ("prompt frames", args.prompt_frames),
        ("generated frames", f"{args.frames} (= {args.frames / FRAME_RATE:.2f} s audio), EOS suppressed"),
        ("sampling", "greedy" if args.greedy else f"top-k {args.top_k}, T {args.temperature} (c0 and depth decoder)"),
        ("runs", args.runs),
        ("wall s median", res["wall_s_median"]),
        ("frames/s median", res["frames_per_s_median"]),
        ("real-time factor (audio s / wall s)", res["rtf_x_median"]),
        ("first frame s (prefill+1 frame)", res["first_frame_s_median"]),
        ("steady ms/frame", res["per_frame_steady_s_median"] * 1000),
        ("steady frames/s", res["steady_frames_per_s"]),
        ("Mimi decode s (not included above)", decode["decode_s_median"] if decode else "skipped"),
        ("RSS after build MiB", res["rss_after_build_mb"]),
        ("peak RSS during runs MiB", res["peak_rss_during_runs_mb"]),
        ("process maxrss MiB", res["maxrss_process_mb"]),
    ]
    if args.device == "cuda":
        rows.append(("cuda max allocated MiB", res["cuda_max_memory_allocated_mb"]))
    common.print_table(rows, "result")
    common.write_json(args.json, {
        "tool": "peer:transformers",
        "script": "bench/peer/generate.py",
        "time_utc": common.now_utc(),
        "args": vars(args),
        "env": env,
        "model": {"params": sum(p.numel() for p in model.parameters()), "build_s": build_s,
                  "eos_forcing": "suppress_tokens=[codebook_eos_token_id] on codebook 0"},
        "results": res,
        "runs": runs,
        "decode": decode,
    })


if __name__ == "__main__":
    main()
