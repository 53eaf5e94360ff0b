"""Table of a bench/whisper/run.sh folder: RTF of csm and transformers per
model shape, and how many times faster csm is (peer RTF / csm RTF). With
several runs per side (`csm_SIZE_rN.json`), each side's fastest run is
compared and the slowest is shown beside it.

    python bench/whisper/compare.py OUTDIR
"""

import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def runs(folder):
    """{size: {"csm": [results], "peer": [results]}}"""
    out = defaultdict(lambda: {"csm": [], "peer": []})
    for f in sorted(folder.glob("*.json")):
        m = re.fullmatch(r"(csm|peer)_(.+?)(_t\d+)?(_r\d+)?", f.stem)
        if m:
            out[m.group(2)][m.group(1)].append(json.loads(f.read_text()))
    return out


def main(folder):
    folder = Path(folder)
    print(f"{'shape':<16} {'audio s':>8} {'windows':>8} {'tokens':>7} {'runs':>5} "
          f"{'csm s':>14} {'csm RTF':>8} {'peer s':>14} {'peer RTF':>9} {'csm faster':>11}")
    for size, sides in runs(folder).items():
        ours, peers = sides["csm"], sides["peer"]
        if not ours:
            continue
        work = {(r["windows"], r["tokens"]) for r in ours + peers}
        assert len(work) == 1, f"{size}: runs of unequal work {work}"
        best = min(ours, key=lambda r: r["total_s"])
        worst = max(r["total_s"] for r in ours)
        line = (f"{size:<16} {best['audio_s']:>8.1f} {best['windows']:>8} {best['tokens']:>7} "
                f"{len(ours):>5} {best['total_s']:>6.2f} ({worst:>5.1f}) {best['rtf']:>8.4f}")
        if peers:
            pbest = min(peers, key=lambda r: r["total_s"])
            pworst = max(r["total_s"] for r in peers)
            line += (f" {pbest['total_s']:>6.2f} ({pworst:>5.1f}) {pbest['rtf']:>9.4f} "
                     f"{pbest['rtf'] / best['rtf']:>10.2f}x")
        print(line)
        detail = (f"  csm (fastest run): mel {best['mel_s']:.2f} s, encoder {best['encoder_s']:.2f} s, "
                  f"decoder {best['decoder_s']:.2f} s ({best['decoder_tokens_per_s']:.1f} tokens/s)")
        if peers:
            detail += (f"; transformers ({pbest['env']['torch_threads']} threads): "
                       f"features {pbest['features_s']:.2f} s, generate {pbest['generate_s']:.2f} s")
        print(detail)
    print("RTF = compute time / audio time; csm faster = transformers RTF / csm RTF;")
    print("s = the fastest run's seconds (the slowest in brackets)")


if __name__ == "__main__":
    main(sys.argv[1])
