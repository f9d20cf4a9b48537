"""The contouring loop's interactions over ``fewshotcx serve``: box, point, scribble and accept through
``RemoteSession`` equal the same calls on a local ``ContourSession`` (blank, and started from a fitted
segmenter, as ``fewshotcx serve --support`` gives); hostile bodies are one-line 4xx answers that
leave the session as it was; ``--support`` fits the server's model once."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from servekit import SHAPE, call, disc, error_detail, fitted_segmenter, serving, tiny_segmenter, write_image  # noqa: E402

from fewshotcx import ContourSession, Volume, load_volume, save_volume  # noqa: E402
from fewshotcx.client import RemoteError, RemoteSession  # noqa: E402
from fewshotcx.server import SessionStore  # noqa: E402
from fewshotcx.server.prompts import MAX_SCRIBBLE_VOXELS, SCRIBBLE_BODY_BYTES, scribble_body  # noqa: E402

XY = SHAPE[:2]


def _interactions(session) -> None:
    """The same loop for a local and a remote session (own voxels of a file stored "PLI")."""
    session.add_box((8, 6, 5), (16, 14, 5))
    session.add_point((12, 10, 6), positive=True)
    session.add_point((2, 3, 6), positive=False)
    scribble = np.zeros(SHAPE, dtype=bool)
    scribble[10:14, 9:11, 7] = True
    session.add_scribble(scribble, positive=True)
    session.add_scribble(np.roll(scribble, 6, axis=0), positive=False)
    session.draw(3, disc((12, 10), 4, XY))
    session.add_point((12, 10, 9), positive=True)  # a mistake ...
    session.undo()                                  # ... taken back


@pytest.mark.parametrize("make", [tiny_segmenter, fitted_segmenter], ids=["blank", "fitted"])
def test_remote_interactions_and_accept_equal_the_local_session(tmp_path, make):
    path = write_image(tmp_path, orientation="PLI")  # own voxels are not the canonical array's
    local = ContourSession(path, make())
    with serving(SessionStore(make())) as url:
        remote = RemoteSession(url, path)
        if make is fitted_segmenter:  # both start from the segmenter's prediction
            assert np.array_equal(remote.result().array, local.result().array) and local.result().array.any()
        for session in (local, remote):
            _interactions(session)
        ours, theirs = remote.result(), local.result()
        assert ours.same_grid(theirs) and np.array_equal(ours.array, theirs.array) and ours.array.any()
        accepted, expected = remote.accept(), local.accept()
        assert accepted.same_grid(expected) and np.array_equal(accepted.array, expected.array)
        assert accepted.same_grid(load_volume(path, canonical=False))


def _post(url: str, route: str, body, **headers) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, answer = call(url + route, "POST", data, {"Content-Type": "application/json", **headers})
    return status, answer


BAD = [
    ("box", b"not json", "JSON"),
    ("box", [1, 2, 3], "JSON object"),
    ("box", {"lo": [0, 0, 0]}, "missing field 'hi'"),
    ("box", {"lo": [0, 0, 0], "hi": [1, 1, 1], "colour": 1}, "unexpected field 'colour'"),
    ("box", {"lo": [0, 0, 0], "hi": [24, 1, 1]}, "inside the image's own shape 24x20x12"),
    ("box", {"lo": [-1, 0, 0], "hi": [1, 1, 1]}, "'lo' must be"),
    ("box", {"lo": [0, 0, 0], "hi": [1.0, 1, 1]}, "'hi' must be"),
    ("box", {"lo": [0, 0, 0], "hi": [True, 1, 1]}, "'hi' must be"),
    ("box", {"lo": [0, 0, 0], "hi": [1, 1]}, "'hi' must be"),
    ("box", {"lo": [5, 0, 0], "hi": [1, 1, 1]}, "lo <= hi"),
    ("box", {"lo": [0, 0, 0], "hi": [1, 1, 1], "label": 0}, "'label'"),
    ("box", {"lo": [0, 0, 0], "hi": [1, 1, 1], "label": 256}, "'label'"),
    ("point", {"ijk": [1, 1, 12]}, "'ijk' must be"),
    ("point", {"ijk": [1, 1, 1], "positive": "yes"}, "'positive'"),
    ("point", {"ijk": "1,1,1"}, "'ijk' must be"),
    ("scribble", {"voxels": []}, "1 to"),
    ("scribble", {"voxels": [[1, 1, 1], [1, 1, 99]]}, "'voxels[]' must be"),
    ("scribble", {"voxels": [[-1, -1, -1]]}, "'voxels[]' must be"),  # never indexes from the end
    ("scribble", {"voxels": {"i": 1}}, "list"),
    ("scribble", {"voxels": [[0, 0, 0]] * (MAX_SCRIBBLE_VOXELS + 1)}, f"1 to {MAX_SCRIBBLE_VOXELS}"),
    ("scribble", b"[" * 100_000, "JSON"),  # nesting too deep for the parser: still one line
]


def test_hostile_interaction_bodies_are_one_line_400s_and_change_nothing(tmp_path):
    path = write_image(tmp_path)
    with serving(SessionStore(tiny_segmenter())) as url:
        session = RemoteSession(url, path)
        session.draw(3, disc((12, 10), 4, XY))
        session.add_point((12, 10, 5))
        before = session.result().array
        route = f"/sessions/{session.session_id}"
        for kind, body, message in BAD:
            status, answer = _post(url, f"{route}/{kind}", body)
            assert status == 400 and message in error_detail(answer), (kind, body if len(str(body)) < 80 else "...", answer)
        # a body declared beyond the limit is refused before it is read (413), a wrong key or another site's page too
        status, answer = _post(url, f"{route}/scribble", b"{}", **{"Content-Length": str(SCRIBBLE_BODY_BYTES + 1)})
        assert status == 413 and "limit" in error_detail(answer)
        status, _ = _post(url, f"{route}/point", {"ijk": [1, 1, 1]}, Origin="http://evil.example")
        assert status == 403
        status, answer = _post(url, "/sessions/nope/point", {"ijk": [1, 1, 1]})
        assert status == 404 and "no session" in error_detail(answer)
        with pytest.raises(RemoteError, match="not declared|label") as err:  # the session's own check
            session.add_point((12, 10, 5), label=7)
        assert err.value.status == 400
        assert np.array_equal(session.result().array, before)
        session.undo()  # the last step is still the point sent before the hostile ones
        assert session.drawn == [3] and not np.array_equal(session.result().array, before)
        with pytest.raises(ValueError, match="shape"):  # checked before anything is sent
            session.add_scribble(np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match=f"1 to {MAX_SCRIBBLE_VOXELS}"):  # the client's side of the bound
        scribble_body(np.ones((MAX_SCRIBBLE_VOXELS + 1, 1, 1), dtype=bool))


def test_the_key_guards_the_interaction_routes(tmp_path):
    path = write_image(tmp_path)
    with serving(SessionStore(tiny_segmenter()), api_key="s3cret") as url:
        session = RemoteSession(url, path, api_key="s3cret")
        for kind, body in (("box", {"lo": [1, 1, 1], "hi": [2, 2, 1]}), ("point", {"ijk": [1, 1, 1]}),
                           ("scribble", {"voxels": [[1, 1, 1]]})):
            status, _ = _post(url, f"/sessions/{session.session_id}/{kind}", body)
            assert status == 401
        assert call(f"{url}/sessions/{session.session_id}/accept", "POST")[0] == 401
        session.add_box((8, 6, 5), (16, 14, 5))
        assert session.accept().array.any()


def serve_options(*argv: str) -> dict:
    """``fewshotcx serve``'s checked options for ``argv`` (:func:`~fewshotcx.cli.serve.server_options`)."""
    from fewshotcx.cli.serve import register, server_options

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return server_options(parser.parse_args(["serve", *argv]))


def test_serve_support_fits_the_model_once_and_sessions_start_from_its_prediction(tmp_path, monkeypatch):
    """``fewshotcx serve --support IMG:LAB``: the model is fitted before serving; a session's first
    result is the fitted segmenter's prediction. Bad ``--support``/``--structures`` stop it in one line."""
    import uvicorn

    from conftest import blob_volume
    from servekit import STORED

    from fewshotcx.backends import STRATEGY_ENV
    from fewshotcx.cli import main
    from fewshotcx.cli.common import CliError
    from fewshotcx.models.weights import save_checkpoint

    seg = tiny_segmenter()
    weights = save_checkpoint(seg.backend.model, tmp_path / "tiny.pt", seg.backend.model.config, {"slice_size": 32})
    image, label = blob_volume(SHAPE, seed=7)
    save_volume(Volume(image, STORED["LPS"]), tmp_path / "prior.nii.gz")
    save_volume(Volume(label, STORED["LPS"], label=True), tmp_path / "prior_label.nii.gz")
    path = write_image(tmp_path)
    served = {}

    def serve(server: uvicorn.Server) -> None:  # instead of listening: open a session as a request would
        store = server.config.app.state.store
        entry = store.create(store.new_folder(), path, path.name)
        served.update(fitted=store.segmenter.fitted, first=entry.session.result().array,
                      predicted=store.segmenter.predict(load_volume(path, canonical=False)).array)

    monkeypatch.setattr(uvicorn.Server, "run", serve)
    monkeypatch.setenv(STRATEGY_ENV, "position")  # no registration: quick and quiet
    main(["serve", "--weights", str(weights), "--device", "cpu", "--modality", "mr",
          "--support", f"{tmp_path / 'prior.nii.gz'}:{tmp_path / 'prior_label.nii.gz'}"])
    assert served["fitted"] is not None
    assert np.array_equal(served["first"], served["predicted"]) and served["first"].any()

    with pytest.raises(CliError, match="--structures names what to learn from --support"):
        serve_options("--structures", "Bladder")
    with pytest.raises(CliError, match="--support"):
        serve_options("--support", f"{tmp_path / 'missing.nii.gz'}:{tmp_path / 'prior_label.nii.gz'}")
    with pytest.raises(CliError, match="--max-support"):
        serve_options("--learn", "--max-support", "0")


def test_serve_backend_atlas_starts_sessions_from_support_registered_onto_them(tmp_path, monkeypatch):
    """``fewshotcx serve --backend atlas --support IMG:LAB`` (Colin27 at 4 mm, its left hemisphere):
    a session's first result is the atlas segmenter's prediction, and suggest (which completes drawn
    slices in context) is one ValueError line (400 over HTTP). ``--backend atlas`` without
    ``--support``, or with ``--weights``, stops it in one line."""
    import uvicorn

    from conftest import cached_colin27

    from fewshotcx import metrics
    from fewshotcx.cli import main
    from fewshotcx.cli.common import CliError

    case = cached_colin27(downsample=4.0)
    hemisphere = case.labels.with_array(((case.labels.array > 0) & (case.labels.array % 2 == 1)).astype(np.uint8))
    save_volume(case.image, tmp_path / "prior.nii.gz")
    save_volume(hemisphere, tmp_path / "prior_label.nii.gz")
    served = {}

    def serve(server: uvicorn.Server) -> None:  # instead of listening: open a session as a request would
        store = server.config.app.state.store
        entry = store.create(store.new_folder(), tmp_path / "prior.nii.gz", "prior.nii.gz")
        served.update(backend=store.segmenter.backend.name, first=entry.session.result().array,
                      predicted=store.segmenter.predict(case.image).array)
        entry.session.draw(5, hemisphere.array[..., 5].astype(np.int64))
        with pytest.raises(ValueError, match="needs a slab backend"):
            entry.session.suggest()
        served["suggest refused"] = True

    monkeypatch.setattr(uvicorn.Server, "run", serve)
    main(["serve", "--backend", "atlas", "--device", "cpu",
          "--support", f"{tmp_path / 'prior.nii.gz'}:{tmp_path / 'prior_label.nii.gz'}"])
    assert served["backend"] == "atlas" and np.array_equal(served["first"], served["predicted"])
    assert served["suggest refused"]
    assert metrics.dice(served["first"] == 1, hemisphere.array == 1) > 0.95

    with pytest.raises(CliError, match="--backend atlas starts sessions from --support"):
        serve_options("--backend", "atlas")
    with pytest.raises(CliError, match="--weights does not apply"):
        serve_options("--backend", "atlas", "--weights", "official",
                "--support", f"{tmp_path / 'prior.nii.gz'}:{tmp_path / 'prior_label.nii.gz'}")


def test_the_slice_preview_shows_a_result_made_of_prompts_alone(tmp_path):
    import io

    import matplotlib.image as mpimg

    from fewshotcx.server.preview import to_display

    with serving(SessionStore(tiny_segmenter())) as url:
        session = RemoteSession(url, write_image(tmp_path))  # stored LPS: own slice k is canonical k
        session.add_box((6, 5, 5), (17, 15, 5))
        completed = mpimg.imread(io.BytesIO(session.preview(5, result=True)))[..., :3]
        expected = session.result().canonical().array[..., 5]
    green = (completed[..., 1] > completed[..., 0] + 0.2) & (completed[..., 1] > completed[..., 2] + 0.2)
    assert expected.any() and np.array_equal(green, to_display(expected) > 0)


def test_a_learning_server_takes_accepted_contours_as_support_for_later_sessions_only(tmp_path):
    """``serve --learn``: accept adds the contour to the shared model (blank at first); a session
    opened afterwards starts from the new model's prediction, the open one keeps its result; an empty
    contour (400) or a full model (409) is one line and learns nothing. Without ``--learn`` nothing
    is learned."""
    first, second = write_image(tmp_path, "a.nii.gz", orientation="PLI"), write_image(tmp_path, "b.nii.gz")
    store = SessionStore(tiny_segmenter(), learns=True, max_support=1)
    with serving(store) as url:
        empty = RemoteSession(url, second)
        empty.add_point((12, 10, 6), positive=False)  # a blank session: nothing but a negative click
        status, _, answer = call(f"{url}/sessions/{empty.session_id}/accept", "POST")
        assert status == 400 and "empty" in error_detail(answer) and store.segmenter.fitted is None
        remote = RemoteSession(url, first)
        remote.add_box((8, 6, 4), (16, 14, 7))
        shown = remote.result().array
        status, headers, _ = call(f"{url}/sessions/{remote.session_id}/accept", "POST")
        assert status == 200 and headers["X-Fewshotcx-Support"] == "1"
        assert len(store.segmenter.support.images) == 1 and np.array_equal(remote.result().array, shown)
        later = RemoteSession(url, second)  # starts from the model that learned the first contour
        expected = store.segmenter.predict(load_volume(second, canonical=False)).array
        assert np.array_equal(later.result().array, expected) and expected.any()
        later.add_point((12, 10, 6), positive=True)
        status, _, answer = call(f"{url}/sessions/{later.session_id}/accept", "POST")
        assert status == 409 and "maximum of 1 support volumes" in error_detail(answer)
        assert len(store.segmenter.support.images) == 1
    quiet = SessionStore(tiny_segmenter())
    with serving(quiet) as url:
        remote = RemoteSession(url, first)
        remote.add_box((8, 6, 4), (16, 14, 7))
        remote.accept()
        assert quiet.segmenter.fitted is None
