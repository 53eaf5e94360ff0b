#!/usr/bin/env python3
"""Prints the "what fits where" table from the JSON files bench/memory_table.sh
writes: peak MLX memory (GB, 10^9 bytes) of one CSM-1B LoRA training step
per batch size and mode, the weights' share, and seconds per step."""
import json
import pathlib
import sys

MODES = [
    ("plain", "full precision"),
    ("gc", "+ grad checkpoint"),
    ("q8", "8-bit base"),
    ("q8gc", "8-bit base + grad checkpoint"),
    ("q4", "4-bit base"),
    ("q4gc", "4-bit base + grad checkpoint"),
]


def main(out: pathlib.Path) -> None:
    cases = {}
    for f in sorted(out.glob("b*_*.json")):
        cases[f.stem] = json.loads(f.read_text())
    batches = sorted({int(k[1:].split("_")[0]) for k in cases})
    print("| base | " + " | ".join(f"batch {b}" for b in batches) + " | weights |")
    print("| --- |" + " --- |" * (len(batches) + 1))
    for mode, label in MODES:
        row, weights = [], None
        for b in batches:
            c = cases.get(f"b{b}_{mode}")
            if c is None:
                row.append("-")
            elif c.get("failed"):
                row.append(f"did not fit (exit {c['exit']})")
            else:
                peak = c["peak_mlx_bytes"] / 1e9
                secs = c.get("median_s_per_step")
                row.append(f"{peak:.2f} GB ({secs:.1f} s/step)" if secs else f"{peak:.2f} GB")
                weights = c.get("weights_mlx_bytes", weights)
        if any(r != "-" for r in row):
            w = f"{weights / 1e9:.2f} GB" if weights else "-"
            print(f"| {label} | " + " | ".join(row) + f" | {w} |")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
