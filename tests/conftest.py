"""Shared fixtures: small seeded volumes with known geometry."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from fewshotcx.io.volume import Volume

torch.set_num_threads(1)  # tiny test tensors: threads only add contention
# The suite runs the library's real default strategy ("auto"), whatever the developer's shell sets;
# tests about another strategy pass it themselves.
os.environ.pop("FEWSHOTCX_DEFAULT_STRATEGY", None)

#: ``.ci/run`` sets this after installing the system packages and fetching the test data: a test whose
#: tool or data is missing then fails (the install broke) instead of skipping.
REQUIRE_EVERYTHING = os.environ.get("FEWSHOTCX_REQUIRE_TEST_DEPS") == "1"


def missing(message: str) -> None:
    """A test's tool or data is missing: skip with ``message``, or fail under ``.ci/run``."""
    if REQUIRE_EVERYTHING:
        pytest.fail(f"{message} (FEWSHOTCX_REQUIRE_TEST_DEPS=1: .ci/run installs it)", pytrace=False)
    pytest.skip(message)


def require_command(command: str, package: str) -> None:
    """:func:`missing` unless ``command`` is on PATH (``package``: the Debian package that has it)."""
    if shutil.which(command) is None:
        missing(f"{command} not installed (Debian package {package}: apt-get install -y {package})")


#: For a test about something else whose volumes the default cannot register (synthetic volumes a few
#: voxels of the 3-mm registration grid across, or scans of different anatomy): "auto" warns that it left
#: each support volume out and draws by retrieval, as it would for a user; those warnings are expected.
UNREGISTERED = pytest.mark.filterwarnings("ignore:strategy='auto'")


# Affines covering the orientations the geometry tests must survive.
_OBLIQUE = np.array([[0.9, -0.35, 0.1, -40.0], [0.3, 0.95, -0.2, 12.0], [-0.05, 0.25, 2.4, 80.0], [0, 0, 0, 1]])
ORIENTATIONS = {
    "RAS": np.diag([0.8, 1.1, 2.5, 1.0]),
    "LPS": np.diag([-0.8, -1.1, 2.5, 1.0]),
    "LAS": np.diag([-0.8, 1.1, 2.5, 1.0]),
    "PIR": np.array([[0, 0, 2.5, 0], [-0.8, 0, 0, 0], [0, -1.1, 0, 0], [0, 0, 0, 1.0]]),
    "oblique": _OBLIQUE,
}


def blob_volume(shape=(24, 20, 12), seed=0, centre=None, radius=5.0) -> tuple[np.ndarray, np.ndarray]:
    """A textured image and the ellipsoid label inside it, ``(X, Y, Z)`` each."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    centre = np.asarray(centre if centre is not None else [n / 2 for n in shape])
    scale = np.array([1.0, 1.0, 2.0])
    label = (((grid - centre) / scale) ** 2).sum(-1) <= radius ** 2
    image = rng.normal(0.0, 0.1, shape) + 1.0 * label + 0.2 * np.sin(grid[..., 0] / 3.0)
    return image.astype(np.float32), label.astype(np.uint8)


def cached_colin27(downsample: float):
    """Colin27 + AAL (Debian mricron-data) from the local cache only: tests never download.
    ``make test`` fetches it once beforehand (``make test-data``); offline, the tests that need it
    skip and say how to get it (under ``.ci/run``, which fetches it, they fail: :func:`missing`)."""
    import fewshotcx.datasets as ds

    state = ds.available()["mricron"]
    if not state.startswith("cached"):
        missing(f"Colin27 is not cached and tests do not download it: run `make test-data` (or "
                    f"fx.datasets.fetch('mricron')) once with network access [{state}]")
    return ds.colin27_aal(downsample=downsample)


def pytest_collection_modifyitems(config, items):
    """Skip ``cuda``-marked tests, saying why, when this machine has no usable CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False "
                                   f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def orientations():
    return ORIENTATIONS


@pytest.fixture
def blob_pair():
    image, label = blob_volume()
    affine = ORIENTATIONS["LPS"]
    return Volume(image, affine), Volume(label, affine, label=True)


@pytest.fixture
def registrations(monkeypatch):
    """The names of the support volumes actually registered onto a query (registration cache misses)."""
    from fewshotcx.registration import onto_query

    calls = []
    real = onto_query.register_onto

    def counted(image, *args, **kwargs):
        calls.append(kwargs.get("name"))
        return real(image, *args, **kwargs)

    monkeypatch.setattr(onto_query, "register_onto", counted)
    return calls
