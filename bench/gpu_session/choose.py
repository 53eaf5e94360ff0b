#!/usr/bin/env python3
"""Call 2's choice: csm_compiled_*_p3m32[g]rR.json (3 MLP pieces; g: glibc's
malloc defaults). Prints a report, then 1 if glibc's malloc pays (acceptable:
no case's faster run more than 5% slower than csm's settings', summed time
at least 1% lower), else 0."""
import glob, json, os, re, sys
out = sys.argv[1]
runs = {}
for p in glob.glob(os.path.join(out, "csm_compiled_*r[12].json")):
    m = re.search(r"csm_compiled_(\d+x\d+)_([\d.]+)_(p\dm\d+g?)r\d\.json$", p)
    if not m:
        continue
    d = json.load(open(p))
    r = runs.setdefault(m.group(3), {}).setdefault((m.group(1), m.group(2)), [None, 0, None])
    t = d["median_s_per_step"]
    r[0] = t if r[0] is None else min(r[0], t)
    r[1] = max(r[1], d["peak_mlx_bytes"])
    h = d.get("host_s_per_step")
    r[2] = h if r[2] is None else min(r[2], h)
base, g = runs.get("p3m32", {}), runs.get("p3m32g", {})
for key, cases in sorted(runs.items()):
    print(key)
    for c in sorted(cases):
        print(f"   {c[0]} {c[1]}: {cases[c][0]:.4f} s, host {cases[c][2]:.4f} s, {cases[c][1] / 1e9:.2f} GB")
pays = 0
if len(base) == 8 and set(g) == set(base):
    rel = [g[c][0] / base[c][0] for c in base]
    total = sum(g[c][0] for c in base) / sum(base[c][0] for c in base)
    pays = int(max(rel) <= 1.05 and total <= 0.99)
    print(f"glibc against csm's malloc: worst case {max(rel):.3f}x, total {total:.3f}x")
print(pays)
