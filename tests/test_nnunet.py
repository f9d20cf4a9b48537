"""nnU-Net v2 baseline: a dataset nnU-Net itself accepts, labels that round-trip, refusals before training,
and (slow) a real end-to-end run through nnU-Net's planning, training and inference on CPU."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import ORIENTATIONS
from fewshotcx import Volume, VolumeError, load_volume
from fewshotcx.baselines import nnunet

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _case(seed: int, affine=AFFINE, shape=(32, 32, 32)) -> tuple[Volume, Volume]:
    """A bright ball (label 5) and a dimmer small ball beside it (label 9) in noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = rng.uniform(13, 19, 3)
    ball = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 36
    small = ((x - c[0] + 9) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 9) & ~ball
    image = 100.0 * ball + 50.0 * small + rng.normal(0, 10, shape)
    labels = np.where(ball, 5, 0) + np.where(small, 9, 0)
    return Volume(image.astype(np.float32), affine), Volume(labels.astype(np.uint8), affine, label=True)


def _export(tmp_path, count=3, **kwargs):
    cases = [_case(i) for i in range(count)]
    return cases, nnunet.export_dataset([c[0] for c in cases], [c[1] for c in cases], tmp_path / "raw", 3, "balls",
                                        **kwargs)


def test_exported_dataset_passes_nnunets_own_integrity_check(tmp_path):
    _, folder = _export(tmp_path, label_names={5: "ball", 9: "small"})
    assert folder == tmp_path / "raw" / "Dataset003_balls"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"case_00{i}_0000.nii.gz" for i in range(3)]
    nnunet.verify(folder)  # raises on any problem nnU-Net would find
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "ball": 1, "small": 2} and dataset["numTraining"] == 3


def test_labels_are_remapped_to_consecutive_values_and_the_mapping_round_trips(tmp_path):
    cases, folder = _export(tmp_path)
    to_user = json.loads((folder / nnunet.LABELS_FILE).read_text())["nnunet_to_user"]
    assert to_user == {"1": 5, "2": 9}
    assert json.loads((folder / "dataset.json").read_text())["fewshotcx_label_values"] == to_user
    for i, (_, labels) in enumerate(cases):
        written = load_volume(folder / "labelsTr" / f"case_00{i}.nii.gz", label=True)
        assert set(np.unique(written.array)) == {0, 1, 2}
        back = np.array([0] + [to_user[str(k)] for k in (1, 2)])[written.array]
        assert np.array_equal(back, labels.array) and written.same_grid(labels)


def test_export_refuses_what_nnunet_would_reject(tmp_path):
    image, labels = _case(0)
    shifted = Volume(labels.array, AFFINE @ np.diag([1.0, 1.0, 2.0, 1.0]), label=True)
    with pytest.raises(VolumeError, match="grids differ"):
        nnunet.export_dataset([image], [shifted], tmp_path, 1, "x")
    soft = tmp_path / "soft.nii.gz"
    nib.save(nib.Nifti1Image(labels.array * 0.5, AFFINE), str(soft))
    with pytest.raises(VolumeError, match="non-integer"):
        nnunet.export_dataset([image], [soft], tmp_path, 1, "x")
    with pytest.raises(VolumeError, match="empty"):
        nnunet.export_dataset([image], [labels.with_array(np.zeros_like(labels.array))], tmp_path, 1, "x")
    with pytest.raises(ValueError, match="dataset_id"):
        nnunet.export_dataset([image], [labels], tmp_path, 1000, "x")
    with pytest.raises(ValueError, match="same non-zero number"):
        nnunet.export_dataset([image, image], [labels], tmp_path, 1, "x")
    assert not any(tmp_path.glob("Dataset*")) and not any(tmp_path.glob(".Dataset*"))
    nnunet.export_dataset([image], [labels], tmp_path, 1, "x")
    with pytest.raises(FileExistsError):
        nnunet.export_dataset([image], [labels], tmp_path, 1, "x")


def test_training_refusals_come_before_any_work(tmp_path):
    _, folder = _export(tmp_path)
    with pytest.raises(ValueError, match="at least 5 cases"):
        nnunet.train(folder, fold=0)
    with pytest.raises(ValueError, match="configuration"):
        nnunet.train(folder, configuration="3d_lowres")
    with pytest.raises(ValueError, match="not an nnU-Net raw dataset"):
        nnunet.train(tmp_path)
    assert not (tmp_path / "raw" / "nnUNet_work").exists()


def test_missing_nnunetv2_says_how_to_install(monkeypatch):
    monkeypatch.setattr(nnunet, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'fewshotcx\[nnunet\]'"):
        nnunet.train("anything")


@pytest.mark.slow
def test_end_to_end_train_and_predict_on_the_query_grid(tmp_path):
    _, folder = _export(tmp_path)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    model = nnunet.train(folder, "3d_fullres", epochs=2, iterations=10, device="cpu", work_dir=tmp_path / "work")
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # the dataset is untouched
    image, labels = _case(11, affine=ORIENTATIONS["LPS"])
    (pred,) = nnunet.predict(model, [image])
    assert pred.label and pred.same_grid(image)
    assert set(np.unique(pred.array)) <= {0, 5, 9} and (pred.array == 5).any()
    ball = labels.array == 5
    overlap = 2 * (ball & (pred.array == 5)).sum() / (ball.sum() + (pred.array == 5).sum())
    assert overlap > 0.3  # 20 iterations learn the bright ball; an untrained net scores ~0


@pytest.mark.slow
def test_failed_training_names_nnunets_log(tmp_path):
    _, folder = _export(tmp_path)
    with pytest.raises(nnunet.NnUNetError, match=r"see its log: .*\.log"):
        nnunet.train(folder, "2d", trainer="NoSuchTrainer", work_dir=tmp_path / "work")
    assert "NoSuchTrainer" in next((tmp_path / "work" / "logs").glob("*.log")).read_text()


def test_channel_follows_the_modality_so_mr_is_not_ct_normalised(tmp_path):
    """The export declared every dataset "CT" (nnU-Net's CT normalisation on MR)."""
    _, mr = _export(tmp_path / "mr")  # noise and balls at 0-150: no air, not CT
    assert json.loads((mr / "dataset.json").read_text())["channel_names"] == {"0": "MRI"}
    cases = [_case(i) for i in range(2)]
    ct_images = [c[0].with_array(np.where(c[0].array > 40, c[0].array, -1000.0).astype(np.float32)) for c in cases]
    ct = nnunet.export_dataset(ct_images, [c[1] for c in cases], tmp_path / "ct", 4, "ct")
    assert json.loads((ct / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    forced = nnunet.export_dataset([c[0] for c in cases], [c[1] for c in cases], tmp_path / "f", 5, "f", modality="ct")
    assert json.loads((forced / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
