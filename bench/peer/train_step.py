#!/usr/bin/env python3
"""Peer benchmark: one LoRA training step of transformers' CsmForConditionalGeneration.

CSM-1B-shaped model with random weights, PEFT LoRA (default r=8, alpha=16 on
q_proj,v_proj of the backbone and the depth decoder), batch 1, one sequence of
text frames + audio frames + 1 EOS frame. Each step is
zero_grad -> forward(labels) -> loss.backward() -> AdamW.step().

Modes
  same-work  Codes are given directly: the codec's encode() is replaced by a
             stub that returns fixed random codes, so HF's own
             _merge_input_ids_with_input_values (embedding + label expansion,
             -101 handling) runs but no Mimi encoder does. The codec in the
             model is the tiny fixture Mimi (it is never run). The depth
             decoder trains on a fraction of the audio frames
             (--decoder-fraction, HF's depth_decoder_labels_ratio rule:
             int(n_audio * (1 - r)) random audio frames get label -101;
             EOS frames always train) or exactly --decoder-frames K frames.
  defaults   "As the transformers docs run it": the waveform goes in as
             input_values, so the REAL-size Mimi encoder (MimiConfig()
             defaults = kyutai/mimi dims, random weights) encodes it inside
             every step (under no_grad, as HF does), and every audio frame
             trains the depth decoder (ratio 1.0).

Batches and cases
  --batch B  runs B identical rows (same text, codes and -101 frames).
  --cases "BxA:F,..." runs several cases in one process (one model build):
             B rows of A audio frames, decoder fraction F (HF's -101 rule);
             one JSON per case into --json-dir. --deadline-epoch T skips the
             cases that would start after Unix time T (and any whose start
             plus the previous case's duration passes it).
  --compile  wraps the model in torch.compile (--compile-mode, default
             "default"); each case compiles afresh (torch._dynamo.reset(),
             static shapes), and the first warm-up step's time, which holds
             the compilation, is reported as first_step_s.

Prints an environment block and a result table; --json OUT writes everything.
Example:
  python bench/peer/train_step.py --mode same-work --decoder-fraction 0.0625 --threads 8 --json out.json
  python bench/peer/train_step.py --mode same-work --cases 8x130:0.0625,16x250:1.0 --device cuda \
      --dtype bfloat16 --compile --json-dir OUT
"""

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["same-work", "defaults"], required=True)
    ap.add_argument("--size", choices=["1b", "tiny"], default="1b",
                    help="1b = CSM-1B dims (default); tiny = tests/fixtures/csm_tiny_hf config, for plumbing checks")
    ap.add_argument("--decoder-fraction", type=float, default=None,
                    help="same-work: depth_decoder_labels_ratio (e.g. 0.0625 or 1.0). defaults mode: must be 1.0 or unset")
    ap.add_argument("--decoder-frames", type=int, default=None,
                    help="same-work: exactly this many AUDIO frames train the depth decoder (overrides --decoder-fraction); "
                         "the EOS frame always trains in addition")
    ap.add_argument("--text-frames", type=int, default=20, help="text frames incl. BOS and text EOS (default 20)")
    ap.add_argument("--audio-frames", type=int, default=130, help="audio frames (default 130); 1 EOS frame is appended")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--targets", default="q_proj,v_proj", help="comma list of attention projections (q_proj,k_proj,v_proj,o_proj)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5); the median is reported")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = os.cpu_count())")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attn_implementation (transformers default: sdpa)")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True) (off by default, as torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--batch", type=int, default=1, help="identical rows per step (default 1)")
    ap.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode (default, reduce-overhead, max-autotune, ...)")
    ap.add_argument("--cases", default=None,
                    help="same-work: comma list of BxA:F cases run in one process (B rows, A audio frames, "
                         "decoder fraction F); overrides --batch/--audio-frames/--decoder-fraction")
    ap.add_argument("--json-dir", default=None, help="with --cases: one JSON per case in this folder")
    ap.add_argument("--deadline-epoch", type=float, default=None,
                    help="with --cases: skip cases that would start (or, by the previous case's duration, "
                         "end) after this Unix time")
    ap.add_argument("--tag", default="", help="label stored in the JSON (e.g. eager / compiled)")
    ap.add_argument("--profile-dir", default=None,
                    help="after the timed steps, 2 more steps under torch.profiler; their kernel trace "
                         "(Chrome JSON, gzipped) goes here, one file per case")
    a = ap.parse_args()
    if a.cases is not None:
        if a.mode != "same-work":
            ap.error("--cases is for --mode same-work")
        try:
            a.case_list = [parse_case(c) for c in a.cases.split(",") if c.strip()]
        except ValueError as e:
            ap.error(f"--cases: {e}")
        a.decoder_fraction = a.case_list[0][2]
        a.decoder_frames = None
    if a.batch < 1:
        ap.error("--batch must be at least 1")
    if a.mode == "defaults":
        if a.decoder_frames is not None or (a.decoder_fraction is not None and a.decoder_fraction != 1.0):
            ap.error("--mode defaults always trains the depth decoder on all frames (ratio 1.0)")
        a.decoder_fraction = 1.0
    elif a.decoder_fraction is None and a.decoder_frames is None:
        ap.error("--mode same-work needs --decoder-fraction R or --decoder-frames K")
    if a.decoder_fraction is not None and not (0.0 <= a.decoder_fraction <= 1.0):
        ap.error("--decoder-fraction must be in [0, 1]")
    if a.decoder_frames is not None and not (0 <= a.decoder_frames <= a.audio_frames):
        ap.error("--decoder-frames must be in [0, --audio-frames]")
    if a.text_frames < 2 or a.audio_frames < 1 or a.steps < 1:
        ap.error("need --text-frames >= 2, --audio-frames >= 1, --steps >= 1")
    return a


def parse_case(text):
    """'8x130:0.0625' -> (8, 130, 0.0625)."""
    try:
        shape, frac = text.strip().split(":")
        b, a = shape.lower().split("x")
        case = (int(b), int(a), float(frac))
    except ValueError:
        raise ValueError(f"{text!r} is not BxA:F (e.g. 8x130:0.0625)") from None
    if case[0] < 1 or case[1] < 1 or not (0.0 <= case[2] <= 1.0):
        raise ValueError(f"{text!r}: need B >= 1, A >= 1 and F in [0, 1]")
    return case


class StubEncode:
    """Stands in for codec_model.encode: returns the fixed codes [1, nq, T]."""

    def __init__(self, codes_1_nq_t):
        self.codes = codes_1_nq_t

    def __call__(self, audio, *args, **kwargs):
        class R:
            pass

        r = R()
        r.audio_codes = self.codes
        return r


class TimedEncode:
    """Wraps codec_model.encode to time it (synchronised on CUDA)."""

    def __init__(self, fn, device):
        self.fn, self.device, self.times = fn, device, []

    def __call__(self, *a, **k):
        common.sync(self.device)
        t = time.perf_counter()
        r = self.fn(*a, **k)
        common.sync(self.device)
        self.times.append(time.perf_counter() - t)
        return r


def build_sequence(cfg, args, gen, torch):
    """2-D input_ids and labels in the layout CsmProcessor(output_labels=True) produces."""
    tiny = args.size == "tiny"
    bos = cfg.bos_token_id
    text_eos = 2 if tiny else 128001
    lo, hi = (5, cfg.text_vocab_size) if tiny else (0, 128000)
    words = torch.randint(lo, hi, (args.text_frames - 2,), generator=gen)
    text = torch.cat([torch.tensor([bos]), words, torch.tensor([text_eos])])
    audio = torch.full((args.audio_frames,), cfg.audio_token_id)
    eos = torch.tensor([cfg.audio_eos_token_id])
    ids = torch.cat([text, audio, eos])[None].long()  # [1, S]
    labels = torch.where((ids == cfg.audio_token_id) | (ids == cfg.audio_eos_token_id), ids, torch.full_like(ids, -100))
    audio_pos = (ids[0] == cfg.audio_token_id).nonzero().flatten()
    n_audio = audio_pos.numel()
    if args.decoder_frames is not None:
        n_skip = n_audio - args.decoder_frames
    else:
        n_skip = int(n_audio * (1 - args.decoder_fraction))  # HF CsmProcessor rule
    skip = audio_pos[torch.randperm(n_audio, generator=gen)[:n_skip]]
    labels[0, skip] = -101
    n_eos = int((ids == cfg.audio_eos_token_id).sum())
    return ids, labels, n_audio - n_skip + n_eos, n_skip


def main():
    args = parse_args()
    import torch

    threads = common.setup_threads(args.threads)
    if args.flush_denormal:
        assert torch.set_flush_denormal(True), "this CPU does not support flushing denormals"
    if args.device == "cuda":
        assert torch.cuda.is_available(), "--device cuda but CUDA is not available"
    env = common.env_info(args.device)
    common.print_env(env)

    from peft import LoraConfig, get_peft_model

    dtype = common.parse_dtype(args.dtype)
    codec = "real" if args.mode == "defaults" else "tiny"
    cfg = common.csm_config(args.size, codec=codec)
    t0 = time.perf_counter()
    model = common.build_model(cfg, args.device, dtype, attn=args.attn, seed=args.seed)
    build_s = time.perf_counter() - t0
    hop = common.codec_hop(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_codec = sum(p.numel() for p in model.codec_model.parameters())

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    lcfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules=common.lora_target_regex(targets))
    model = get_peft_model(model, lcfg)
    model.train()
    inner = model.base_model.model
    inner.codec_model.eval()
    n_lora_modules = sum(1 for n, m in inner.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    assert not any(n.startswith("codec_model") and hasattr(m, "lora_A") for n, m in inner.named_modules())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    # Every case starts from the same adapters (B = 0: the base model's loss).
    initial = [p.detach().clone() for p in trainable]
    real_encode = inner.codec_model.encode
    model_info = {
        "params": n_params,
        "codec_params": n_codec,
        "codec": "real MimiConfig() defaults" if codec == "real" else "tiny fixture Mimi (not run)",
        "codec_hop_samples": hop,
        "lora_modules": n_lora_modules,
        "trainable_params": n_trainable,
        "lora_target_regex": common.lora_target_regex(targets),
        "build_s": build_s,
    }
    print(f"== model built in {build_s:.1f} s: {n_params/1e6:.1f} M params ({n_codec/1e6:.1f} M codec), "
          f"LoRA on {n_lora_modules} modules, {n_trainable} trainable")
    sys.stdout.flush()

    if args.cases is None:
        fraction = args.decoder_fraction
        cases = [(args.batch, args.audio_frames, fraction)]
    else:
        cases = args.case_list
    last_case_s = 0.0
    for batch, audio_frames, fraction in cases:
        # One case from flags may give --decoder-frames K instead of a fraction.
        share = f"{fraction:g}" if fraction is not None else f"{args.decoder_frames}f"
        name = f"{batch}x{audio_frames}:{share}"
        now = time.time()
        if args.deadline_epoch is not None and now + last_case_s > args.deadline_epoch:
            print(f"== case {name}: skipped (time budget: {args.deadline_epoch - now:.0f} s left, "
                  f"the previous case took {last_case_s:.0f} s)")
            sys.stdout.flush()
            continue
        case_args = argparse.Namespace(**vars(args))
        case_args.batch, case_args.audio_frames = batch, audio_frames
        if args.cases is not None:
            case_args.decoder_fraction, case_args.decoder_frames = fraction, None
        with torch.no_grad():
            for p, v in zip(trainable, initial):
                p.copy_(v)
        opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
        inner.codec_model.encode = real_encode
        start = time.time()
        out = run_case(case_args, model, inner, opt, cfg, hop, torch, dtype)
        last_case_s = time.time() - start
        out.update({
            "tool": "peer:transformers+peft",
            "script": "bench/peer/train_step.py",
            "time_utc": common.now_utc(),
            "args": vars(case_args) | {"case_list": None},
            "env": env,
            "model": model_info,
            "threads": threads,
            "tag": args.tag,
        })
        if args.json_dir is not None:
            mode = "compiled" if args.compile else "eager"
            frac = "1" if fraction == 1.0 else share
            common.write_json(Path(args.json_dir) / f"peer_{mode}_{batch}x{audio_frames}_{frac}.json", out)
        else:
            common.write_json(args.json, out)


def profile_steps(args, step, B, torch):
    """Two more steps under torch.profiler; writes their trace (kernels with
    start and duration) for a kernel-by-kernel comparison with csm's."""
    import gzip
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step()
    mode = "compiled" if args.compile else "eager"
    frac = args.decoder_fraction if args.decoder_fraction is not None else "k"
    out = Path(args.profile_dir) / f"peer_{mode}_{B}x{args.audio_frames}_{frac}.trace.json.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=out.parent)
    os.close(fd)
    prof.export_chrome_trace(tmp)
    with open(tmp, "rb") as src, gzip.open(out, "wb") as dst:
        dst.write(src.read())
    os.remove(tmp)
    print(f"  profile of 2 steps: {out}")


def run_case(args, model, inner, opt, cfg, hop, torch, dtype):
    """Warm-up and timed steps of one case; returns its JSON fields."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    ids, labels, n_dec, n_skip = build_sequence(cfg, args, gen, torch)
    S = ids.shape[1]
    nq = cfg.num_codebooks
    B = args.batch
    n_samples = args.audio_frames * hop
    if args.mode == "same-work":
        codes = torch.randint(0, cfg.vocab_size - 3, (1, nq, args.audio_frames), generator=gen)
        inner.codec_model.encode = StubEncode(codes.to(args.device))
        input_values = torch.zeros(1, 1, n_samples)
    else:
        t = torch.arange(n_samples) / cfg.codec_config.sampling_rate
        input_values = (0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(n_samples, generator=gen))[None, None]
    # Under torch.compile the timing wrapper's growing list would fail
    # dynamo's guards and recompile every step: the codec is not timed there
    # (same-work does not run it).
    timed_encode = TimedEncode(inner.codec_model.encode, args.device)
    if not args.compile:
        inner.codec_model.encode = timed_encode
    # B identical rows: the same text, codes and -101 frames in each.
    ids, labels = ids.repeat(B, 1), labels.repeat(B, 1)
    input_values = input_values.repeat(B, 1, 1).to(args.device, dtype)
    cutoffs = torch.tensor([[n_samples]] * B)
    ids, labels, cutoffs = ids.to(args.device), labels.to(args.device), cutoffs.to(args.device)

    # check once that HF's merge gives the frames we intended
    with torch.no_grad():
        merged = inner._merge_input_ids_with_input_values(ids, input_values, cutoffs, labels)
    lab3 = merged["labels"]
    assert tuple(lab3.shape) == (B, S, nq), lab3.shape
    dec_frames_hf = int((~(lab3[:, :, 1:] == -100).all(-1)).sum())
    assert dec_frames_hf == n_dec * B, (dec_frames_hf, n_dec, B)
    bb_targets = int((lab3[:, 1:, 0] != -100).sum())
    timed_encode.times.clear()

    run = model
    if args.compile:
        torch._dynamo.reset()
        run = torch.compile(model, mode=args.compile_mode, dynamic=False)

    def step():
        common.sync(args.device)
        t_a = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = run(input_ids=ids, input_values=input_values, input_values_cutoffs=cutoffs, labels=labels)
        loss = out.loss
        common.sync(args.device)
        t_b = time.perf_counter()
        loss.backward()
        common.sync(args.device)
        t_c = time.perf_counter()
        opt.step()
        common.sync(args.device)
        t_d = time.perf_counter()
        vals = (loss.item(), out.backbone_loss.item(), out.depth_decoder_loss.item())
        return t_d - t_a, t_b - t_a, t_c - t_b, t_d - t_c, vals

    print(f"== case {B}x{args.audio_frames}: {B} x {S} frames ({args.text_frames} text + {args.audio_frames} audio "
          f"+ 1 EOS), {n_dec} depth-decoder frames a row, {'torch.compile' if args.compile else 'eager'}")
    sys.stdout.flush()

    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss_before = common.rss_mb()
    losses = []
    warm_times = []
    for i in range(args.warmup):
        r = step()
        losses.append(r[4])
        warm_times.append(r[0])
        print(f"  warm-up {i}: {r[0]:.3f} s  loss {r[4][0]:.4f}")
        sys.stdout.flush()
    n_enc_warm = len(timed_encode.times)
    times = []
    with common.RssSampler() as sampler:
        for i in range(args.steps):
            r = step()
            times.append(r[:4])
            losses.append(r[4])
            print(f"  step {i}: {r[0]:.3f} s (fwd {r[1]:.3f}, bwd {r[2]:.3f}, opt {r[3]:.3f})  loss {r[4][0]:.4f}")
            sys.stdout.flush()
    if args.profile_dir:
        # The timings above stand whatever happens to the profile: a failure
        # is printed with its traceback and the case's JSON is still written.
        try:
            profile_steps(args, step, B, torch)
        except Exception:  # noqa: BLE001
            import traceback

            print("  profile failed:", file=sys.stderr)
            traceback.print_exc()
    enc_times = timed_encode.times[n_enc_warm:]
    assert all(math.isfinite(x) for l in losses for x in l), losses

    st = common.stats([t[0] for t in times])
    med = st["median"]
    res = {
        "step_s_median": med,
        "step_s_mean": st["mean"],
        "step_s_min": st["min"],
        "step_s_max": st["max"],
        "first_step_s": warm_times[0] if warm_times else None,
        "forward_s_median": common.stats([t[1] for t in times])["median"],
        "backward_s_median": common.stats([t[2] for t in times])["median"],
        "optimizer_s_median": common.stats([t[3] for t in times])["median"],
        "codec_encode_s_median": common.stats(enc_times)["median"] if enc_times else 0.0,
        "frames_per_s": B * S / med,
        "audio_frames_per_s": B * args.audio_frames / med,
        "rss_after_build_mb": rss_before,
        "peak_rss_during_steps_mb": sampler.peak / 2**20,
        "maxrss_process_mb": common.maxrss_mb(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    if args.device == "cuda":
        res["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["cuda_max_memory_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20

    rows = [
        ("mode", args.mode + (f", torch.compile ({args.compile_mode})" if args.compile else ", eager")),
        ("size / device / dtype", f"{args.size} / {args.device} / {args.dtype}"),
        ("rows x frames (text+audio+EOS)", f"{B} x {S} ({args.text_frames}+{args.audio_frames}+1)"),
        ("backbone c0 targets", bb_targets),
        ("depth-decoder frames", f"{n_dec * B} ({n_dec} a row; {n_skip} audio frames a row labelled -101)"),
        ("codec", "real Mimi, encodes every step" if args.mode == "defaults" else "stubbed (codes given)"),
        ("steps timed (warm-up)", f"{args.steps} ({args.warmup})"),
        ("step s median [min, max]", f"{med:.4f} [{st['min']:.4f}, {st['max']:.4f}]"),
        ("  first warm-up step s", res["first_step_s"]),
        ("  forward s", res["forward_s_median"]),
        ("    of which codec encode s", res["codec_encode_s_median"]),
        ("  backward s", res["backward_s_median"]),
        ("  optimizer s", res["optimizer_s_median"]),
        ("frames/s", res["frames_per_s"]),
        ("peak RSS during steps MiB", res["peak_rss_during_steps_mb"]),
        ("loss first -> last", f"{losses[0][0]:.4f} -> {losses[-1][0]:.4f}"),
    ]
    if args.device == "cuda":
        rows.append(("cuda max allocated MiB", res["cuda_max_memory_allocated_mb"]))
        rows.append(("cuda max reserved MiB", res["cuda_max_memory_reserved_mb"]))
    common.print_table(rows, "result")
    return {
        "sequence": {
            "rows": B,
            "frames": S,
            "text_frames": args.text_frames,
            "audio_frames": args.audio_frames,
            "eos_frames": 1,
            "backbone_targets": bb_targets,
            "depth_decoder_frames": n_dec * B,
            "depth_decoder_frames_per_row": n_dec,
            "audio_frames_labelled_minus101": n_skip,
        },
        "compiled": bool(args.compile),
        "compile_mode": args.compile_mode if args.compile else None,
        "results": res,
        "step_times_s": [t[0] for t in times],
        "warmup_times_s": warm_times,
        "phase_times_s": [list(t[1:]) for t in times],
        "codec_encode_times_s": enc_times,
    }


if __name__ == "__main__":
    main()
