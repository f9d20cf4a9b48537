"""ContourSession's boxes, clicks and scribbles: starting contour, effect, validation, undo, accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_session import UnsureBackend, _tiny_universeg_segmenter
from fewshotcx import ContourSession, Segmenter, Volume

SHAPE = (40, 36, 20)
#: Own layouts whose third axis runs superior-inferior: RAS, and LPS stored superior-first.
AFFINES = {"RAS": np.diag([1.0, 1.0, 2.0, 1.0]), "LPS-superior-first": np.diag([-1.0, -1.0, -2.0, 1.0])}


def ball_case(seed: int = 0, centre=(20, 17, 10), radius: float = 9.0):
    """A noisy CT-like image (HU) with a brighter ellipsoid (2 mm slices), and the ellipsoid."""
    rng = np.random.default_rng(seed)
    x, y, z = np.mgrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    ball = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + ((z - centre[2]) * 2) ** 2 < radius ** 2
    image = np.where(ball, 40.0, -100.0) + rng.normal(0, 10, SHAPE)
    return image.astype(np.float32), ball


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def blank(affine=AFFINES["RAS"], **kwargs) -> tuple[ContourSession, np.ndarray]:
    """An empty session on :func:`ball_case` (HU, but no air: ``modality="ct"`` says so)."""
    image, ball = ball_case()
    return ContourSession(Volume(image, affine), Segmenter(backend=UnsureBackend(), progress=False),
                          **{"modality": "ct", **kwargs}), ball


def history(s: ContourSession) -> list:
    return [(step.key, step.packed, step.state) for step in s._history._steps]


@pytest.mark.parametrize("layout", sorted(AFFINES))
def test_a_box_from_blank_segments_the_structure_in_the_image_s_own_voxel_order(layout):
    s, ball = blank(AFFINES[layout])
    lo, hi = np.argwhere(ball).min(axis=0), np.argwhere(ball).max(axis=0)
    s.add_box(tuple(lo), tuple(hi))
    result = s.result().array
    assert dice(result == 1, ball) > 0.9
    assert not result[:lo[0]].any() and not result[:, :, hi[2] + 1:].any()  # nothing outside the box


def test_a_2d_box_segments_its_slice_and_a_3d_box_clears_the_structure_outside_it():
    s, ball = blank()
    s.add_box((10, 7, 10), (30, 27, 10))
    result = s.result().array == 1
    assert dice(result[..., 10], ball[..., 10]) > 0.9 and not result[..., :10].any() and not result[..., 11:].any()
    s.add_point((20, 17, 12))  # a click on another slice is not held to the 2D box
    assert s.result().array[..., 12].sum() > 20
    s.add_box((12, 9, 6), (28, 25, 14))  # a smaller 3D box: nothing outside it, on any slice
    result = s.result().array == 1
    outside = np.ones(SHAPE, bool)
    outside[12:29, 9:26, 6:15] = False
    outside[20, 17, 12] = False  # the positive click stays (the box grows to hold it)
    assert result.any() and not result[outside].any()


def test_a_click_changes_the_contour_around_it_in_3d_and_ends_on_its_side():
    s, ball = blank()
    s.add_box((10, 7, 5), (30, 27, 15))
    before = s.result().array == 1
    s.add_point((20, 17, 10), positive=False)  # inside: the click's voxel goes, whatever the image says
    after = s.result().array == 1
    assert not after[20, 17, 10] and before[20, 17, 10]
    s.undo()
    s.add_point((2, 2, 10), positive=True)  # far outside the box: the voxel joins the structure
    assert s.result().array[2, 2, 10] == 1
    s.undo()
    # a positive click on a missed region grows it on the neighbouring slices too
    image, ball = ball_case()
    s = ContourSession(Volume(image, AFFINES["RAS"]), Segmenter(backend=UnsureBackend(), progress=False))
    s.add_point((20, 17, 10))
    grown = s.result().array == 1
    assert grown[..., 9].sum() > 20 and grown[..., 11].sum() > 20 and dice(grown, ball) > 0.5


def test_scribbled_voxels_end_on_their_side():
    s, ball = blank()
    s.add_box((10, 7, 5), (30, 27, 15))
    scribble = np.zeros(SHAPE, bool)
    scribble[15:25, 17, 10] = True
    s.add_scribble(scribble, positive=False)
    assert not (s.result().array[scribble] == 1).any()
    s.add_scribble(scribble, positive=True)
    assert (s.result().array[scribble] == 1).all()


def test_each_interaction_is_one_undo_step_restoring_the_exact_previous_result():
    s, ball = blank(classes=(1, 2))
    s.add_box((10, 7, 5), (30, 27, 15))
    results = [s.result().array.copy()]
    s.add_point((20, 17, 10), positive=False)
    results.append(s.result().array.copy())
    mask = np.zeros(SHAPE[:2], np.int64)
    mask[5:9, 5:9] = 2
    s.draw(3, mask)
    results.append(s.result().array.copy())
    s.add_point((7, 7, 4), label=2)
    assert s.result().array[7, 7, 4] == 2
    for expected in reversed(results):
        s.undo()
        assert np.array_equal(s.result().array, expected)
    s.undo()
    assert not s.prompts and not s.drawn
    with pytest.raises(ValueError, match="nothing to undo"):
        s.undo()


def test_the_memo_of_results_stays_bounded_and_undo_past_it_replays_exactly(monkeypatch):
    from fewshotcx.interactive import layer

    monkeypatch.setattr(layer, "MEMO_STEPS", 3)
    s, _ = blank()
    s.add_box((10, 7, 5), (30, 27, 15))
    results = [s.result().array.copy()]
    for n in range(7):
        s.add_point((12 + 2 * n, 10 + n, 6 + n), positive=n % 3 == 0)
        results.append(s.result().array.copy())
    assert len(s._layer._memo) == 3
    for expected in reversed(results[:-1]):
        s.undo()
        assert np.array_equal(s.result().array, expected)


@pytest.mark.parametrize("call, match", [
    (lambda s: s.add_box((0, 0, 0), (40, 10, 10)), "outside the image"),
    (lambda s: s.add_box((-1, 0, 0), (10, 10, 10)), "outside the image"),
    (lambda s: s.add_box((10, 10, 10), (5, 20, 12)), "lo .* must be <= hi"),
    (lambda s: s.add_box((1, 2), (5, 6, 7)), "3 integer"),
    (lambda s: s.add_box((1.5, 2, 3), (5, 6, 7)), "3 integer"),
    (lambda s: s.add_point((0, 0, 20)), "outside the image"),
    (lambda s: s.add_point((1, 1, 1), positive="yes"), "True or False"),
    (lambda s: s.add_point((1, 1, 1), label=3), "not one of this session's classes"),
    (lambda s: s.add_point((1, 1, 1), label=0), "positive integer"),
    (lambda s: s.add_scribble(np.ones((40, 36, 19), bool)), "shape"),
    (lambda s: s.add_scribble(np.ones(SHAPE, np.uint8)), "boolean"),
    (lambda s: s.add_scribble(np.zeros(SHAPE, bool)), "empty"),
])
def test_bad_interactions_are_one_line_errors_that_change_nothing(call, match):
    s, _ = blank(classes=(1, 2))
    s.add_box((10, 7, 5), (30, 27, 15))
    before, steps, prompts = s.result().array.copy(), history(s), s.prompts
    with pytest.raises(ValueError, match=match) as error:
        call(s)
    assert "\n" not in str(error.value)
    assert np.array_equal(s.result().array, before) and history(s) == steps and s.prompts == prompts


def test_the_first_prompt_fixes_the_label_of_an_undeclared_session():
    s, _ = blank()
    s.add_point((20, 17, 10), label=2)
    assert s.declared == (2,)
    with pytest.raises(ValueError, match="classes"):
        s.add_point((20, 17, 11), label=1)
    s.undo()
    assert s.declared is None


def test_a_fitted_segmenter_gives_the_starting_contour_and_accepted_contours_become_support():
    image, ball = ball_case()
    vol = Volume(image, AFFINES["LPS-superior-first"])
    seg = _tiny_universeg_segmenter().fit([vol], [Volume(ball.astype(np.uint8), vol.affine, label=True)])
    other = Volume(ball_case(seed=1, centre=(18, 19, 9))[0], vol.affine)
    s = ContourSession(other, seg)
    assert np.array_equal(s.result().array, seg.predict(other).array)  # exactly, before any interaction
    assert s.declared == (1,)
    s.add_point((18, 19, 9))
    assert s.result().array[18, 19, 9] == 1
    accepted = s.accept()
    assert accepted.label and accepted.same_grid(other)
    before, shown = seg.predict(vol).array, s.result().array
    seg.add(other, accepted)
    assert np.array_equal(s.result().array, shown)  # an open session keeps the model it started with
    assert len(seg.support.images) == 2
    assert np.array_equal(seg.support.labels[-1].array, accepted.canonical().array)
    nxt = ContourSession(vol, seg)
    assert np.array_equal(nxt.result().array, seg.predict(vol).array)
    assert not np.array_equal(nxt.result().array, before)  # the first pass conditioned on the accepted contour


def test_session_files_keep_the_interactions_in_the_image_s_own_voxels(tmp_path):
    """Version 3: a saved session replays its boxes, clicks and scribbles to the same result, also when
    loaded onto the same image in another layout; a version-2 file (no interactions) still loads."""
    import json

    s, _ = blank(AFFINES["LPS-superior-first"], classes=(1, 2))
    s.add_box((10, 7, 5), (30, 27, 15))
    s.add_point((20, 17, 10), positive=False)
    scribble = np.zeros(SHAPE, bool)
    scribble[3:6, 4, 2] = True
    s.add_scribble(scribble, label=2)
    mask = np.zeros(SHAPE[:2], np.int64)
    mask[12:20, 12:20] = 1
    s.draw(7, mask)
    path = s.save(tmp_path / "s.npz")
    seg = Segmenter(backend=UnsureBackend(), progress=False)
    loaded = ContourSession.load(path, segmenter=seg)
    assert [(p.kind, p.label, p.positive) for p in loaded.prompts] == [(p.kind, p.label, p.positive) for p in s.prompts]
    assert all(np.array_equal(a.voxels, b.voxels) for a, b in zip(loaded.prompts, s.prompts))
    assert np.array_equal(loaded.result().array, s.result().array)
    with pytest.raises(ValueError, match="nothing to undo"):
        loaded.undo()
    canonical = s.original.canonical()  # every axis reversed
    other = ContourSession.load(path, image=Volume(canonical.array, canonical.affine), segmenter=seg)
    assert np.array_equal(other.result().array, s.result().array[::-1, ::-1, ::-1])
    with np.load(path) as data:  # the same file as version 2 wrote it: no prompts
        meta = json.loads(str(data["meta"]))
        arrays = {k: data[k] for k in ("masks", "image", "affine")}
    meta.update(version=2)
    del meta["prompts"]
    np.savez_compressed(tmp_path / "v2.npz", meta=np.array(json.dumps(meta)), **arrays)
    old = ContourSession.load(tmp_path / "v2.npz", segmenter=seg)
    assert old.drawn == [7] and not old.prompts and old.declared == (1, 2)


STS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mirp" / "sts_images_flat" / "nifti"


def protocol_click(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[tuple[int, int, int], bool]:
    """The CVPR 2025 interactive protocol's next click: the maximum of the distance transform of the
    largest 26-connected error region; positive where the reference is missed."""
    from scipy import ndimage

    pieces, _ = ndimage.label(pred ^ ref, np.ones((3, 3, 3)))
    largest = np.pad(pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1, 1)
    voxel = np.unravel_index(np.argmax(ndimage.distance_transform_edt(largest, sampling=spacing)), largest.shape)
    voxel = tuple(int(v) - 1 for v in voxel)
    return voxel, bool(ref[voxel])


@pytest.mark.skipif(not (STS / "STS_002_CT_image.nii.gz").is_file(),
                    reason="needs ../shared/data (STS_002 CT, development data)")
def test_box_and_clicks_on_a_real_sarcoma_ct():
    """STS_002's GTV (not a structure the method was tuned on): a box from the reference's bounding
    box, then three protocol clicks, each on its side, none costing more than a few seconds."""
    import time

    from fewshotcx import load_volume

    image = load_volume(STS / "STS_002_CT_image.nii.gz", canonical=False)
    ref = load_volume(STS / "STS_002_CT_mask.nii.gz", canonical=False, label=True).array > 0
    s = ContourSession(image, Segmenter(backend=UnsureBackend(), progress=False))
    voxels = np.argwhere(ref)
    s.add_box(tuple(voxels.min(axis=0)), tuple(voxels.max(axis=0)))
    scores = [dice(s.result().array == 1, ref)]
    for _ in range(3):
        voxel, positive = protocol_click(s.result().array == 1, ref, image.spacing)
        start = time.perf_counter()
        s.add_point(voxel, positive=positive)
        pred = s.result().array == 1
        assert time.perf_counter() - start < 10 and pred[voxel] == positive
        scores.append(dice(pred, ref))
    assert scores[0] > 0.75 and scores[-1] >= scores[0]


def block_mr(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like image in arbitrary units (tissue 300, a rectangular block 800, noise 30, all times
    ``scale``) and the block: its corners lie outside the box's inscribed ellipsoid, so only the
    image's edges and intensities find them."""
    rng = np.random.default_rng(3)
    shape = np.zeros(SHAPE, bool)
    shape[8:32, 8:28, 4:16] = True
    image = np.where(shape, 800.0, 300.0) + rng.normal(0, 30, SHAPE)
    return (image * scale).astype(np.float32), shape


@pytest.mark.parametrize("scale", [0.01, 1.0, 10.0])
def test_an_mr_image_s_arbitrary_intensity_scale_does_not_change_the_refinement(scale):
    image, shape = block_mr(scale)
    lo, hi = np.argwhere(shape).min(axis=0) - 2, np.argwhere(shape).max(axis=0) + 2  # a loose box
    results = []
    for factor in (1.0, 37.0):
        s = ContourSession(Volume(image * np.float32(factor), AFFINES["RAS"]),
                           Segmenter(backend=UnsureBackend(), progress=False), modality="mr")
        s.add_box(tuple(lo), tuple(hi))
        s.add_point((9, 9, 5))  # a corner
        results.append(s.result().array == 1)
    assert np.array_equal(results[0], results[1])  # without the units, edges vanish or are everywhere
    assert dice(results[0], shape) > 0.75


@pytest.mark.parametrize("contrast", [50.0, 0.0])
def test_a_negative_click_in_a_spill_keeps_the_structure_beyond_it(contrast):
    """A small structure and a spill of the same tissue beside it, weak or no edges (MR-like): the
    negative click at the spill's deepest point may not empty the structure (``refine._held``);
    without the hold, the walker (no positive seed holds the structure) takes part of it or all."""
    from fewshotcx.interactive.prompts import Prompt
    from fewshotcx.interactive.refine import Settings, refine

    x, y, z = np.mgrid[:40, :40, :24]
    ball = lambda cx, r: (x - cx) ** 2 + (y - 20) ** 2 + ((z - 12) * 2) ** 2 < r ** 2  # noqa: E731
    structure = ball(17, 4.0)
    spill = ball(23, 4.0) & ~structure
    image = (np.where(structure | spill, contrast, 0.0) + np.random.default_rng(0).normal(0, 20, x.shape))
    click = Prompt("point", 1, False, np.array([[25, 20, 12]]))  # the spill's deepest voxel
    kept = {}
    for name, settings in (("held", Settings()), ("unheld", Settings(hold=np.inf))):
        out = refine(image.astype(np.float32), (1.0, 1.0, 2.0), (structure | spill).astype(np.uint8), [click],
                     settings=settings) == 1
        kept[name] = (out & structure).sum() / structure.sum()
        assert (out & spill).sum() < spill.sum()  # the click removes some of the spill either way
    assert kept["held"] > 0.7 and kept["unheld"] < kept["held"] - 0.2


def test_a_session_refines_with_the_constants_it_is_given():
    """``refinement=``: a region of ±4 mm around a click instead of ±30 mm bounds what the click grows."""
    from fewshotcx.interactive import Settings

    image, ball = ball_case()
    grown = {}
    for reach in (30.0, 4.0):
        s = ContourSession(Volume(image, AFFINES["RAS"]), Segmenter(backend=UnsureBackend(), progress=False),
                           modality="ct", refinement=Settings(reach_mm=reach))
        s.add_point((20, 17, 10))
        grown[reach] = s.result().array == 1
    assert dice(grown[30.0], ball) > 0.5
    region = np.zeros(SHAPE, bool)
    region[16:25, 13:22, 8:13] = True  # ±4 mm: 4 voxels in-plane (1 mm), 2 slices (2 mm)
    assert grown[4.0].any() and not grown[4.0][~region].any() and grown[30.0][~region].any()


def test_a_negative_click_only_removes_and_a_positive_click_only_adds():
    """``Settings.one_way``: a contour shifted off a bright ball (a miss on one side, a spill on the
    other). The negative click in the spill removes it and adds nothing; the positive click in the miss
    adds and removes nothing. Two-way (``one_way=False``), the same negative click also moves the far
    boundary: on edges this strong that helps (the trade ``benchmarks/interactive_dev.py`` measures on
    real MR and CT, where it hurt more often than it helped)."""
    from scipy import ndimage

    from fewshotcx.interactive.prompts import Prompt
    from fewshotcx.interactive.refine import Settings, refine

    x, y, z = np.mgrid[:40, :40, :24]
    ball = lambda cx: (x - cx) ** 2 + (y - 20) ** 2 + ((z - 12) * 2) ** 2 < 36  # noqa: E731
    structure, current = ball(18), ball(22)
    image = (np.where(structure, 60.0, -60.0) + np.random.default_rng(0).normal(0, 15, x.shape)).astype(np.float32)
    deepest = lambda m: np.unravel_index(np.argmax(ndimage.distance_transform_edt(m)), m.shape)  # noqa: E731
    clicks = {False: deepest(current & ~structure), True: deepest(structure & ~current)}
    out = {}
    for one_way in (True, False):
        for positive, voxel in clicks.items():
            result = refine(image, (1.0, 1.0, 2.0), current.astype(np.uint8),
                            [Prompt("point", 1, positive, np.array([voxel]))], settings=Settings(one_way=one_way)) == 1
            assert result[voxel] == positive
            out[one_way, positive] = result
    assert not (out[True, False] & ~current).any() and (current & ~out[True, False]).sum() > 100
    assert not (current & ~out[True, True]).any() and (out[True, True] & ~current).sum() > 100
    assert (out[False, False] & ~current).sum() > 100  # two-way, the negative click grew the far side
    assert dice(out[False, False], structure) > dice(out[True, False], structure) + 0.2


def test_a_fitted_atlas_segmenter_gives_the_starting_contour():
    """Any fitted backend starts a session (here the multi-atlas one, a volume backend, on Colin27 at
    4 mm with its left hemisphere as the atlas): the first result is its prediction and prompts refine
    it. Completing or suggesting drawn slices needs a slab backend: an unfitted atlas session, or
    ``suggest`` on a fitted one, is one clear error."""
    from conftest import cached_colin27

    case = cached_colin27(downsample=4.0)
    hemisphere = case.labels.with_array(((case.labels.array > 0) & (case.labels.array % 2 == 1)).astype(np.uint8))
    atlas = Segmenter(backend="atlas", registration="rigid", device="cpu", progress=False)
    with pytest.raises(ValueError, match="slab backend"):
        ContourSession(case.image, atlas)
    atlas.fit([case.image], [hemisphere])
    s = ContourSession(case.image, atlas)
    assert not s.completes_slices
    start = s.result().array
    assert np.array_equal(start, atlas.predict(case.image).array) and dice(start == 1, hemisphere.array == 1) > 0.95
    inside, outside = (np.argwhere(start == 1)[0], np.argwhere(start == 0)[0])
    s.add_point(tuple(inside), positive=False)
    s.add_point(tuple(outside), positive=True)
    after = s.result().array
    assert after[tuple(inside)] == 0 and after[tuple(outside)] == 1
    s.draw(5, hemisphere.array[..., 5].astype(np.int64))
    with pytest.raises(ValueError, match="needs a slab backend"):
        s.suggest()
