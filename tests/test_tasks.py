"""Training tasks: slabs cut as inference cuts them, whole-volume validation split, episode sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, blob_volume
from fewshotcx.pipeline.intensity import normalize
from fewshotcx.pipeline.slicing import Framing
from fewshotcx.pipeline.support import build_pool
from fewshotcx.training.synthetic import synthetic_cases, synthetic_family
from fewshotcx.training.tasks import (LABEL_SCALE, LabelledVolume, build_tasks, fixed_episodes, sample_episode, split_tasks,
                             user_volumes)
from fewshotcx.io.volume import Volume


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_cases(num_families=3, volumes_per_family=3, shape=(24, 24, 10), num_labels=4, seed=0)


def _blob(seed: int, name: str, group: str = "blobs") -> LabelledVolume:
    image, label = blob_volume(shape=(24, 20, 12), seed=seed, centre=(10 + seed, 9, 6))
    affine = ORIENTATIONS["LPS"]
    return LabelledVolume(name, Volume(image, affine), Volume(label, affine, label=True), {1: "Blob_L"}, group, "blobs")


def test_synthetic_families_are_seeded_and_share_a_layout():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a, b = synthetic_family((20, 20, 6), 2, 5, g1), synthetic_family((20, 20, 6), 2, 5, g2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    (img0, lab0), (img1, lab1) = a
    assert lab0.min() >= 1 and lab0.max() <= 5 and 0 <= img0.min() and img0.max() <= 1
    agreement = (lab0 == lab1).float().mean()
    other = synthetic_family((20, 20, 6), 1, 5, torch.Generator().manual_seed(5))[0][1]
    assert agreement > 0.5 and agreement > (lab0 == other).float().mean() + 0.2  # same family: similar layout
    assert not torch.equal(lab0, lab1)  # but not identical


def test_tasks_group_structures_across_volumes_of_a_group(synthetic):
    tasks = build_tasks(synthetic, size=16, context=1, axes=("axial", "coronal"))
    assert {t.axis for t in tasks} == {1, 2}
    for task in tasks:
        groups = {name.rsplit("/", 1)[0] for name in task.volume_names}
        assert groups == {task.group} and len(task.volumes) <= 3
        for part in task.volumes:
            images, labels = part.take(torch.arange(len(part)))
            assert images.shape == (len(part), 3, 16, 16) and labels.shape == (len(part), 1, 16, 16)
            assert 0 <= labels.min() and labels.max() <= 1 and part.foreground.any()
    assert max(len(t.volumes) for t in tasks) == 3


def test_slabs_and_labels_equal_the_inference_support_pool():
    vol = _blob(0, "a")
    task = build_tasks([vol], size=32, context=1, axes=("axial",), margin=10.0)[0]
    part = task.volumes[0]
    assert part.rows.tolist() == list(range(vol.image.shape[2]))  # a wide margin keeps every slice
    pool = build_pool([normalize(vol.image.array, "auto")], [vol.labels], axis=2, framing=Framing(32, 1))
    images, labels = part.take(torch.arange(len(part)))
    assert torch.allclose(images, pool.images, atol=2e-3)  # float16 storage
    assert torch.allclose(labels, pool.labels, atol=0.5 / LABEL_SCALE + 1e-6)  # uint8 storage
    assert torch.allclose(part.positions, pool.positions)


def test_rows_cover_structure_plus_margin_and_respect_max_slices():
    vol = _blob(0, "a")
    z = np.nonzero(vol.labels.array.any(axis=(0, 1)))[0]
    part = build_tasks([vol], size=16, axes=("axial",), margin=0.0)[0].volumes[0]
    assert part.rows.tolist() == list(range(z.min(), z.max() + 1))
    capped = build_tasks([vol], size=16, axes=("axial",), margin=1.0, max_slices=4)[0].volumes[0]
    assert len(capped) == 4


def test_validation_volumes_and_structures_never_reach_training(synthetic):
    blobs = [_blob(i, f"b{i}") for i in range(3)]
    tasks = build_tasks(synthetic + blobs, size=16, axes=("axial", "sagittal"))
    held_volume, held_structure = "synthetic/0/1/2", "region 2"
    train, val = split_tasks(tasks, holdout_volumes=[held_volume, "b2"], holdout_structures=[held_structure])
    assert all(held_volume not in t.volume_names and "b2" not in t.volume_names for t in train)
    assert all(t.structure != held_structure for t in train)
    assert any(t.structure == held_structure for t in val)
    generator = torch.Generator().manual_seed(0)
    for i in range(300):
        task = train[i % len(train)]
        ep = sample_episode(task, 6, 3, generator)
        assert ep.query_volume not in (held_volume, "b2")
        assert not {held_volume, "b2"} & set(ep.support_volume_names)
    blob_val = [t for t in val if t.group == "blobs"]
    assert blob_val and all(t.volumes[i].name == "b2" for t in blob_val for i in t.query_volumes)
    for ep in fixed_episodes(blob_val, 3, 6, 3, seed=1):
        assert ep.query_volume == "b2" and "b2" not in ep.support_volume_names


def test_split_matches_structure_names_across_spellings():
    vol = _blob(0, "a")
    train, val = split_tasks(build_tasks([vol], size=16), holdout_structures=["left blob"])
    assert not train and len(val) == 1 and val[0].structure == "left blob"


def test_support_comes_from_other_volumes_and_matches_query_position():
    tasks = build_tasks([_blob(i, f"b{i}") for i in range(3)], size=16, axes=("axial",))
    generator = torch.Generator().manual_seed(2)
    gaps = []
    for _ in range(30):
        ep = sample_episode(tasks[0], 4, 3, generator, position_prob=1.0, tau=0.02)
        assert ep.query_volume not in ep.support_volume_names
        assert ep.query_images.shape[0] == 3 and ep.support_images.shape[0] == 4
        gaps.append(float((ep.support_positions - ep.query_positions.mean()).abs().mean()))
    random_gaps = []
    for _ in range(30):
        ep = sample_episode(tasks[0], 4, 3, generator, position_prob=0.0)
        random_gaps.append(float((ep.support_positions - ep.query_positions.mean()).abs().mean()))
    assert np.mean(gaps) < 0.5 * np.mean(random_gaps)


def test_single_volume_task_draws_support_from_other_slices():
    task = build_tasks([_blob(0, "a")], size=16, axes=("axial",))[0]
    n = len(task.volumes[0])
    ep = sample_episode(task, 100, 3, torch.Generator().manual_seed(0))
    assert ep.support_images.shape[0] == n - 3  # every slab except the queries
    assert not set(ep.query_positions.tolist()) & set(ep.support_positions.tolist())


def test_user_volumes_and_bad_input():
    image, label = blob_volume(seed=3)
    label = label * 3
    vols = user_volumes([(Volume(image, np.eye(4)), Volume(label, np.eye(4), label=True))])
    assert vols[0].structures == {3: "label 3"}
    with pytest.raises(ValueError, match="no labelled volumes"):
        build_tasks([], size=16)
    with pytest.raises(ValueError, match="unique names"):
        build_tasks([_blob(0, "a"), _blob(1, "a")], size=16)
