#!/usr/bin/env python3
"""What the host did while the GPU waited, over one step of `csm bench-train`.

  python3 bench/host_gaps.py --kernels KERNELS.tsv[.gz] --api API.tsv[.gz] [--min-gap-us 20]

--kernels: the kernels bench/ktrace wrote (KTRACE_OUT); --api: the host's
CUDA calls and NVTX ranges it wrote beside them (KTRACE_API_OUT, with
NVTX_INJECTION64_PATH set to CUPTI's library so that MLX's ranges are
recorded). One step is found as bench/kernel_table.py finds it. Prints:
- the step's span, the GPU's busy time (the union of its kernels) and its
  idle time, by gap length;
- for the idle gaps of at least --min-gap-us, which NVTX ranges (MLX's
  `Primitive::eval_gpu` and `CommandEncoder::commit`) and which CUDA calls
  were running on the host while the GPU waited, summed by name;
- the host's time in each NVTX range and CUDA call over the step's span,
  whichever step it worked on: where the launch of a step goes;
- the CUDA graphs launched in the step: how many MLX updated from its
  cache and how many it built afresh (cudaGraphInstantiate, then
  cudaGraphExecDestroy after the launch), with the kernels that launch in
  clusters of more than one block along y or z, which MLX 0.32 will not
  update in place (`subgraph_to_key` in mlx/backend/cuda/device.cpp).
"""

import argparse
import collections
import gzip
import importlib.util
import bisect
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("kernel_table", os.path.join(HERE, "kernel_table.py"))
kernel_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_table)


def opener(path):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def read_api(path):
    """(calls, ranges, launched): calls as (start, end, thread, name,
    correlation id), ranges as (start, end, thread, name, depth), all in
    ns; launched: for each correlation id, its kernels' (start, cluster
    shape)."""
    calls, starts, ranges = [], {}, []
    launched = collections.defaultdict(list)
    with opener(path) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[0] == "K" and len(p) >= 4:
                launched[int(p[3])].append((int(p[1]), p[4] if len(p) > 4 else "?"))
            elif p[0] in ("R", "D") and len(p) >= 6:
                calls.append((int(p[1]), int(p[2]), int(p[3]), p[0] + ":" + p[5], int(p[4])))
            elif p[0] == "M" and len(p) >= 5:
                flag, ts, rid, thread = p[1], int(p[2]), int(p[3]), int(p[4])
                name = p[5] if len(p) > 5 else ""
                if flag == "START":
                    starts[rid] = (ts, thread, name)
                elif flag == "END" and rid in starts:
                    s, th, nm = starts.pop(rid)
                    ranges.append((s, ts, th, nm or "?"))
    # Nesting depth per thread: a range inside another is depth 1, and so on.
    out = []
    by_thread = collections.defaultdict(list)
    for r in ranges:
        by_thread[r[2]].append(r)
    for th, rs in by_thread.items():
        rs.sort(key=lambda r: (r[0], -r[1]))
        stack = []
        for s, e, t, n in rs:
            while stack and stack[-1] <= s:
                stack.pop()
            out.append((s, e, t, n, len(stack)))
            stack.append(e)
    return calls, out, launched


def beyond_x(shape):
    """Whether a cluster shape `XxYxZ` spans more than one block along y or z."""
    try:
        _, y, z = (int(v) for v in shape.split("x"))
    except ValueError:
        return False
    return y > 1 or z > 1


def graph_launches(calls, launched, names, t0, t1):
    """The step's graph launches (those whose kernels start in [t0, t1]),
    each as (fresh, instantiate ns, kernel names with a cluster shape of
    more than one block along y or z)."""
    out = []
    by_thread = collections.defaultdict(list)
    for c in sorted(calls):
        if c[3].startswith("R:"):
            by_thread[c[2]].append(c)
    for seq in by_thread.values():
        pending = None
        for start, end, _, name, corr in seq:
            if name.startswith("R:cudaGraphInstantiate"):
                pending = end - start
            elif name.startswith("R:cudaGraphExecUpdate"):
                pending = None
            elif name.startswith("R:cudaGraphLaunch"):
                ks = launched.get(corr, [])
                if ks and t0 <= min(k for k, _ in ks) <= t1:
                    odd = [names.get(k, "?") for k, shape in ks if beyond_x(shape)]
                    out.append((pending is not None, pending or 0, odd))
                pending = None
    return out


def overlap_by_name(items, windows, key):
    """Summed overlap (ns) of each item's [start, end) with the windows, by key(item)."""
    total = collections.Counter()
    items = sorted(items, key=lambda it: it[0])
    starts = [it[0] for it in items]
    longest = max((it[1] - it[0] for it in items), default=0)
    for a, b in windows:
        lo = bisect.bisect_left(starts, a - longest)
        hi = bisect.bisect_right(starts, b)
        for it in items[lo:hi]:
            o = min(it[1], b) - max(it[0], a)
            if o > 0:
                total[key(it)] += o
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--min-gap-us", type=float, default=20.0)
    ap.add_argument("--min-period", type=int, default=200)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()

    kernels = kernel_table.ktrace_kernels(a.kernels)
    step, _ = kernel_table.last_step(kernels, min_period=a.min_period)
    iv = sorted((s, s + int(us * 1e3)) for _, us, s in step)
    t0, t1 = iv[0][0], max(e for _, e in iv)
    idle, cur_e = [], iv[0][1]
    for s, e in iv[1:]:
        if s > cur_e:
            idle.append((cur_e, s))
        cur_e = max(cur_e, e)
    span = t1 - t0
    idle_ns = sum(b - a for a, b in idle)
    print(f"step: {len(step)} kernels, {span / 1e6:.2f} ms span, GPU busy {(span - idle_ns) / 1e6:.2f} ms, "
          f"idle {idle_ns / 1e6:.2f} ms in {len(idle)} gaps")
    for lo, hi in ((0, 5), (5, 20), (20, 100), (100, 1e12)):
        g = [b - a for a, b in idle if lo * 1e3 <= b - a < hi * 1e3]
        label = f"{lo}-{hi} us" if hi < 1e12 else f">= {lo} us"
        print(f"  gaps of {label}: {len(g)}, {sum(g) / 1e6:.2f} ms")

    calls, ranges, launched = read_api(a.api)
    big = [(x, y) for x, y in idle if y - x >= a.min_gap_us * 1e3]
    big_ns = sum(y - x for x, y in big)
    print(f"\nwhile the GPU waited in the {len(big)} gaps of >= {a.min_gap_us:g} us ({big_ns / 1e6:.2f} ms), the host was in:")
    if ranges:
        print("  NVTX ranges (ms; innermost and outer ranges both count):")
        for name, ns in overlap_by_name(ranges, big, key=lambda r: r[3]).most_common(a.top):
            print(f"    {ns / 1e6:8.2f}  {name}")
    else:
        print("  NVTX ranges: none recorded")
    print("  CUDA calls (ms):")
    for name, ns in overlap_by_name(calls, big, key=lambda c: c[3]).most_common(a.top):
        print(f"    {ns / 1e6:8.2f}  {name}")

    print(f"\nthe host over the step's span ({span / 1e6:.2f} ms), whichever step it worked on:")
    threads = collections.Counter()
    for s, e, th, *_ in calls:
        if s < t1 and e > t0:
            threads[th] += min(e, t1) - max(s, t0)
    for th, ns in threads.most_common(4):
        print(f"  thread {th}: {ns / 1e6:.2f} ms in CUDA calls")
    print("  top-level NVTX ranges (ms, count):" if ranges else "  NVTX ranges: none recorded")
    top = [r for r in ranges if r[4] == 0]
    per = overlap_by_name(top, [(t0, t1)], key=lambda r: r[3])
    counts = collections.Counter(r[3] for r in top if r[0] < t1 and r[1] > t0)
    for name, ns in per.most_common(a.top):
        print(f"    {ns / 1e6:8.2f}  {counts[name]:6d}  {name}")
    print("  CUDA calls (ms, count):")
    per = overlap_by_name(calls, [(t0, t1)], key=lambda c: c[3])
    counts = collections.Counter(c[3] for c in calls if c[0] < t1 and c[1] > t0)
    for name, ns in per.most_common(a.top):
        print(f"    {ns / 1e6:8.2f}  {counts[name]:6d}  {name}")

    names = {s: n for n, _, s in kernels}
    graphs = graph_launches(calls, launched, names, t0, t1)
    fresh = [g for g in graphs if g[0]]
    print(f"\nCUDA graphs launched in the step: {len(graphs)}, of which {len(fresh)} built afresh "
          f"({sum(g[1] for g in fresh) / 1e6:.2f} ms instantiating)")
    odd = collections.Counter(n[:100] for g in fresh for n in g[2])
    for name, c in odd.most_common(a.top):
        print(f"  {c:4d} x in fresh graphs, clusters beyond x: {name}")


if __name__ == "__main__":
    sys.exit(main())
