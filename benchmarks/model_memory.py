"""Peak CPU memory of UniverSeg v1 for one query slice: plain ``forward`` vs ``forward_shared``.

Each configuration runs in a fresh subprocess (so allocator caches and earlier peaks do not leak
between runs); its peak is the growth of the process's maximum resident set size
(``resource.getrusage(...).ru_maxrss``) across one forward pass under ``torch.inference_mode``,
after the model and inputs exist. (``tracemalloc`` cannot see torch's CPU allocations.)

Usage: ``python benchmarks/model_memory.py [--support 64] [--size 128] [--queries 1] [--chunks 64,16]
[--out benchmarks/results/model_memory.csv]`` (``forward_shared`` rows: channels-last at each chunk, plus
NCHW at the first chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TARGET_MIB = 2048  # the shared path should need at most 2 GiB for one query at S=64, 128²


def _max_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure(mode: str, chunk: int | None, support: int, size: int, queries: int, channels_last: bool = True) -> dict:
    """One forward pass in this process: peak RSS growth (MiB) and wall time (s)."""
    import torch

    from fewshotcx.models import UniverSeg

    torch.manual_seed(0)
    model = UniverSeg().eval()
    targets = torch.rand(queries, 1, size, size)
    images = torch.rand(support, 1, size, size)
    labels = (torch.rand(support, 1, size, size) > 0.5).float()
    before = _max_rss_mib()
    start = time.perf_counter()
    with torch.inference_mode():
        if mode == "plain":
            model(targets, images.expand(queries, -1, -1, -1, -1), labels.expand(queries, -1, -1, -1, -1))
        else:
            model.forward_shared(targets, images, labels, support_chunk=chunk, channels_last=channels_last)
    seconds = time.perf_counter() - start
    return {"peak_mib": _max_rss_mib() - before, "seconds": seconds, "threads": torch.get_num_threads()}


def _run_child(mode: str, chunk: int | None, channels_last: bool, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--support", str(args.support), "--size", str(args.size),
               "--queries", str(args.queries)]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    if not channels_last:
        command += ["--nchw"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", type=int, default=64, help="support size S")
    parser.add_argument("--size", type=int, default=128, help="slice size (divisible by 8)")
    parser.add_argument("--queries", type=int, default=1, help="query slices N sharing the support set")
    parser.add_argument("--chunks", default="64,16", help="support_chunk values for forward_shared")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_memory.csv"), help="CSV to write")
    parser.add_argument("--child", choices=["plain", "shared"], help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--nchw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.chunk, args.support, args.size, args.queries, not args.nchw)))
        return

    import torch

    from common import machine_info, write_csv

    chunks = [int(c) for c in args.chunks.split(",")]
    configs = [("plain", None, False)] + [("shared", c, True) for c in chunks] + [("shared", chunks[0], False)]
    load_before = os.getloadavg()[0]
    results = [(mode, chunk, cl, _run_child(mode, chunk, cl, args)) for mode, chunk, cl in configs]
    plain = results[0][3]
    print(f"UniverSeg v1 (64 wide), N={args.queries} query, S={args.support}, {args.size}x{args.size}, fp32, "
          f"inference_mode; one fresh process per row")
    print(f"machine: {machine_info()}")
    print(f"{'path':<52}{'peak MiB':>10}{'vs plain':>10}{'time s':>9}{'vs plain':>10}  <= {TARGET_MIB} MiB")
    rows = []
    for mode, chunk, cl, res in results:
        name = ("forward (plain pairwise)" if mode == "plain" else
                f"forward_shared(support_chunk={chunk}, channels_last={cl})")
        print(f"{name:<52}{res['peak_mib']:>10.0f}{res['peak_mib'] / plain['peak_mib']:>10.2f}"
              f"{res['seconds']:>9.1f}{res['seconds'] / plain['seconds']:>10.2f}  "
              f"{'yes' if res['peak_mib'] <= TARGET_MIB else 'NO'}")
        rows.append({"path": name, "queries": args.queries, "support_size": args.support, "slice_size": args.size,
                     "peak_mib": round(res["peak_mib"], 1), "peak_vs_plain": round(res["peak_mib"] / plain["peak_mib"], 3),
                     "seconds": round(res["seconds"], 2), "seconds_vs_plain": round(res["seconds"] / plain["seconds"], 3),
                     "threads": res["threads"], "load_avg_before": round(load_before, 2), "torch": torch.__version__,
                     "machine": machine_info()})
    print(f"wrote {write_csv(rows, args.out)}")


if __name__ == "__main__":
    main()
