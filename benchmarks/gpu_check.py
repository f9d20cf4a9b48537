"""One GPU check, one CSV: does fewshotcx work, agree with the CPU and run fast on this GPU?

Run by ``scripts/gpu_check.sh`` (about 5 minutes on a current datacentre GPU; budget 8). Parts, one
or more CSV rows each (``part, name, status, value, unit, detail``):

1. ``tests``: the test suite's ``cuda``-marked tests (``pytest -m cuda``), one row per test.
2. ``equality``: CPU vs CUDA probabilities of the same Segmenter (same seed, v1 network with seeded
   random weights) on a synthetic 96×96×40 volume, S = 16: fp32 (TF32 off) and bf16 autocast.
3. ``speed``: whole-volume ``Segmenter.predict_proba`` on a 512×512×100 CT-sized volume at S = 16
   and 64 (128² slices), fp32 / bf16 / fp16, channels-last and NCHW for bf16: median seconds of 3
   after a warm-up, and peak ``torch.cuda.max_memory_allocated``. Target: < 2 s at S = 64 in bf16.
4. ``dice``: the demo tasks (:mod:`fewshotcx.demo`, bundled model, real held-out data) in fp32 and
   bf16 on the GPU: Dice of each and the difference.

``--dry-run`` runs every part at tiny sizes on the CPU (tiny network, 48×48×6 volume, a synthetic
stand-in for the demo tasks); the parts that need CUDA are recorded as ``skipped`` with the reason. A
dry run writes to ``bench-output/gpu_check/gpu_check.csv`` unless ``--out`` says otherwise: the
committed ``benchmarks/results/gpu_check.csv`` is a real GPU's run.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.csv] [--dry-run]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
#: The committed result of a real GPU's run (the default without --dry-run).
RESULTS_OUT = ROOT / "benchmarks" / "results" / "gpu_check.csv"
#: A dry run's default: never the committed results.
DRY_RUN_OUT = ROOT / "bench-output" / "gpu_check" / "gpu_check.csv"

from common import machine_info, synthetic_case, synthetic_subject, write_csv  # noqa: E402
from fewshotcx import Segmenter, Volume  # noqa: E402
from fewshotcx.models import UniverSeg  # noqa: E402

NO_CUDA = "skipped: no CUDA device (torch.cuda.is_available() is False)"
TARGET_S64_BF16_S = 2.0


@dataclass(frozen=True)
class Sizes:
    """What each part runs on: the real check, or the dry run's tiny stand-ins."""

    widths: Optional[tuple[int, ...]]  # None = the v1 network; else (width,) * 4 encoder / 3 decoder blocks
    slice_size: int
    equality_shape: tuple[int, int, int]
    equality_support: int
    speed_shape: tuple[int, int, int]
    speed_supports: tuple[int, ...]
    repeats: int


REAL = Sizes(None, 128, (96, 96, 40), 16, (512, 512, 100), (16, 64), 3)
DRY = Sizes((8,), 32, (48, 48, 6), 3, (48, 48, 6), (4,), 1)


def row(part: str, name: str, status: str, value: Any = "", unit: str = "", detail: str = "") -> dict:
    return {"part": part, "name": name, "status": status, "value": value, "unit": unit, "detail": detail}


def network(sizes: Sizes) -> UniverSeg:
    """The network under test with seeded random weights (speed and CPU/GPU agreement do not need trained ones)."""
    torch.manual_seed(0)
    if sizes.widths is None:
        return UniverSeg().eval()
    return UniverSeg(encoder_blocks=sizes.widths * 4, decoder_blocks=sizes.widths * 3).eval()


@contextmanager
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ------------------------------------------------------------------------------------------- parts
def cuda_tests(cuda: bool) -> list[dict]:
    """``pytest -m cuda`` in a subprocess; one row per test from its JUnit XML."""
    if not cuda:
        return [row("tests", "pytest -m cuda", "skipped", detail=NO_CUDA)]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py",
                               f"--junitxml={report}", "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True,
                              text=True)
        if not report.exists():
            return [row("tests", "pytest -m cuda", "error", detail=(done.stdout + done.stderr)[-300:])]
        rows = []
        for case in ElementTree.parse(report).iter("testcase"):
            outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
            status = "passed" if outcome is None else {"failure": "failed"}.get(outcome.tag, outcome.tag)
            message = "" if outcome is None else (outcome.get("message") or "")[:300]
            rows.append(row("tests", case.get("name"), status, round(float(case.get("time", 0)), 2), "s", message))
        return rows


def _probabilities(model: UniverSeg, sizes: Sizes, device: str, precision: str) -> np.ndarray:
    image, label, query = synthetic_case(sizes.equality_shape)
    seg = Segmenter(model=model, device=device, slice_size=sizes.slice_size, support_size=sizes.equality_support,
                    progress=False, seed=0, precision=precision)
    return seg.fit([image], [label]).predict_proba(query).array


def equality(sizes: Sizes, cuda: bool) -> list[dict]:
    """CPU fp32 vs CUDA fp32 (TF32 off) and CUDA bf16: largest probability difference, same seed."""
    model = network(sizes)
    cpu = _probabilities(model, sizes, "cpu", "fp32")
    detail = f"Segmenter.predict_proba, {'x'.join(map(str, sizes.equality_shape))} volume, S={sizes.equality_support}"
    rows = [row("equality", "cpu fp32 reference", "done", round(float(cpu.mean()), 6), "mean probability", detail)]
    for precision in ("fp32", "bf16"):
        name = f"max |p_cuda_{precision} - p_cpu_fp32|"
        if not cuda:
            rows.append(row("equality", name, "skipped", detail=NO_CUDA))
            continue
        with no_tf32():
            gpu = _probabilities(model, sizes, "cuda", precision)
        diff = float(np.abs(gpu - cpu).max())
        limit = 2e-3 if precision == "fp32" else 0.05
        rows.append(row("equality", name, "passed" if diff <= limit else "failed", f"{diff:.2e}", "probability",
                        f"{detail}; limit {limit}"))
    return rows


def _ct_like(shape: tuple[int, int, int]) -> tuple[Volume, Volume, Volume]:
    """CT-sized synthetic volumes (HU-like intensities): support image, its label, query."""
    image, label, query = synthetic_case(shape)
    to_hu = lambda v: Volume(v.array * 400.0 - 200.0, np.diag([0.8, 0.8, 2.5, 1.0]))  # noqa: E731
    return to_hu(image), Volume(label.array, np.diag([0.8, 0.8, 2.5, 1.0]), label=True), to_hu(query)


def speed(sizes: Sizes, device: str) -> list[dict]:
    """Median seconds and peak memory of whole-volume inference per (S, precision, layout)."""
    model = network(sizes)
    image, label, query = _ct_like(sizes.speed_shape)
    shape = "x".join(map(str, sizes.speed_shape))
    configs = [(s, p, True) for s in sizes.speed_supports for p in ("fp32", "bf16", "fp16")]
    configs += [(sizes.speed_supports[-1], "bf16", False)]
    rows = []
    for s, precision, channels_last in configs:
        seg = Segmenter(model=model, device=device, slice_size=sizes.slice_size, support_size=s, progress=False,
                        modality="ct", precision=precision, channels_last=channels_last).fit([image], [label])
        seg.predict_proba(query)  # warm-up: cuDNN autotuning, allocator
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(sizes.repeats):
            start = time.perf_counter()
            seg.predict_proba(query)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        layout = "channels_last" if channels_last else "nchw"
        name = f"S={s} {precision} {layout}"
        detail = f"{shape} volume, {sizes.slice_size}^2 slices, median of {sizes.repeats}"
        status = "done"
        if s == 64 and precision == "bf16" and channels_last and device == "cuda":
            status = "passed" if seconds < TARGET_S64_BF16_S else "failed"
            detail += f"; target < {TARGET_S64_BF16_S} s"
        rows.append(row("speed", name + " seconds", status, round(seconds, 3), "s", detail))
        rows.append(row("speed", name + " slices/s", "done", round(sizes.speed_shape[2] / seconds, 1), "slices/s",
                        detail))
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row("speed", name + " peak memory", "done", round(peak, 1), "MiB", "max_memory_allocated"))
        else:
            rows.append(row("speed", name + " peak memory", "skipped", detail=NO_CUDA))
    return rows


def _synthetic_demo_task():
    """Dry-run stand-in for a demo task: a blob segmented across two synthetic subjects (no data needed)."""
    from fewshotcx.demo import DemoTask

    pair = lambda: (synthetic_subject(DRY.equality_shape, 0), synthetic_subject(DRY.equality_shape, 1))  # noqa: E731
    return DemoTask("synthetic-blob-cross-subject", pair, "blob", 0, "label fusion")


def dice(dry_run: bool, device: str) -> list[dict]:
    """Demo tasks in fp32 and bf16 (dry run: a synthetic stand-in and the tiny network, on the CPU)."""
    from fewshotcx.demo import TASKS, run_task

    tasks, options = (TASKS, {}) if not dry_run else ([_synthetic_demo_task()], {"model": network(DRY), "slice_size":
                                                                                  DRY.slice_size})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            scores = {p: run_task(task, Path(tmp), "default", device, True, precision=p, **options)["dice_model"]
                      for p in ("fp32", "bf16")}
            rows += [row("dice", f"{task.name} {p}", "done", scores[p], "Dice", device) for p in scores]
            rows.append(row("dice", f"{task.name} bf16 - fp32", "done", round(scores["bf16"] - scores["fp32"], 4),
                            "Dice"))
    return rows


PARTS = ("tests", "equality", "speed", "dice")


def run(out: Path, dry_run: bool, only: tuple[str, ...] = PARTS) -> list[dict]:
    cuda = torch.cuda.is_available() and not dry_run
    if dry_run:
        torch.set_num_threads(1)  # tiny tensors: threads only add contention
    sizes = DRY if dry_run else REAL
    device = "cuda" if cuda else "cpu"
    started = time.perf_counter()
    rows = [row("machine", "machine", "done", detail=machine_info()),
            row("machine", "torch", "done", torch.__version__, detail=f"CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version() if cuda else 'n/a'}, threads {torch.get_num_threads()}"),
            row("machine", "mode", "done", "dry-run" if dry_run else "full", detail=f"device {device}")]
    parts = [("tests", lambda: cuda_tests(cuda)), ("equality", lambda: equality(sizes, cuda)),
             ("speed", lambda: speed(sizes, device)), ("dice", lambda: dice(dry_run, device))]
    if not cuda and not dry_run:
        print(f"warning: {NO_CUDA}; running the CPU parts at full size", flush=True)
    for name, part in [(n, p) for n, p in parts if n in only]:
        t = time.perf_counter()
        try:
            new = part()
        except Exception as error:  # noqa: BLE001 - one failing part must not hide the others' rows
            new = [row(name, name, "error", detail=f"{type(error).__name__}: {error}"[:300])]
        new.append(row(name, f"{name} wall time", "done", round(time.perf_counter() - t, 1), "s"))
        for r in new:
            print(f"{r['part']:9s} {r['name']:45s} {r['status']:8s} {r['value']} {r['unit']} {r['detail']}"[:200],
                  flush=True)
        rows += new
        write_csv(rows, out)  # after every part, so a run cut short still leaves its rows
    rows.append(row("machine", "total wall time", "done", round(time.perf_counter() - started, 1), "s"))
    write_csv(rows, out)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"CSV to write (default: {RESULTS_OUT.relative_to(ROOT)}; with --dry-run "
                             f"{DRY_RUN_OUT.relative_to(ROOT)})")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; CUDA parts skipped")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default all: {','.join(PARTS)}); 'dice' needs the demo data")
    args = parser.parse_args(argv)
    args.out = args.out or (DRY_RUN_OUT if args.dry_run else RESULTS_OUT)
    only = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in only if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {unknown[0]!r}: expected some of {', '.join(PARTS)}")
    rows = run(args.out, args.dry_run, only)
    bad = [r for r in rows if r["status"] in ("failed", "error")]
    print(f"wrote {args.out}: {len(rows)} rows, {len(bad)} failed or errored")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
