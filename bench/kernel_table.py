#!/usr/bin/env python3
"""Where a training step's GPU time goes, csm beside the peer, by kind of kernel.

  python3 bench/kernel_table.py --csm KERNELS.tsv[.gz]|NCU_RAW.csv[.gz] --peer TRACE.json[.gz] [--peer-steps 2]

--csm: the kernels of a `csm bench-train` run of one case, as the CUPTI
tracer bench/ktrace writes them (start ns, end ns, name; .tsv) or as Nsight
Compute's raw page (`ncu --metrics gpu__time_duration.sum --csv --page raw
--log-file F`; .csv).
Its steps launch the same kernels (MLX's order varies from step to step),
so one step is the shortest tail (of at least --min-period kernels) whose
kernels, as a multiset, are those of the stretch just before it; the
kernels of that last step are counted. MLX's JIT-fused kernels (mx.compile)
count as fused elementwise. --peer: the Chrome trace that
`bench/peer/train_step.py --profile-dir` writes for a case (2 steps).
Prints, for each kind of kernel, the count and the milliseconds per step of
both, and the sum over every kernel.
"""

import argparse
import csv
import gzip
import io
import json
import random
import re
import sys

# First match wins: attention comes before matmul, as cuDNN's fused
# attention kernels carry "wgmma" in their names (cudnn::fusion: the
# flash backward's own pre- and post-passes).
KINDS = [
    ("attention", r"flash|fmha|sdpa|attention|scaled_dot|cudnn::fusion"),
    ("matmul", r"gemm|cutlass|cublas|xmma|nvjet|wgmma|matmul|gemv|splitk"),
    ("softmax / log-sum-exp", r"softmax|logsumexp|cross_entropy|nll"),
    ("reduction", r"reduce|sum_|_sum|norm|rms|welford|all_reduce|row_reduce|col_reduce"),
    ("copy / cast / gather", r"copy|cast|gather|scatter|index|concat|pad|fill|memset|memcpy|transpose|contiguous|slice"),
    ("random", r"rbits|random|philox|rand"),
    ("fused elementwise", r"triton|fused|compiled|binary|unary|ternary|elementwise|vectorized|where|add|mul"),
]


# MLX's JIT-fused elementwise kernels (mx.compile) carry a generated name
# of op names after a length prefix, e.g. _ZN3mlx4core2cu79CV2ISigmoid...;
# their names also hold "contiguous" or "AsType", which would read as copies.
MLX_FUSED = re.compile(r"mlx4core2cu\d+[A-Z]")


def kind_of(name):
    if MLX_FUSED.search(name):
        return "fused elementwise"
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def opener(path):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def ktrace_kernels(path):
    """(name, microseconds, start ns) of every kernel, in start order."""
    rows = []
    with opener(path) as f:
        for line in f:
            start, end, name = line.rstrip("\n").split("\t", 2)
            rows.append((int(start), int(end), name))
    rows.sort()
    return [(name, (end - start) / 1e3, start) for start, end, name in rows]


def csm_kernels(path):
    if ".tsv" in path:
        return ktrace_kernels(path)
    return [(n, us, None) for n, us in ncu_kernels(path)]


def ncu_kernels(path):
    """(name, microseconds) of every kernel, in launch order."""
    with opener(path) as f:
        text = f.read()
    # ncu prints its own lines (==PROF== ...) around the CSV.
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    head = rows[0]
    name_col = head.index("Kernel Name")
    dur_col = head.index("gpu__time_duration.sum")
    id_col = head.index("ID")
    scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
    unit = 1e-3
    out = []
    for r in rows[1:]:
        if len(r) <= dur_col:
            continue
        if not r[id_col].strip():  # the units row
            unit = scale.get(r[dur_col].strip(), unit)
            continue
        value = r[dur_col].replace(",", "")
        if not value:
            continue
        out.append((r[name_col], float(value) * unit))
    return out


def last_step(kernels, max_tail=4000, min_period=200):
    """The kernels of the last step. MLX launches a step's kernels in an
    order that varies from step to step, but each step launches the same
    kernels: the step is the shortest stretch (of at least min_period
    kernels) at the end whose kernels, as a multiset, are those of the
    stretch before it, after dropping as few trailing kernels as needed (at
    most max_tail: the run's last step may be followed by other work)."""
    names = [k[0] for k in kernels]
    n = len(names)
    # A multiset of names as a sum of random 64-bit values, one per name.
    rng = random.Random(0)
    value = {}
    prefix = [0]
    for name in names:
        if name not in value:
            value[name] = rng.getrandbits(64)
        prefix.append((prefix[-1] + value[name]) & (2**64 - 1))
    for tail in range(0, min(max_tail, n) + 1):
        m = n - tail
        for period in range(max(min_period, 2), m // 2 + 1):
            a, b = m - 2 * period, m - period
            if (prefix[b] - prefix[a]) & (2**64 - 1) == (prefix[m] - prefix[b]) & (2**64 - 1):
                return kernels[b:m], tail
    raise SystemExit(f"no repeating step found among {n} kernels: run 2 or more steps")


def peer_kernels(path):
    with opener(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ks = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"]
    ks.sort(key=lambda e: e["ts"])
    span = (ks[-1]["ts"] + ks[-1]["dur"] - ks[0]["ts"]) if ks else 0.0
    return [(e["name"], float(e["dur"])) for e in ks], span


def by_kind(kernels, steps):
    table = {}
    for name, us in kernels:
        c, t = table.get(kind_of(name), (0, 0.0))
        table[kind_of(name)] = (c + 1, t + us)
    return {k: (c / steps, t / steps / 1e3) for k, (c, t) in table.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csm", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--peer-steps", type=int, default=2)
    ap.add_argument("--min-period", type=int, default=200, help="fewest kernels a step can have (default 200)")
    ap.add_argument("--top", type=int, default=12, help="also list the N longest kernels of each")
    a = ap.parse_args()
    all_csm = csm_kernels(a.csm)
    csm, tail = last_step(all_csm, min_period=a.min_period)
    csm_span = None
    if csm and csm[0][2] is not None:
        # the step's GPU span: first kernel start to last kernel end
        csm_span = (csm[-1][2] + csm[-1][1] * 1e3 - csm[0][2]) / 1e3
    csm = [(n, us) for n, us, _ in csm]
    peer, peer_span = peer_kernels(a.peer)
    c, p = by_kind(csm, 1), by_kind(peer, a.peer_steps)
    span = f", {csm_span / 1e3:.1f} ms from its first kernel's start to its last one's end" if csm_span else ""
    print(f"csm: {len(all_csm)} kernels profiled, one step = {len(csm)} kernels ({tail} trailing ones dropped){span}")
    print(f"peer: {len(peer)} kernels in {a.peer_steps} steps, {peer_span / 1e3 / a.peer_steps:.1f} ms of trace a step\n")
    print("| kind | csm kernels | csm ms | peer kernels | peer ms |")
    print("| --- | --- | --- | --- | --- |")
    for kind in [k for k, _ in KINDS] + ["other"]:
        if kind in c or kind in p:
            cc, ct = c.get(kind, (0, 0.0))
            pc, pt = p.get(kind, (0, 0.0))
            print(f"| {kind} | {cc:.0f} | {ct:.2f} | {pc:.0f} | {pt:.2f} |")
    tc = sum(t for _, t in c.values())
    tp = sum(t for _, t in p.values())
    print(f"| all | {len(csm)} | {tc:.2f} | {len(peer) / a.peer_steps:.0f} | {tp:.2f} |")
    for label, ks, steps in (("csm", csm, 1), ("peer", peer, a.peer_steps)):
        agg = {}
        for name, us in ks:
            n, t = agg.get(name, (0, 0.0))
            agg[name] = (n + 1, t + us)
        print(f"\n{label}: the {a.top} kernels with the most time a step")
        for name, (n, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[: a.top]:
            print(f"  {t / steps / 1e3:7.2f} ms  {n / steps:5.0f} x  [{kind_of(name)}] {name[:110]}")


if __name__ == "__main__":
    sys.exit(main())
