#!/usr/bin/env python3
"""Prints the GPU comparison of bench/run_gpu.sh from the JSON files in OUTDIR.

  python3 bench/gpu_table.py OUTDIR

Reads csm_{plain,compiled}_BxA_F[_TAG].json (csm bench-train --json-dir),
peer_{eager,compiled}_BxA_F.json (bench/peer/train_step.py --json-dir),
torch_matmul.json (bench/peer/matmul.py), and the packing runs
csm_MODE_BxmixL1-L2-..[-packed]_F.json (a table of their own). Standard
library only.

Columns: seconds per step (median); speed = the peer's best time over
csm's best (above 1: csm is faster); peak memory (csm: MLX peak; peer:
torch.cuda.max_memory_allocated, or peak RSS on the CPU; GB = 10^9 bytes);
model FLOPs of the step as csm bench-train counts them (model::flops: 4 per
frozen weight per token, 6 r (in+out) per LoRA adapter per token, causal
attention 12 H hd L(L+1)/2 per layer and sequence), the same work for both
tools when their depth-decoder frame counts agree (checked); MFU = model
FLOPs / step time / the matmul rate PyTorch measured on the same device in
the same run; the step-0 loss of each (random weights of each tool's own
initialisation, so they agree in size only: about 2 ln(2051) at init).
"""

import glob
import json
import os
import re
import sys

CASES = ["1x130", "8x130", "4x500", "16x250"]
FRACTIONS = ["0.0625", "1"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt_s(x):
    return "-" if x is None else f"{x:.3f}"


def fmt_gb(x):
    if x is None:
        return "-"
    return f"{x / 1e9:.1f}" if x >= 1e9 else f"{x / 1e9:.3f}"


def fmt_rate(tflops):
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"


def fmt_flop(x):
    return "-" if x is None else (f"{x / 1e12:.2f} T" if x >= 1e12 else f"{x / 1e9:.2f} G")


def peer_time(j):
    return None if j is None else j["results"]["step_s_median"]


def peer_mem(j):
    if j is None:
        return None
    r = j["results"]
    if "cuda_max_memory_allocated_mb" in r:
        return r["cuda_max_memory_allocated_mb"] * 2**20
    return r["peak_rss_during_steps_mb"] * 2**20


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    torch_mm = load(os.path.join(out, "torch_matmul.json"))
    rate = torch_mm["tflops"] if torch_mm else None
    ours = {}
    ablations = []
    for path in sorted(glob.glob(os.path.join(out, "csm_*.json"))):
        m = re.match(r"csm_(plain|compiled)_(\d+x\d+)_([0-9.]+)(?:_(.+))?\.json$", os.path.basename(path))
        if not m:
            continue
        j = load(path)
        if j is None:
            continue
        mode, case, frac, tag = m.groups()
        if tag:
            ablations.append((case, frac, mode, tag, j))
        else:
            ours[(case, frac, mode)] = j
    peer = {}
    for path in glob.glob(os.path.join(out, "peer_*.json")):
        m = re.match(r"peer_(eager|compiled)_(\d+x\d+)_([0-9.]+)\.json$", os.path.basename(path))
        if m and (j := load(path)) is not None:
            peer[(m.group(2), m.group(3), m.group(1))] = j

    any_ours = next(iter(ours.values()), None)
    device = any_ours["device"] if any_ours else "?"
    card = (torch_mm or {}).get("env", {}).get("cuda_device") or (torch_mm or {}).get("env", {}).get("cpu_model")
    print(f"# csm vs transformers + peft: training step, {device}" + (f" ({card})" if card else ""))
    print()
    if torch_mm:
        print(f"PyTorch {torch_mm['n']}^3 {torch_mm['dtype']} matmul: {fmt_rate(rate)} "
              f"(torch {torch_mm['env'].get('torch')})")
    # The probe runs in one of csm's processes (the compiled one).
    probe = next((j["mlx_matmul_probe"] for j in ours.values() if j.get("mlx_matmul_probe")), None)
    if probe:
        print(f"MLX {probe['n']}^3 {probe['dtype']} matmul (csm bench-train --matmul-probe): "
              f"{fmt_rate(probe['gflops'] / 1e3)}")
    penv = next(iter(peer.values()), {}).get("env", {})
    if penv:
        print(f"peer: torch {penv.get('torch')}, transformers {penv.get('transformers')}, peft {penv.get('peft')}")
    print()
    print("| B x A, decoder fraction | decoder frames csm / peer | csm | csm compiled | peer eager "
          "| peer compiled | speed vs peer compiled (vs best peer) | peak GB csm / peer | model FLOP "
          "| MFU csm / peer | step-0 loss csm / peer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    checks = []
    for frac in FRACTIONS:
        for case in CASES:
            cp = ours.get((case, frac, "plain"))
            cc = ours.get((case, frac, "compiled"))
            pe = peer.get((case, frac, "eager"))
            pc = peer.get((case, frac, "compiled"))
            if not any([cp, cc, pe, pc]):
                continue
            label = f"{case.replace('x', ' x ')}, {'1/16' if frac == '0.0625' else frac}"
            mine = [j for j in (cp, cc) if j]
            best = min(mine, key=lambda j: j["median_s_per_step"]) if mine else None
            t_best = best["median_s_per_step"] if best else None
            p_times = [t for t in (peer_time(pe), peer_time(pc)) if t is not None]
            p_best = min(p_times) if p_times else None
            p_best_json = pc if pc and peer_time(pc) == p_best else pe
            dec_ours = best["decoder_frames"] if best else None
            pj = pc or pe
            dec_peer = pj["sequence"]["depth_decoder_frames"] if pj else None
            speed = "-"
            if t_best and peer_time(pc):
                speed = f"{peer_time(pc) / t_best:.2f}x"
            if t_best and p_best:
                speed += f" ({p_best / t_best:.2f}x)"
            mem_ours = best["peak_mlx_bytes"] if best else None
            mem_peer = peer_mem(p_best_json)
            flops = best["model_flops"]["total"] if best else None
            mfu_ours = flops / t_best / (rate * 1e12) if (flops and rate) else None
            mfu_peer = flops / p_best / (rate * 1e12) if (flops and rate and p_best and dec_ours == dec_peer) else None
            loss_ours = best["first_loss"] if best else None
            loss_peer = pj["results"]["loss_first"][0] if pj else None
            mfu = "-" if mfu_ours is None else f"{100 * mfu_ours:.0f}%"
            mfu += " / " + ("-" if mfu_peer is None else f"{100 * mfu_peer:.0f}%")
            print(f"| {label} | {dec_ours} / {dec_peer} | {fmt_s(cp and cp['median_s_per_step'])} "
                  f"| {fmt_s(cc and cc['median_s_per_step'])} | {fmt_s(peer_time(pe))} | {fmt_s(peer_time(pc))} "
                  f"| {speed} | {fmt_gb(mem_ours)} / {fmt_gb(mem_peer)} "
                  f"| {fmt_flop(flops)} | {mfu} "
                  f"| {'-' if loss_ours is None else f'{loss_ours:.3f}'} / "
                  f"{'-' if loss_peer is None else f'{loss_peer:.3f}'} |")
            if best and pc:
                checks.append((label, t_best < peer_time(pc), mem_ours <= mem_peer if mem_peer else None))
            if dec_ours is not None and dec_peer is not None and dec_ours != dec_peer:
                print(f"|   (different work: csm {dec_ours} decoder frames, peer {dec_peer}) |||||||||||")
    print()
    # Our step-0 losses: every variant of a case starts from the same
    # weights and adapters, so they must agree (bf16 rounding aside).
    spread = {}
    for (case, frac, _), j in ours.items():
        spread.setdefault((case, frac), []).append(j["first_loss"])
    for case, frac, _, _, j in ablations:
        spread.setdefault((case, frac), []).append(j["first_loss"])
    worst = max((max(v) - min(v) for v in spread.values() if len(v) > 1), default=None)
    if worst is not None:
        print(f"csm step-0 loss, largest spread across modes and levers of one case: {worst:.2e}")
    if checks:
        faster = sum(1 for c in checks if c[1])
        leaner = sum(1 for c in checks if c[2])
        print(f"faster than the peer under torch.compile: {faster} of {len(checks)} cases; "
              f"no more peak memory than the peer's best run: {leaner} of {len(checks)}")
    key = ours.get(("16x250", "0.0625", "compiled")) or ours.get(("16x250", "0.0625", "plain"))
    if key and rate:
        best = min((j for j in (ours.get(("16x250", "0.0625", m)) for m in ("plain", "compiled")) if j),
                   key=lambda j: j["median_s_per_step"])
        mfu = best["model_flops"]["total"] / best["median_s_per_step"] / (rate * 1e12)
        print(f"16 x 250, 1/16: {100 * mfu:.1f}% of the measured matmul rate (target: at least 40%)")
    first = [(k, j["first_step_s"]) for k, j in ours.items() if k[2] == "compiled"]
    if first:
        worst = max(first, key=lambda x: x[1])
        print(f"csm compiled, first step (trace + kernel compilation): up to {worst[1]:.1f} s "
              f"({worst[0][0]}, {worst[0][1]})")
    pfirst = [(k, j["results"].get("first_step_s")) for k, j in peer.items() if k[2] == "compiled"]
    pfirst = [x for x in pfirst if x[1] is not None]
    if pfirst:
        worst = max(pfirst, key=lambda x: x[1])
        print(f"peer torch.compile, first step (compilation): up to {worst[1]:.1f} s ({worst[0][0]}, {worst[0][1]})")
    missing = [f"{c} {f}" for f in FRACTIONS for c in CASES
               if (c, f, "compiled") not in peer and any(k[:2] == (c, f) for k in ours)]
    if missing:
        print(f"peer torch.compile not measured (time budget): {', '.join(missing)}")

    if ablations:
        print()
        print("## Levers, one at a time (same process kind, same case; against the default run of that mode)")
        print()
        print("| case | mode | variant | s/step | default s/step | change | host s/step (default) | peak GB | default peak GB | step-0 loss |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for case, frac, mode, tag, j in sorted(ablations, key=lambda a: (a[1], a[0], a[2], a[3])):
            base = ours.get((case, frac, mode))
            t, tb = j["median_s_per_step"], base and base["median_s_per_step"]
            change = "-" if not tb else f"{(t / tb - 1) * 100:+.0f}%"
            # Host seconds before the device starts (older JSON has none).
            host = j.get("host_s_per_step")
            host_b = base and base.get("host_s_per_step")
            host_txt = "-" if host is None else f"{host:.4f} ({'-' if host_b is None else f'{host_b:.4f}'})"
            print(f"| {case}, {'1/16' if frac == '0.0625' else frac} | {mode} | {tag} | {t:.3f} | {fmt_s(tb)} "
                  f"| {change} | {host_txt} | {fmt_gb(j['peak_mlx_bytes'])} | {fmt_gb(base and base['peak_mlx_bytes'])} "
                  f"| {j['first_loss']:.4f} |")

    host_table(ours)
    packing_table(out)


def host_table(ours):
    """The host's share of our steps: building the graph (the device idles
    unless the step before still runs) and handing it to the device
    (encoding and launching its kernels). A launch near the step's time
    means the host sets the pace."""
    rows = [(k, j) for k, j in sorted(ours.items()) if j.get("launch_s_per_step") is not None]
    if not rows:
        return
    print()
    print("## Host time per step (pipelined runs)")
    print()
    print("| case | mode | s/step | building the graph | launching it | launch / step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (case, frac, mode), j in rows:
        t, launch = j["median_s_per_step"], j["launch_s_per_step"]
        print(f"| {case}, {'1/16' if frac == '0.0625' else frac} | {mode} | {t:.3f} "
              f"| {j['host_s_per_step']:.4f} | {launch:.4f} | {launch / t:.0%} |")


def packing_table(out):
    """Mixed-length rows padded and packed (csm bench-train --lengths
    --layouts padded,packed), one line per run, the packed speed-up against
    the padded run of the same case and mode."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "csm_*.json"))):
        m = re.match(r"csm_(plain|compiled)_(\d+xmix[0-9-]+?)(-packed)?_([0-9.]+)(?:_(.+))?\.json$",
                     os.path.basename(path))
        if not m or (j := load(path)) is None:
            continue
        mode, case, packed, frac, tag = m.groups()
        runs[(case, frac, mode, tag or "", "packed" if packed else "padded")] = j
    if not runs:
        return
    print()
    print("## Packing: mixed lengths, padded vs packed (same utterances, same loss)")
    print()
    print("| case | mode | layout | rows | padded frames | s/step | frames/s | speed vs padded "
          "| peak GB | step-0 loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(runs):
        case, frac, mode, tag, layout = key
        j = runs[key]
        base = runs.get((case, frac, mode, tag, "padded"))
        speed = "-"
        if base and layout == "packed":
            speed = f"{base['median_s_per_step'] / j['median_s_per_step']:.2f}x"
        label = f"{case}, {'1/16' if frac == '0.0625' else frac}" + (f" ({tag})" if tag else "")
        print(f"| {label} | {mode} | {layout} | {j.get('layout_rows', '-')} "
              f"| {100 * j.get('padded_share', 0):.1f}% | {j['median_s_per_step']:.3f} "
              f"| {j['frames_per_s']:.0f} | {speed} | {fmt_gb(j['peak_mlx_bytes'])} "
              f"| {j['first_loss']:.4f} |")


if __name__ == "__main__":
    main()
