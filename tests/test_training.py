"""Episodic training: it learns, resumes exactly, fine-tunes into a checkpoint the Segmenter loads."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, UNREGISTERED, blob_volume
from fewshotcx import Segmenter, Volume
from fewshotcx.training import loop as training
from fewshotcx.training.loop import TrainConfig, episode_loss, export_checkpoint, finetune, train
from fewshotcx.cli.train import register as register_cli
from fewshotcx.models.weights import load_checkpoint, load_universeg

TINY = dict(data=["synthetic"], width=8, size=32, synthetic_families=8, synthetic_val_families=2,
            synthetic_shape=(32, 32, 6), synthetic_labels=4, support_size=(3, 6), queries=3, episodes_per_step=1,
            axes=["axial"], lr=3e-3, warmup=5, val_episodes=2, progress=False)


def _rows(path):
    with open(path.with_suffix(".csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_lowers_the_loss_and_raises_held_out_dice(tmp_path):
    out = train(TrainConfig(**TINY, steps=70, val_every=35, out=str(tmp_path / "run.pt")))
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [0, 35, 70]
    first, last = rows[1], rows[2]
    assert float(last["train_loss"]) < float(first["train_loss"])
    # validation = synthetic families never trained on; step 0 is the initial (random) model
    assert float(last["val_dice"]) > float(rows[0]["val_dice"]) + 0.1
    assert float(rows[-1]["seconds"]) >= 0 and rows[0]["val_dice_synthetic"] == rows[0]["val_dice"]


def test_resume_continues_exactly(tmp_path, monkeypatch):
    config = TrainConfig(**TINY, steps=6, val_every=0, checkpoint_every=3, out=str(tmp_path / "straight.pt"))
    straight = load_checkpoint(train(config))[0]

    class Interrupted(Exception):
        pass

    real_save = training.save_training_state

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Interrupted  # the machine "dies" right after the step-3 checkpoint

    interrupted = replace(config, out=str(tmp_path / "resumed.pt"))
    monkeypatch.setattr(training, "save_training_state", save_then_stop)
    with pytest.raises(Interrupted):
        train(interrupted)
    monkeypatch.setattr(training, "save_training_state", real_save)
    assert load_checkpoint(interrupted.out)[1]["extra"]["training"]["step"] == 3
    halfway = load_checkpoint(interrupted.out)[0]
    assert not all(torch.equal(straight[k], halfway[k]) for k in straight)
    resumed = load_checkpoint(train(replace(interrupted, resume=True)))[0]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_refuses_a_different_run(tmp_path):
    config = TrainConfig(**TINY, steps=1, val_every=0, out=str(tmp_path / "a.pt"))
    train(config)
    with pytest.raises(ValueError, match="setting 'lr' differs"):
        train(replace(config, lr=1e-2, resume=True))
    with pytest.raises(ValueError, match="does not exist"):
        train(replace(config, out=str(tmp_path / "absent.pt"), resume=True))


def _pair(seed, affine=ORIENTATIONS["RAS"]):
    image, label = blob_volume(shape=(24, 20, 12), seed=seed)
    return Volume(image, affine), Volume(label, affine, label=True)


@UNREGISTERED
def test_finetuned_checkpoint_round_trips_through_segmenter(tmp_path):
    init = train(TrainConfig(**TINY, steps=0, val_every=0, out=str(tmp_path / "init.pt")))
    tuned = finetune(init, [_pair(1), _pair(2)], steps=3, context=1, out=tmp_path / "tuned.pt", support_size=(2, 4),
                     axes=["axial"], progress=False)
    model, meta = load_universeg(tuned, return_metadata=True)
    assert model.in_channels == 3 and meta["slice_size"] == 32 and meta["context"] == 1  # inflated to 2.5D
    before = load_checkpoint(init)[0]["enc_blocks.1.cross.cross_conv.weight"]
    assert not torch.equal(model.state_dict()["enc_blocks.1.cross.cross_conv.weight"], before)  # it trained
    seg = Segmenter(weights=str(tuned), device="cpu", support_size=4, progress=False)
    assert seg.backend.context == 1 and seg.backend.slice_size == 32
    query = _pair(3, ORIENTATIONS["LPS"])[0]
    mask = seg.fit(*map(list, zip(_pair(1), _pair(2)))).predict(query)
    assert mask.shape == query.shape and np.allclose(mask.affine, query.affine)


def test_export_is_half_precision_and_loads_as_float32(tmp_path):
    src = train(TrainConfig(**TINY, steps=2, val_every=2, out=str(tmp_path / "run.pt")))
    dst = export_checkpoint(src, tmp_path / "small.pt")
    state, meta = load_checkpoint(dst)
    assert all(v.dtype == torch.float16 for v in state.values()) and "optimizer" not in meta["extra"]
    assert dst.stat().st_size < src.stat().st_size / 2
    full, small = load_universeg(src), load_universeg(dst)
    for (name, a), b in zip(full.state_dict().items(), small.state_dict().values()):
        assert b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
    summary = json.loads(dst.with_suffix(".json").read_text())
    assert summary["slice_size"] == 32 and summary["dtype"] == "float16"
    assert [row["step"] for row in summary["validation_curve"]] == ["0", "2"]


def test_episode_loss_prefers_the_right_mask():
    labels = torch.zeros(2, 1, 8, 8)
    labels[..., 2:6, 2:6] = 1
    good, bad = episode_loss(20 * (2 * labels - 1), labels), episode_loss(-20 * (2 * labels - 1), labels)
    assert good < 0.01 and bad > 1.5


def _parse(argv):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_maps_arguments_to_the_config(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # --out o.pt lands here; the CLI checks that --images/--labels exist
    for name in ("a.nii", "b.nii"):
        (tmp_path / name).touch()
    calls = []
    monkeypatch.setattr(training, "train", lambda config: calls.append(config) or "x.pt")
    args = _parse(["train", "--data", "synthetic", "--data", "pyradiomics", "--support-size", "4:12", "--width", "16",
                   "--size", "96", "--context", "1", "--steps", "7", "--holdout-volume", "pyradiomics/brain2",
                   "--out", "o.pt", "--resume", "--seed", "3", "--device", "cpu"])
    args.func(args)
    c = calls[-1]
    assert (c.data, c.support_size, c.width, c.size, c.context, c.steps) == (["synthetic", "pyradiomics"], (4, 12),
                                                                             16, 96, 1, 7)
    assert c.holdout_volumes == ["pyradiomics/brain2"] and c.resume and c.seed == 3 and c.out == "o.pt"
    args = _parse(["train", "--images", "a.nii", "--labels", "b.nii"])
    args.func(args)
    assert calls[-1].data == [] and calls[-1].images == ["a.nii"]  # own volumes only: no default synthetic data


@pytest.mark.parametrize("argv, message", [
    (["--images", "a.nii"], "in pairs"),
    (["--support-size", "5:2"], "support_size"),
    (["--size", "60"], "multiple of 8"),
])
def test_cli_rejects_bad_input_in_one_line(argv, message):
    args = _parse(["train", *argv])
    with pytest.raises(ValueError, match=message) as err:
        args.func(args)
    assert "\n" not in str(err.value)
