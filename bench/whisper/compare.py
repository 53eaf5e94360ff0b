"""Table of a bench/whisper/run.sh folder: RTF of csm and transformers per
model shape, and how many times faster csm is (peer RTF / csm RTF).

    python bench/whisper/compare.py OUTDIR
"""

import json
import sys
from pathlib import Path


def main(folder):
    folder = Path(folder)
    rows = []
    for ours_file in sorted(folder.glob("csm_*.json")):
        size = ours_file.stem[len("csm_"):]
        peer_file = folder / f"peer_{size}.json"
        ours = json.loads(ours_file.read_text())
        peer = json.loads(peer_file.read_text()) if peer_file.exists() else None
        assert peer is None or (
            ours["windows"], ours["tokens"]) == (peer["windows"], peer["tokens"]
        ), f"{size}: unequal work {ours['windows'], ours['tokens']} vs {peer['windows'], peer['tokens']}"
        rows.append((size, ours, peer))
    print(f"{'shape':<16} {'audio s':>8} {'windows':>8} {'tokens':>7} "
          f"{'csm s':>8} {'csm RTF':>8} {'peer s':>8} {'peer RTF':>9} {'csm faster':>11}")
    for size, ours, peer in rows:
        p_s = f"{peer['total_s']:.2f}" if peer else "-"
        p_rtf = f"{peer['rtf']:.4f}" if peer else "-"
        ratio = f"{peer['rtf'] / ours['rtf']:.2f}x" if peer else "-"
        print(f"{size:<16} {ours['audio_s']:>8.1f} {ours['windows']:>8} {ours['tokens']:>7} "
              f"{ours['total_s']:>8.2f} {ours['rtf']:>8.4f} {p_s:>8} {p_rtf:>9} {ratio:>11}")
        detail = (f"  csm: mel {ours['mel_s']:.2f} s, encoder {ours['encoder_s']:.2f} s, "
                  f"decoder {ours['decoder_s']:.2f} s ({ours['decoder_tokens_per_s']:.1f} tokens/s)")
        if peer:
            detail += (f"; transformers: features {peer['features_s']:.2f} s, "
                       f"generate {peer['generate_s']:.2f} s")
        print(detail)
    print("RTF = compute time / audio time; csm faster = transformers RTF / csm RTF")


if __name__ == "__main__":
    main(sys.argv[1])
