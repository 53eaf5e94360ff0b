"""Prints the csm vs peer table from the JSON files of bench/run_cpu.sh."""
import json
import sys
from pathlib import Path


def load(d, name):
    p = Path(d) / name
    return json.loads(p.read_text()) if p.exists() else None


def ours(d, name):
    j = load(d, name)
    return None if j is None else (j["median_s_per_step"], j["max_rss_bytes"] / 1e9)


def peer(d, name):
    j = load(d, name)
    if j is None:
        return None
    r = j["results"]
    # The peer records MiB; ours are bytes: both in GB (10^9 bytes).
    return (r["step_s_median"], r["maxrss_process_mb"] * 2**20 / 1e9)


def main():
    d = sys.argv[1]
    rows = [
        ("same work, decoder 1/16", "ours_116_haswell.json", "ours_116_native.json", "peer_116.json"),
        ("same work, all frames", "ours_1_haswell.json", "ours_1_native.json", "peer_1.json"),
        ("each tool's defaults", "ours_116_haswell.json", "ours_116_native.json", "peer_defaults.json"),
    ]
    print(f"{'case':26} {'peer s/step':>11} {'peer GB':>8} | {'csm s/step':>10} {'GB':>6} {'speed-up':>8} | {'csm AVX512':>10} {'speed-up':>8}")
    for label, h, n, p in rows:
        pr, oh, on = peer(d, p), ours(d, h), ours(d, n)
        if not (pr and oh):
            print(f"{label:26} (missing results)")
            continue
        line = f"{label:26} {pr[0]:11.2f} {pr[1]:8.2f} | {oh[0]:10.2f} {oh[1]:6.2f} {pr[0] / oh[0]:7.2f}x"
        if on:
            line += f" | {on[0]:10.2f} {pr[0] / on[0]:7.2f}x"
        print(line)
    for setting in ("haswell", "native"):
        plain, comp = ours(d, f"ours_116_{setting}.json"), ours(d, f"ours_116_{setting}_compiled.json")
        if plain and comp:
            print(
                f"compiled step, 1/16, {setting}: {comp[0]:.2f} s/step vs {plain[0]:.2f} "
                f"uncompiled ({plain[0] / comp[0]:.2f}x), {comp[1]:.2f} vs {plain[1]:.2f} GB"
            )
    for dtype, suffix in (("f32", ""), ("bf16", "_bf16")):
        g_o, g_p = load(d, f"ours_gen{suffix}.json"), load(d, f"peer_gen{suffix}.json")
        if not (g_o and g_p):
            continue
        p = g_p["results"]
        print(
            f"generation {dtype} (25 frames): peer {p['per_frame_steady_s_median'] * 1000:.0f} ms/frame "
            f"({p['frames_per_s_median']:.2f} frames/s) | csm {g_o['ms_per_frame']:.0f} ms/frame "
            f"({g_o['frames_per_s']:.2f} frames/s, real-time factor {g_o['rtf_generate']:.2f}) "
            f"-> {p['per_frame_steady_s_median'] * 1000 / g_o['ms_per_frame']:.2f}x"
        )


main()
