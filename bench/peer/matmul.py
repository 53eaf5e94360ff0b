#!/usr/bin/env python3
"""The device's matmul rate as PyTorch reaches it: n x n times n x n products
(default 8192, bf16 on CUDA), 2 n^3 FLOPs each, for about --seconds after a
warm-up. The GPU benchmark (bench/run_gpu.sh) divides model FLOPs by this
rate for the MFU of both tools.

  python bench/peer/matmul.py --device cuda --dtype bfloat16 --n 8192 --json OUT
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    common.setup_threads(args.threads)
    dtype = common.parse_dtype(args.dtype)
    gen = torch.Generator(device=args.device).manual_seed(0)
    a = torch.randn(args.n, args.n, device=args.device, dtype=dtype, generator=gen)
    b = torch.randn(args.n, args.n, device=args.device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    common.sync(args.device)
    iters = 0
    start = time.perf_counter()
    while True:
        for _ in range(4):
            a @ b
        iters += 4
        common.sync(args.device)
        if time.perf_counter() - start >= args.seconds:
            break
    secs = time.perf_counter() - start
    tflops = 2 * args.n**3 * iters / secs / 1e12
    env = common.env_info(args.device)
    print(f"torch matmul {args.n}^3 {args.dtype} on {env.get('cuda_device', env.get('cpu_model'))}: "
          f"{tflops:.1f} TFLOP/s ({iters} products in {secs:.2f} s)")
    common.write_json(args.json, {
        "tool": "peer:torch",
        "script": "bench/peer/matmul.py",
        "time_utc": common.now_utc(),
        "args": vars(args),
        "env": env,
        "n": args.n,
        "dtype": args.dtype,
        "iterations": iters,
        "seconds": secs,
        "tflops": tflops,
    })


if __name__ == "__main__":
    main()
