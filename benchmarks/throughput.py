"""Whole-volume UniverSeg inference: fewshotcx's batched path versus the plain network slice by slice.

*Ours* = ``Segmenter.predict_proba`` on the whole query volume (normalisation, slicing, the batched
shared-support ``forward_shared`` in channels-last layout, reassembly; default settings and memory
budget). *Plain* = the official usage pattern: one ``model(target (1,C,H,W), support (1,S,C,H,W),
labels (1,S,1,H,W))`` call per query slice, with exactly the support set that ours used for that
slice (recorded from ours' own calls), so both compute the same logits; the run reports their
largest difference. Both use the v1 network with seeded random weights (speed does not depend on
the weights) at 128², fp32, in one process, repeats interleaved (ours, plain, conv peak, ours, ...)
so that load on a shared machine hits both alike; medians and their ratio are reported, with the
load average before and after.

The machine's convolution peak is measured in the same run: the achieved GFLOP/s of a large 3×3
convolution (64→64 channels, 16×128² images, the v1 network's dominant layer shape), best layout and
best repeat. Convolution FLOPs of both paths are counted with ``torch.utils.flop_counter`` (ours on
its real run, the plain loop on meta tensors), so each path's share of that peak is reported too.

    python benchmarks/throughput.py                      # 96×96×40 query, S = 16 and 4, 3 repeats
    python benchmarks/throughput.py --batch-sizes 1,2,4  # + query slabs per forward call (S = 16)

Writes ``throughput.csv`` (one row per timed run), ``throughput_summary.csv`` (medians, speed-up,
conv-peak shares, machine) and ``throughput_batch.csv`` under ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_info, synthetic_case, write_csv  # noqa: E402
from fewshotcx import Segmenter, Volume  # noqa: E402
from fewshotcx.models import UniverSeg  # noqa: E402


def load_average() -> float:
    """1-minute load average (NaN where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def conv_peak_gflops(batch: int = 16, channels: int = 64, size: int = 128, repeats: int = 3) -> dict:
    """Achieved GFLOP/s of one large 3×3 conv ``(batch, channels, size, size) -> same``, per layout (best repeat)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    w = torch.randn(channels, channels, 3, 3, generator=gen)
    flops = 2 * batch * channels * channels * 9 * size * size
    result = {}
    with torch.inference_mode():
        for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            F.conv2d(xf, wf, padding=1)  # warm-up (oneDNN primitive creation)
            best = min(_timed(lambda: F.conv2d(xf, wf, padding=1)) for _ in range(repeats))
            result[name] = flops / best / 1e9
    return result


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Recorder:
    """Wraps ``model.forward_shared`` on the instance to keep every call's inputs and logits."""

    def __init__(self, model: UniverSeg) -> None:
        self.model, self.calls, self.on = model, [], False
        self._inner = model.forward_shared
        model.forward_shared = self  # instance attribute shadows the method

    def __call__(self, targets, support_images, support_labels, **kwargs):
        logits = self._inner(targets, support_images, support_labels, **kwargs)
        if self.on:
            self.calls.append((targets.clone(), support_images.clone(), support_labels.clone(), logits.clone()))
        return logits


def plain_slice_by_slice(model: UniverSeg, calls) -> tuple[float, torch.Tensor]:
    """One plain ``model(...)`` call per query slice of the recorded calls; ``(seconds, logits (D, 1, H, W))``."""
    start = time.perf_counter()
    outs = []
    with torch.inference_mode():
        for targets, images, labels, _ in calls:
            for z in range(targets.shape[0]):  # the per-slice loop this library exists to avoid
                outs.append(model(targets[z:z + 1], images[None], labels[None]))
    return time.perf_counter() - start, torch.cat(outs)


def plain_conv_flops(calls) -> int:
    """Convolution FLOPs (2 per multiply-add) of the plain loop over the recorded calls, counted by
    ``torch.utils.flop_counter`` on meta tensors (shapes only, nothing computed)."""
    meta = UniverSeg().to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        for targets, images, labels, _ in calls:
            t, i, lab = (torch.empty(x.shape, device="meta") for x in (targets, images, labels))
            for z in range(t.shape[0]):
                meta(t[z:z + 1], i[None], lab[None])
    return int(counter.get_total_flops())


def make_segmenter(model: UniverSeg, support_size: int, depth: int, **options) -> tuple[Segmenter, Volume]:
    image, label, query = synthetic_case((96, 96, depth))
    seg = Segmenter(model=model, support_size=support_size, progress=False, strategy="random", device="cpu", **options)
    seg.fit([image], [label])
    return seg, query


def run(support_size: int, depth: int, repeats: int, peak_repeats: int = 3, peak_batch: int = 16
        ) -> tuple[list[dict], dict]:
    """Interleaved side-by-side runs; returns (one row per timed run, one summary row)."""
    torch.manual_seed(0)
    model = UniverSeg().eval()
    recorder = Recorder(model)
    seg, query = make_segmenter(model, support_size, depth)
    recorder.on = True
    counter = FlopCounterMode(display=False)
    with counter:
        seg.predict_proba(query)  # untimed: warm-up, the record of ours' calls and their FLOPs
    recorder.on = False
    ours_flops = int(counter.get_total_flops())
    calls = recorder.calls
    ours_logits = torch.cat([logits for *_, logits in calls])
    _, plain_logits = plain_slice_by_slice(model, calls)
    max_diff = float((ours_logits - plain_logits).abs().max())
    plain_flops = plain_conv_flops(calls)

    load_before = load_average()
    rows, ours, plain, peaks = [], [], [], []
    for r in range(repeats):
        ours.append(_timed(lambda: seg.predict_proba(query)))
        plain.append(plain_slice_by_slice(model, calls)[0])
        peaks.append(conv_peak_gflops(batch=peak_batch, repeats=peak_repeats))
        load = load_average()
        rows += [{"support_size": support_size, "slices": depth, "repeat": r, "method": method, "seconds": round(t, 3),
                  "load_avg": load} for method, t in (("ours", ours[-1]), ("plain", plain[-1]))]
        print(f"  S={support_size} repeat {r}: ours {ours[-1]:.2f} s, plain {plain[-1]:.2f} s, "
              f"conv peak {max(peaks[-1].values()):.0f} GFLOP/s, load {load}", flush=True)
    ours_s, plain_s = statistics.median(ours), statistics.median(plain)
    peak = max(max(p.values()) for p in peaks)
    summary = {
        "support_size": support_size, "slices": depth, "volume": f"96x96x{depth}", "slice_size": 128, "repeats": repeats,
        "ours_median_s": round(ours_s, 3), "plain_median_s": round(plain_s, 3),
        "ours_slices_per_s": round(depth / ours_s, 3), "plain_slices_per_s": round(depth / plain_s, 3),
        "speedup": round(plain_s / ours_s, 2), "max_abs_logit_diff": f"{max_diff:.2e}",
        "ours_conv_gflop": round(ours_flops / 1e9, 1), "plain_conv_gflop": round(plain_flops / 1e9, 1),
        "ours_gflops": round(ours_flops / ours_s / 1e9, 1), "plain_gflops": round(plain_flops / plain_s / 1e9, 1),
        "conv_peak_gflops": round(peak, 1),
        "conv_peak_nchw_gflops": round(max(p["nchw"] for p in peaks), 1),
        "ours_peak_share": round(ours_flops / ours_s / 1e9 / peak, 3),
        "plain_peak_share": round(plain_flops / plain_s / 1e9 / peak, 3),
        "load_avg_before": load_before, "load_avg_after": load_average(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": machine_info(),
    }
    return rows, summary


def batch_sweep(batch_sizes, support_size: int, depth: int, repeats: int = 1) -> list[dict]:
    """Ours with ``N`` query slabs per forward call (memory budget = N slabs), same volume, interleaved repeats."""
    torch.manual_seed(0)
    model = UniverSeg().eval()
    segs = {}
    for n in batch_sizes:
        seg, query = make_segmenter(model, support_size, depth)
        seg.memory_budget = n * seg.backend.bytes_per_slab(seg.fitted)
        segs[n] = seg
    times = {n: [] for n in batch_sizes}
    for _ in range(repeats):
        for n, seg in segs.items():
            times[n].append(_timed(lambda: seg.predict_proba(query)))
    rows = []
    for n in batch_sizes:
        seconds = statistics.median(times[n])
        rows.append({"batch": n, "support_size": support_size, "slices": depth, "repeats": repeats,
                     "median_s": round(seconds, 3), "slices_per_s": round(depth / seconds, 3),
                     "load_avg": load_average(), "threads": torch.get_num_threads(), "torch": torch.__version__})
        print(f"batch N={n:2d}  S={support_size}  D={depth}  {seconds:7.2f} s  ({depth / seconds:.2f} slices/s)",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,4", help="support sizes S, comma-separated")
    parser.add_argument("--depth", type=int, default=40, help="query slices (96x96xD volume)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per S (medians reported)")
    parser.add_argument("--batch-sizes", default="", help="also sweep query slabs per call, e.g. 1,2,4 (S = 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="CSV folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine_info()}")
    print(f"UniverSeg v1 (1.18 M params, random weights), 128x128 slices, query 96x96x{args.depth}, fp32, CPU\n")
    rows, summaries = [], []
    for s in (int(v) for v in args.sizes.split(",")):
        runs, summary = run(s, args.depth, args.repeats)
        rows += runs
        summaries.append(summary)
        print(f"S={s:3d}: ours {summary['ours_median_s']:.2f} s, plain {summary['plain_median_s']:.2f} s (medians), "
              f"speed-up x{summary['speedup']:.2f}; max |logit diff| {summary['max_abs_logit_diff']}; conv peak "
              f"{summary['conv_peak_gflops']:.0f} GFLOP/s, ours reaches {summary['ours_peak_share']:.0%}, plain "
              f"{summary['plain_peak_share']:.0%}", flush=True)
    print(f"wrote {write_csv(rows, args.out / 'throughput.csv')}")
    print(f"wrote {write_csv(summaries, args.out / 'throughput_summary.csv')}")
    if args.batch_sizes:
        batch_rows = batch_sweep([int(n) for n in args.batch_sizes.split(",")], 16, args.depth, args.repeats)
        print(f"wrote {write_csv(batch_rows, args.out / 'throughput_batch.csv')}")


if __name__ == "__main__":
    main()
