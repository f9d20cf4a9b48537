"""Peak CPU memory of UniverSeg v1 for one query slice: plain ``forward`` vs ``forward_shared``.

Each configuration runs in a fresh subprocess (so allocator caches and earlier peaks do not leak
between runs); its peak is the growth of the process's maximum resident set size
(``resource.getrusage(...).ru_maxrss``) across one forward pass under ``torch.inference_mode``,
after the model and inputs exist. (``tracemalloc`` cannot see torch's CPU allocations.)

Usage: ``python benchmarks/model_memory.py [--support 64] [--size 128] [--queries 1] [--chunks 64,16,8,1]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

TARGET_MIB = 2048  # the shared path should need at most 2 GiB for one query at S=64, 128²


def _max_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure(mode: str, chunk: int | None, support: int, size: int, queries: int) -> dict:
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
            model.forward_shared(targets, images, labels, support_chunk=chunk)
    seconds = time.perf_counter() - start
    return {"peak_mib": _max_rss_mib() - before, "seconds": seconds, "threads": torch.get_num_threads()}


def _run_child(mode: str, chunk: int | None, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--support", str(args.support), "--size", str(args.size),
               "--queries", str(args.queries)]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", type=int, default=64, help="support size S")
    parser.add_argument("--size", type=int, default=128, help="slice size (divisible by 8)")
    parser.add_argument("--queries", type=int, default=1, help="query slices N sharing the support set")
    parser.add_argument("--chunks", default="64,16,8,1", help="support_chunk values for forward_shared")
    parser.add_argument("--child", choices=["plain", "shared"], help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.chunk, args.support, args.size, args.queries)))
        return

    import torch

    configs = [("plain", None)] + [("shared", int(c)) for c in args.chunks.split(",")]
    results = [(mode, chunk, _run_child(mode, chunk, args)) for mode, chunk in configs]
    plain = results[0][2]
    print(f"UniverSeg v1 (64 wide), N={args.queries} query, S={args.support}, {args.size}x{args.size}, fp32, "
          f"inference_mode; one fresh process per row")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({plain['threads']} torch threads), "
          f"torch {torch.__version__}, Python {platform.python_version()}")
    print(f"{'path':<32}{'peak MiB':>10}{'vs plain':>10}{'time s':>9}{'vs plain':>10}  <= {TARGET_MIB} MiB")
    for mode, chunk, res in results:
        name = "forward (plain pairwise)" if mode == "plain" else f"forward_shared(support_chunk={chunk})"
        ok = "yes" if res["peak_mib"] <= TARGET_MIB else "NO"
        print(f"{name:<32}{res['peak_mib']:>10.0f}{res['peak_mib'] / plain['peak_mib']:>10.2f}"
              f"{res['seconds']:>9.1f}{res['seconds'] / plain['seconds']:>10.2f}  {ok}")


if __name__ == "__main__":
    main()
