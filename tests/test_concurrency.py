"""Issue #10 bug 6: shared state used from several threads (umask, embedding cache, Segmenter)."""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pytest
import torch

from conftest import ORIENTATIONS, UNREGISTERED, blob_volume
from fewshotcx import Segmenter, Volume
from fewshotcx.io.atomic import atomic_output, current_umask
from fewshotcx.models.sam.embedding_cache import EmbeddingCache
from test_segmenter import EchoBackend, tiny_universeg


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the umask from /proc (Linux)")
def test_umask_is_read_without_changing_the_process_umask(tmp_path, monkeypatch):
    """Setting the umask to read it (the 4901220 code) races with every other thread creating files."""
    old = os.umask(0o027)
    try:
        real_umask = os.umask

        def forbidden(mask):
            raise AssertionError("os.umask called: the process-wide mask was changed")

        monkeypatch.setattr(os, "umask", forbidden)
        assert current_umask() == 0o027
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
        monkeypatch.setattr(os, "umask", real_umask)
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640


class YieldingTensor(torch.Tensor):
    """A tensor whose ``element_size()`` lets other threads run, as real code paths may (GIL release):
    it widens the window between the cache's read-modify-write steps so a missing lock shows."""

    def element_size(self) -> int:
        time.sleep(0)
        return super().element_size()


def test_embedding_cache_stays_consistent_under_threads():
    """Eight threads put/get into one small LRU; its byte count must equal what it holds, within budget.

    Fails on 4901220's cache (no lock): the unlocked pop / ``nbytes`` update / ``popitem`` steps of
    different threads interleave (wrong byte counts, or KeyError from popping an emptied dict)."""
    entry = torch.zeros(64).as_subclass(YieldingTensor)  # 256 bytes
    cache = EmbeddingCache(max_bytes=10 * 256)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(400):
                key = f"{worker}-{i % 25}"
                cache.put(key, entry)
                cache.get(f"{(worker + 1) % 8}-{i % 25}", torch.device("cpu"))
                if i % 97 == 0:
                    cache.clear()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    held = sum(v.numel() * v.element_size() for v in cache._entries.values())
    assert cache.nbytes == held and held <= cache.max_bytes and len(cache) == held // 256


class GatedBackend(EchoBackend):
    """EchoBackend whose predictions wait until ``gate`` is set, announcing themselves on ``started``."""

    def __init__(self) -> None:
        self.gate, self.started = threading.Event(), threading.Event()

    def predict_slices(self, slabs, geometry, generator):
        self.started.set()
        assert self.gate.wait(timeout=60)
        return super().predict_slices(slabs, geometry, generator)


def _pair(seed):
    image, label = blob_volume(seed=seed)
    return Volume(image, ORIENTATIONS["RAS"]), Volume(label * seed, ORIENTATIONS["RAS"], label=True)


def test_a_fit_during_a_prediction_leaves_that_prediction_its_value():
    """fit() rebinds ``seg.fitted`` to a new value at once; a prediction already running keeps the value
    it read when it started.

    Fails on 4901220 (mutable fitted state, no lock): the prediction came back with the new fit's classes."""
    backend = GatedBackend()
    seg = Segmenter(backend=backend, modality="mr", progress=False)
    first, second = _pair(1), _pair(2)
    seg.fit([first[0]], [first[1]])
    with ThreadPoolExecutor(2) as pool:
        prediction = pool.submit(seg.predict, first[0])
        assert backend.started.wait(timeout=60)
        seg.fit([second[0]], [second[1]])  # no waiting: nothing the prediction reads is changed
        assert seg.classes == (2,) and not prediction.done()
        backend.gate.set()
        labels = prediction.result(timeout=60).array
    assert set(np.unique(labels)) <= {0, 1} and labels.any()  # the first fit's class, not 2


@UNREGISTERED
def test_one_fitted_segmenter_predicts_from_many_threads():
    """predict_proba on one fitted Segmenter from four threads equals the serial result."""
    image, label = _pair(1)
    seg = Segmenter(model=tiny_universeg(), slice_size=32, support_size=3, ensemble=2, progress=False)
    seg.fit([image], [label])
    queries = [_pair(s)[0] for s in (3, 4, 5, 6)]
    serial = [seg.predict_proba(q).array for q in queries]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda q: seg.predict_proba(q).array, queries))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel))
    assert not np.array_equal(serial[0], serial[1])  # the queries differ, so the check can fail
