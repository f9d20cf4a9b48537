"""Self-supervised CT training (fewshotcx.training.selfsupervised, ``--data ssl-ct``): supervoxels tile
the body and nothing else, deterministically and with bounded sizes; the source loads only declared
unlabelled CTs and never a report or held-out volume; a tiny run on it checkpoints and resumes."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import missing
from fewshotcx import Volume
from fewshotcx.datasets import shared_data_dir
from fewshotcx.datasets.ct_anatomy import body_mask
from fewshotcx.models.weights import load_checkpoint
from fewshotcx.training import loop as training
from fewshotcx.training import selfsupervised as ssl
from fewshotcx.training.loop import TrainConfig, train

SPACING = (3.0, 3.0, 4.0)


def ct_like(seed: int = 0, shape: tuple[int, int, int] = (64, 64, 24)) -> Volume:
    """An abdomen-like CT: air, a detached table, an elliptic body of soft tissue with a fat rim,
    a spine (bone) and two air-filled lungs in the upper slices; mild noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0)
    cx, cy = shape[0] / 2 + seed, shape[1] / 2 - 4
    body = ((x - cx) / 26) ** 2 + ((y - cy) / 18) ** 2 <= 1
    hu[body] = -100.0  # fat rim
    hu[((x - cx) / 23) ** 2 + ((y - cy) / 15) ** 2 <= 1] = 40.0
    hu[((x - cx) ** 2 + (y - cy - 10) ** 2 <= 16)] = 600.0  # spine
    for side in (-1, 1):
        lung = ((x - cx - side * 10) / 7) ** 2 + ((y - cy + 2) / 8) ** 2 + ((z - shape[2]) / 10) ** 2 <= 1
        hu[lung & body] = -850.0
    hu[:, shape[1] - 4:shape[1] - 2, :] = 100.0  # the table, below the body and apart from it
    hu += rng.normal(0, 10, shape)
    return Volume(hu.astype(np.float32), np.diag([*SPACING, 1.0]))


def test_supervoxels_tile_the_body_and_never_the_air_or_the_table():
    ct = ct_like()
    regions = ssl.supervoxels(ct, cell_mm=24.0, seed=3)
    body = body_mask(ct.array)
    assert regions.shape == ct.shape and regions.dtype == np.int32
    assert np.array_equal(regions > 0, body)  # every body voxel, nothing else
    outside_air = (ct.array < -500) & ~body
    assert outside_air.any() and not regions[outside_air].any()
    assert not regions[:, -4:-2, :].any()  # the detached table
    assert set(np.unique(regions)) == set(range(regions.max() + 1))  # labels 0..n, no gaps


def test_supervoxels_are_deterministic_for_a_seed_and_change_with_it():
    ct = ct_like()
    first = ssl.supervoxels(ct, cell_mm=24.0, seed=1)
    assert np.array_equal(first, ssl.supervoxels(ct, cell_mm=24.0, seed=1))
    assert not np.array_equal(first, ssl.supervoxels(ct, cell_mm=24.0, seed=2))
    kept = ssl.select_supervoxels(first, 6, seed=1)
    assert np.array_equal(kept, ssl.select_supervoxels(first, 6, seed=1))


def test_supervoxel_count_and_sizes_are_bounded():
    ct, cell = ct_like(), 24.0
    regions = ssl.supervoxels(ct, cell_mm=cell, seed=0)
    grid = np.prod([n * s / cell + 2 for n, s in zip(ct.shape, SPACING)])
    assert 8 <= regions.max() <= 4 * grid  # each watershed region cut by at most a few cells
    for box in __import__("scipy.ndimage", fromlist=["find_objects"]).find_objects(regions):
        extent_mm = [(b.stop - b.start) * s for b, s in zip(box, SPACING)]
        assert max(extent_mm) <= 2.5 * cell, extent_mm  # no region outgrows its seed's neighbourhood
    kept = ssl.select_supervoxels(regions, 5, seed=0, min_extent=4, min_voxels=100)
    values = [v for v in np.unique(kept) if v]
    assert values == list(range(1, 6))
    for v in values:
        coords = np.argwhere(kept == v)
        assert (kept == v).sum() >= 100 and (coords.max(0) - coords.min(0) + 1).min() >= 4
        assert len(np.unique(regions[kept == v])) == 1  # a kept supervoxel is one whole region
    assert not ssl.select_supervoxels(regions, 5, min_voxels=10**9).any()


def test_pseudo_labelled_volumes_hold_hounsfield_tasks_and_per_scan_supervoxels():
    hu, sv = ssl.pseudo_labelled_volumes(ct_like(), "test/ct", count=4, cell_mm=40.0, seed=0)
    assert (hu.name, hu.group, hu.dataset) == ("test/ct", ssl.SSL_DATASET, ssl.SSL_DATASET)
    assert {"bone", "left lung", "right lung", "soft tissue"} <= set(hu.structures.values())
    assert (sv.name, sv.group, sv.dataset) == ("test/ct supervoxels", "supervoxels test/ct", ssl.SSL_DATASET)
    assert list(sv.structures.values()) == [f"supervoxel {i}" for i in range(1, 5)]
    assert not sv.labels.array[~body_mask(sv.image.array)].any()


def test_source_loads_only_declared_cts_and_never_an_excluded_one():
    read = {"mirp/CRLM-CT-1004": ct_like(0), "mirp/CRLM-CT-1006": ct_like(1)}.__getitem__
    with pytest.raises(ValueError, match="LUNG1-001"):
        ssl.unlabelled_ct_volumes(names=["mirp/LUNG1-001"], read=read)  # a report volume: refused
    volumes = ssl.unlabelled_ct_volumes(exclude=["mirp/CRLM-CT-1004 supervoxels"], read=read)
    assert [v.name for v in volumes] == ["mirp/CRLM-CT-1006", "mirp/CRLM-CT-1006 supervoxels"]


def _fake_source(exclude=(), seed=0, **_):
    read = {"mirp/CRLM-CT-1004": ct_like(0), "mirp/CRLM-CT-1006": ct_like(1)}.__getitem__
    return ssl.unlabelled_ct_volumes(exclude=exclude, seed=seed, read=read)


def test_a_tiny_ssl_ct_run_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "unlabelled_ct_volumes", _fake_source)
    tiny = dict(data=["ssl-ct"], width=4, size=32, support_size=(2, 3), queries=2, episodes_per_step=1,
                axes=["axial"], warmup=1, val_every=0, checkpoint_every=3, progress=False, device="cpu",
                holdout_volumes=["mirp/CRLM-CT-1006"], out=str(tmp_path / "ssl.pt"))
    out = train(TrainConfig(**tiny, steps=3))
    state = load_checkpoint(out)[1]["extra"]["training"]
    assert state["step"] == 3 and state["config"]["data"] == ["ssl-ct"]
    resumed = train(TrainConfig(**{**tiny, "steps": 5, "resume": True}))
    assert load_checkpoint(resumed)[1]["extra"]["training"]["step"] == 5


def test_real_unlabelled_ct_gives_supervoxels_inside_its_body():
    if shared_data_dir() is None:
        missing("../shared/data (development data) is absent")
    hu, sv = ssl.unlabelled_ct_volumes(names=["mirp/CRLM-CT-1004"])
    assert sv.name == "mirp/CRLM-CT-1004 supervoxels" and len(sv.structures) == 16
    assert not sv.labels.array[~body_mask(sv.image.array)].any()
    assert {"bone", "fat", "soft tissue"} <= set(hu.structures.values())


def test_the_gpu_recipe_adds_ssl_ct_only_in_its_own_lane():
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root / "benchmarks")]
    import roles
    import train_gpu

    default = train_gpu.train_command(Path("a.pt"), False, False, 10.0, None)
    lane = train_gpu.train_command(Path("a.pt"), False, False, 10.0, None, lane="ssl-ct")
    at = default.index("--width")  # after the --data flags
    assert "ssl-ct" not in default and lane == default[:at] + ["--data", "ssl-ct"] + default[at:]
    assert len({p for _, paths in train_gpu.LANES.values() for p in paths}) == 2 * 3  # no shared checkpoint/cache
    config = {"data": train_gpu.DATA + ["ssl-ct"], "holdout_volumes": train_gpu.HOLDOUT_VOLUMES,
              "report_volumes": train_gpu.REPORT_VOLUMES}
    assert roles.undeclared(config) == [] and roles.trained_volumes(config) == set(ssl.UNLABELLED_CTS)
    cache = train_gpu.cache_command("ssl-ct", Path("v.npz"), Path("scratch.pt"))
    assert cache[:at + 2] == lane[:at + 2] and cache[-5:] == ["--steps", "0", "--device", "cpu", "--overwrite"]
    assert cache[cache.index("--volume-cache") + 1] == "v.npz" and "--report-volume" in cache


def test_a_held_out_or_report_ct_keeps_its_supervoxels_out_of_training(monkeypatch):
    from fewshotcx.pipeline.slicing import Framing

    monkeypatch.setattr(training, "unlabelled_ct_volumes", _fake_source)
    config = TrainConfig(data=["ssl-ct"], axes=["axial"], holdout_volumes=["mirp/CRLM-CT-1006"],
                         report_volumes=["mirp/CRLM-CT-1004"], progress=False)
    with pytest.raises(ValueError, match="every task is held out"):  # 1004 reported, 1006 validation only
        training._training_tasks(config, Framing(32, 0, "pad", None, None), [])
    config.report_volumes = []
    train_tasks, val_tasks = training._training_tasks(config, Framing(32, 0, "pad", None, None), [])
    trained = {n for t in train_tasks for n in t.volume_names}
    assert trained == {"mirp/CRLM-CT-1004", "mirp/CRLM-CT-1004 supervoxels"}
    queried = {t.volumes[i].name for t in val_tasks for i in t.query_volumes}
    assert queried == {"mirp/CRLM-CT-1006", "mirp/CRLM-CT-1006 supervoxels"}
