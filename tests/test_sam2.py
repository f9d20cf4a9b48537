"""SAM 2 backend: randomly initialised sam2.1 Hiera-T built by sam2's own builder (a slimmed copy at 64²
for speed, plus the real architecture where the check is about the checkpoint/config match)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

import fewshotcx as fx  # noqa: E402
from conftest import ORIENTATIONS, blob_volume  # noqa: E402
from fewshotcx.backends import sam2 as sam2_backend  # noqa: E402
from fewshotcx.cli.main import main  # noqa: E402
from fewshotcx.io.volume import VolumeError  # noqa: E402
from fewshotcx.models.sam.sam2_models import build_video_predictor, import_sam2, resolve_config  # noqa: E402
from fewshotcx.models.sam.video import blend_passes, from_frame, to_frame  # noqa: E402

#: sam2.1_hiera_t with a slim trunk, one memory-attention layer and 64² frames (sam2's builder, hydra overrides).
SLIM = ["++model.image_size=64", "++model.image_encoder.trunk.embed_dim=8",
        "++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]", "++model.memory_attention.num_layers=1",
        "++model.memory_attention.layer.dim_feedforward=64"]
AFFINE = np.diag([1.0, 1.2, 2.0, 1.0])


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model = build_video_predictor("sam2.1_hiera_t", None, overrides=SLIM)
    # Random weights would mostly call the object absent, and sam2 then outputs a constant (-1024) mask:
    # bias the presence head so the masks are the decoder's own (memory-conditioned) output.
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(50.0)
    return model


def _segmenter(predictor, **kw):
    return fx.Segmenter(backend="sam2", model=predictor, device="cpu", modality="mr", progress=False, **kw)


def _case(seed=0):
    """A 20×16×12 textured volume with two structures (label values 2 and 5)."""
    image, blob = blob_volume((20, 16, 12), seed=seed, centre=(7, 8, 6), radius=4.0)
    label = blob.astype(np.uint8) * 2
    label[13:18, 4:9, 3:9] = 5
    image[label == 5] += 1.5
    return image, label


def _storages(image, label):
    """The same patient stored RAS, LPS and with the first two array axes swapped."""
    out = {"RAS": (image, label, AFFINE)}
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
    lps[:3, 3] = [(image.shape[0] - 1) * 1.0, (image.shape[1] - 1) * 1.2, 0]
    out["LPS"] = (image[::-1, ::-1].copy(), label[::-1, ::-1].copy(), lps)
    swap = AFFINE[:, [1, 0, 2, 3]]
    out["transposed"] = (image.transpose(1, 0, 2).copy(), label.transpose(1, 0, 2).copy(), swap)
    return out


def test_complete_lands_on_the_query_grid_in_every_storage_and_keeps_drawn_slices(predictor):
    image, label = _case()
    drawn = [3, 6, 9]
    canonical = {}
    for name, (img, lab, affine) in _storages(image, label).items():
        vol, lab_vol = fx.Volume(img, affine), fx.Volume(lab, affine, label=True)
        out = _segmenter(predictor).complete(vol, lab_vol, drawn)
        assert out.shape == img.shape and np.array_equal(out.affine, affine), name
        assert np.array_equal(out.array[..., drawn], lab[..., drawn]), name
        assert set(np.unique(out.array)) <= {0, 2, 5}
        assert not out.array[..., :3].any() and not out.array[..., 10:].any(), "outside the drawn extent"
        canonical[name] = out.canonical().array
    assert np.array_equal(canonical["RAS"], canonical["LPS"])
    assert np.array_equal(canonical["RAS"], canonical["transposed"])


def test_both_directions_run_over_the_drawn_extent(predictor, monkeypatch):
    passes = []
    real = sam2_backend.propagate

    def recording(pred, state, start, stop, batch, reverse=False):
        logits = real(pred, state, start, stop, batch, reverse)
        passes.append((reverse, sorted(logits)))
        return logits

    monkeypatch.setattr(sam2_backend, "propagate", recording)
    image, label = _case()
    _segmenter(predictor).complete(fx.Volume(image, AFFINE), fx.Volume(label, AFFINE, label=True), [2, 5, 9])
    assert passes == [(False, list(range(8))), (True, list(range(8)))]  # frames 0..7 = slices 2..9


def test_blend_weights_each_direction_by_distance_to_its_source():
    fwd = {z: torch.full((1, 2, 2), 1.0) for z in range(0, 5)}
    bwd = {z: torch.full((1, 2, 2), -1.0) for z in range(0, 5)}
    merged = blend_passes(fwd, bwd, prompted=[0, 4])
    assert [float(merged[z][0, 0, 0]) for z in range(5)] == [1.0, 0.5, 0.0, -0.5, 1.0]


def test_frame_orientation_round_trips_and_is_radiological():
    s = torch.arange(12.0).view(3, 4)  # (X, Y)
    f = to_frame(s)
    assert f.shape == (4, 3) and f[0, 0] == s[2, 3]  # top-left = most right, most anterior voxel
    assert torch.equal(from_frame(f), s)


def test_object_ids_come_back_as_their_label_values(predictor):
    image, label = _case()
    vol, lab = fx.Volume(image, AFFINE), fx.Volume(label, AFFINE, label=True)
    backend = _segmenter(predictor, offload_video_to_cpu=True, offload_state_to_cpu=True, encode_batch=3,
                         cached_frames=2).backend
    probs = backend.complete_volume(vol, lab, [4, 7], (2, 5), torch.as_tensor(image.clip(0, 1)))
    assert probs.shape == (2, *image.shape)
    for channel, value in enumerate((2, 5)):  # on a prompted slice each channel is its own structure's mask
        on = probs[channel, ..., 4][torch.as_tensor(label[..., 4] == value)].mean()
        off = probs[channel, ..., 4][torch.as_tensor(label[..., 4] != value)].mean()
        assert on > 0.5 > off


def test_a_mask_prompt_changes_the_prediction_on_its_neighbour(predictor):
    """Propagation carries information: same image, a different mask on slice 3 → a different slice 4."""
    image, label = _case()
    vol = fx.Volume(image, AFFINE)
    backend = _segmenter(predictor).backend
    other = label.copy()
    other[..., 3] = 0
    other[2:8, 2:8, 3] = 2
    normalised = torch.as_tensor(image.clip(0, 1))
    a = backend.complete_volume(vol, fx.Volume(label, AFFINE, label=True), [3, 8], (2, 5), normalised)
    b = backend.complete_volume(vol, fx.Volume(other, AFFINE, label=True), [3, 8], (2, 5), normalised)
    again = backend.complete_volume(vol, fx.Volume(label, AFFINE, label=True), [3, 8], (2, 5), normalised)
    assert torch.equal(a, again)  # deterministic: any difference below comes from the prompt on slice 3
    # random weights pass little through the memory bank, but it is there (float noise would be 0 here)
    assert (a[0, ..., 4] - b[0, ..., 4]).abs().max() > 1e-5
    assert torch.equal(a[..., 8], b[..., 8])  # the other drawn slice is its own prompt in both


def test_memory_as_context_prompts_support_frames_ahead_of_the_query(predictor, monkeypatch):
    prompted = []
    real = sam2_backend.add_masks

    def recording(pred, state, masks, obj_ids, batch):
        prompted.append((sorted(masks), state["num_frames"]))
        return real(pred, state, masks, obj_ids, batch)

    monkeypatch.setattr(sam2_backend, "add_masks", recording)
    image, label = _case()
    query, _ = _case(seed=3)
    seg = _segmenter(predictor, support_size=3, chunk=8)
    seg.fit([fx.Volume(image, AFFINE)], [fx.Volume(label, AFFINE, label=True)])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
    pred = seg.predict(fx.Volume(query, lps))
    assert pred.shape == query.shape and np.array_equal(pred.affine, lps)
    assert prompted == [([0, 1, 2], 3 + 8), ([0, 1, 2], 3 + 4)]  # 12 query slices in runs of 8 and 4
    proba_a = seg.predict_proba(fx.Volume(query, lps))
    moved = np.where(label == 2, 0, label) + 2 * np.roll(label == 2, 6, axis=1)  # structure 2 drawn elsewhere
    seg.fit([fx.Volume(image, AFFINE)], [fx.Volume(moved.astype(np.uint8), AFFINE, label=True)])
    proba_b = seg.predict_proba(fx.Volume(query, lps))
    assert not np.allclose(proba_a[2].array, proba_b[2].array, atol=1e-4)  # the support's masks reach the query
    assert np.array_equal(proba_a[5].array, proba_b[5].array)  # objects are tracked independently


def test_bad_inputs_are_one_line_errors(predictor, tmp_path, monkeypatch):
    image, label = _case()
    with pytest.raises(VolumeError, match="drawn"):
        _segmenter(predictor).complete(fx.Volume(image, AFFINE), fx.Volume(label[:, :, :10], AFFINE, label=True), [3])
    with pytest.raises(ValueError, match="no bundled weights"):
        fx.Segmenter(backend="sam2", device="cpu")
    with pytest.raises(ValueError, match="not a sam2 config"):
        resolve_config("sam3_hiera_z")
    assert resolve_config("sam2.1_hiera_b+")[0] == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="nope.pt"):
        build_video_predictor("sam2.1_hiera_t", missing)
    slim = tmp_path / "slim.pt"
    torch.save({"model": predictor.state_dict()}, slim)
    with pytest.raises(ValueError, match=r"slim\.pt does not match config='sam2.1_hiera_t'"):
        build_video_predictor("sam2.1_hiera_t", slim)  # the real Hiera-T: shapes differ from the slim copy
    monkeypatch.setitem(sys.modules, "sam2", None)
    with pytest.raises(ValueError, match=r"pip install fewshotcx\[sam2\]"):
        import_sam2()


def _write(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def test_cli_complete_maps_file_slices_to_canonical_ones(tmp_path, capsys):
    image, label = _case()
    flipped = AFFINE.copy()
    flipped[2, 2], flipped[2, 3] = -2.0, 22.0  # stored superior-first: file slice k = canonical 11-k
    img, lab = image[..., ::-1].copy(), label[..., ::-1].copy()
    args = ["complete", "--image", _write(tmp_path / "img.nii.gz", img, flipped),
            "--drawn", _write(tmp_path / "drawn.nii.gz", lab, flipped), "--slices", "2,5,8",
            "--out", str(tmp_path / "out.nii.gz"), "--device", "cpu", "--modality", "mr"]
    assert main(args) == 0
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert np.allclose(out.affine, flipped) and out.shape == img.shape
    written = np.asarray(out.dataobj)
    assert np.array_equal(written[..., [2, 5, 8]], lab[..., [2, 5, 8]])
    assert not written[..., :2].any() and not written[..., 9:].any()  # drawn extent in the file's numbering
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    wrong = _write(tmp_path / "wrong.nii.gz", lab[:, :, :8].copy(), flipped)
    assert main([*args[:4], wrong, *args[5:], "--overwrite"]) == 2
    assert "--drawn" in capsys.readouterr().err and (tmp_path / "out.nii.gz").exists()
    sideways = AFFINE[:, [0, 2, 1, 3]]  # third array axis anterior-posterior
    args[2] = _write(tmp_path / "side.nii.gz", image.transpose(0, 2, 1).copy(), sideways)
    args[4] = _write(tmp_path / "side_drawn.nii.gz", label.transpose(0, 2, 1).copy(), sideways)
    args[-5] = str(tmp_path / "side_out.nii.gz")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "anterior-posterior" in err and len(err.splitlines()) == 1
    assert main(["predict", "--image", args[2], "--support", f"{args[2]}:{args[4]}", "--out",
                 str(tmp_path / "p.nii.gz"), "--backend", "sam2"]) == 2
    assert "--config" in capsys.readouterr().err


def test_cost_benchmark_measures_a_slim_model():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import sam2_cost

    row = sam2_cost.measure("sam2.1_hiera_t", frames=4, overrides=SLIM)
    assert row["image_size"] == 64 and row["encoded_frames"] == 4  # every frame encoded once, cached for pass 2
    assert row["encode_s_per_frame"] > 0 and row["complete_s_per_slice"] > 0 and row["peak_rss_mib"] > 0
