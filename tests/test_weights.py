"""Checkpoint registry, resolution (never touching the network), loading and readable errors."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import urllib.error
from pathlib import Path

import pytest
import torch

from fewshotcx import models
from fewshotcx.models import weights
from fewshotcx.models import UniverSeg
from fewshotcx.models.weights import (
    REGISTRY,
    WeightsError,
    check_keys,
    load_checkpoint,
    load_state_dict,
    load_universeg,
    resolve,
    save_checkpoint,
)

TINY = dict(encoder_blocks=(8, 8, 8, 8), decoder_blocks=(8, 8, 8))
OFFICIAL_FILE = "universeg_v1_nf64_ss64_STA.pt"
FAKE_URL = "https://unreachable.invalid/" + OFFICIAL_FILE


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty FEWSHOTCX_HOME; any real network access fails the test."""
    cache = tmp_path / "home"
    monkeypatch.setenv("FEWSHOTCX_HOME", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    return cache


def set_official(monkeypatch, **changes) -> weights.Checkpoint:
    entry = dataclasses.replace(REGISTRY["universeg-official"], **changes)
    monkeypatch.setitem(REGISTRY, "universeg-official", entry)
    return entry


class Response(io.BytesIO):
    """What ``urlopen`` returns, enough for torch.hub's downloader."""

    def info(self):
        from email.message import Message

        headers = Message()
        headers["Content-Length"] = str(len(self.getvalue()))
        return headers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def serve(monkeypatch, data: bytes) -> None:
    """Make the downloader (torch.hub.download_url_to_file) receive ``data`` for any URL."""
    monkeypatch.setattr(torch.hub, "urlopen", lambda request, *args, **kwargs: Response(data))


def sample_input(channels: int = 1, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(1, channels, size, size, generator=g), torch.rand(1, 2, channels, size, size, generator=g),
            (torch.rand(1, 2, 1, size, size, generator=g) > 0.5).float())


def test_cache_dir_follows_fewshotcx_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOTCX_HOME", str(tmp_path / "x"))
    assert weights.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("FEWSHOTCX_HOME")
    assert weights.cache_dir() == Path.home() / ".cache" / "fewshotcx"


def test_registry_entries():
    official = REGISTRY["universeg-official"]
    assert official.filename == OFFICIAL_FILE and official.url.endswith("/" + OFFICIAL_FILE)
    assert official.url.startswith("https://github.com/JJGO/UniverSeg/releases/")
    assert "OpenRAIL++-M" in official.licence and not official.bundled
    default = REGISTRY["default"]
    assert default.bundled and weights.expected_path(default) == weights.BUNDLED_DIR / "default_universeg.pt"
    assert weights.BUNDLED_DIR == Path(models.__file__).resolve().parent / "bundled"
    for variant, filename in {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth",
                              "vit_h": "sam_vit_h_4b8939.pth"}.items():
        entry = REGISTRY[f"sam-{variant}"]
        assert entry.backend == "sam" and entry.filename == filename
        assert entry.url == "https://dl.fbaipublicfiles.com/segment_anything/" + filename
    assert REGISTRY["medsam-vit_b"].filename == "medsam_vit_b.pth" and REGISTRY["medsam-vit_b"].url is None


def test_resolve_paths(home, tmp_path):
    path = tmp_path / "mine.pt"
    path.write_bytes(b"x")
    assert resolve(path, "universeg") == path
    assert resolve(str(path), "universeg") == path
    with pytest.raises(WeightsError, match="not found: .*nope.pt"):
        resolve(tmp_path / "nope.pt", "universeg")


def test_resolve_official_finds_the_cached_file_without_downloading(home):
    home.mkdir()
    (home / OFFICIAL_FILE).write_bytes(b"x")
    assert resolve("official", "universeg") == home / OFFICIAL_FILE
    assert resolve("universeg-official", "universeg") == home / OFFICIAL_FILE


def test_resolve_official_offline_names_file_url_and_directory(home, monkeypatch):
    set_official(monkeypatch, url=FAKE_URL)

    def offline(request, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(WeightsError) as err:
        resolve("official", "universeg")
    message = str(err.value)
    assert OFFICIAL_FILE in message and FAKE_URL in message and str(home) in message
    assert "\n" not in message
    assert list(home.iterdir()) == []  # no partial download left behind


def test_resolve_without_download_never_calls_the_network(home):
    with pytest.raises(WeightsError, match=OFFICIAL_FILE):
        resolve("official", "universeg", download=False)  # the fixture's urlopen would raise AssertionError


def test_download_is_verified_then_renamed(home, monkeypatch):
    data = b"pretend checkpoint bytes"
    set_official(monkeypatch, url=FAKE_URL, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    serve(monkeypatch, data)
    path = resolve("official", "universeg")
    assert path == home / OFFICIAL_FILE and path.read_bytes() == data
    assert weights.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in home.iterdir()) == [OFFICIAL_FILE]


def test_sam_downloads_check_the_published_hash_prefix(home, monkeypatch):
    """The SAM file names carry the first hex digits of their SHA-256 (…_01ec64.pth): a download whose
    digest does not start with them is refused (4901220 checked nothing without a full pinned hash)."""
    assert {REGISTRY[f"sam-{v}"].hash_prefix for v in ("vit_b", "vit_l", "vit_h")} == {"01ec64", "0b3195", "4b8939"}
    for variant in ("vit_b", "vit_l", "vit_h"):
        assert REGISTRY[f"sam-{variant}"].filename.endswith(f"_{REGISTRY[f'sam-{variant}'].hash_prefix}.pth")
    data = b"not the real SAM"
    serve(monkeypatch, data)
    with pytest.raises(WeightsError, match="download failed: invalid hash value"):
        resolve("sam-vit_b", "sam")
    assert list(home.iterdir()) == []
    entry = dataclasses.replace(REGISTRY["sam-vit_b"], hash_prefix=hashlib.sha256(data).hexdigest()[:6])
    monkeypatch.setitem(REGISTRY, "sam-vit_b", entry)
    assert resolve("sam-vit_b", "sam").read_bytes() == data


@pytest.mark.parametrize("changes", [{"sha256": "0" * 64}, {"size_bytes": 3}])
def test_download_failing_verification_leaves_nothing(home, monkeypatch, changes):
    set_official(monkeypatch, url=FAKE_URL, **changes)
    serve(monkeypatch, b"tampered bytes")
    with pytest.raises(WeightsError, match="download failed"):
        resolve("official", "universeg")
    assert list(home.iterdir()) == []


def test_resolve_errors_for_missing_bundled_and_mismatched_names(home, monkeypatch, tmp_path):
    monkeypatch.setattr(weights.registry, "BUNDLED_DIR", tmp_path / "empty")
    with pytest.raises(WeightsError, match="bundled checkpoint .*default_universeg.pt is missing"):
        resolve("default", "universeg")
    with pytest.raises(WeightsError, match="sam backend has no 'default'"):
        resolve("default", "sam")
    with pytest.raises(WeightsError, match="for the sam backend, not universeg"):
        resolve("sam-vit_b", "universeg")
    with pytest.raises(WeightsError, match="no direct download URL.*" + re.escape(str(home))):
        resolve("medsam-vit_b", "sam")


def test_load_state_dict_accepts_bare_and_wrapped(tmp_path):
    state = UniverSeg(**TINY).state_dict()
    for name, payload in {"bare": state, "model": {"model": state, "epoch": 3},
                          "state_dict": {"state_dict": state}}.items():
        torch.save(payload, tmp_path / f"{name}.pt")
        loaded = load_state_dict(tmp_path / f"{name}.pt")
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert load_checkpoint(tmp_path / "model.pt")[1] == {"epoch": 3}


def test_load_state_dict_rejects_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint at all" * 10)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    torch.save({"a": 1}, tmp_path / "no_tensors.pt")
    torch.save({"x": Path("x")}, tmp_path / "unsafe.pt")  # weights_only refuses arbitrary classes
    for name, pattern in {"garbage": "not a readable PyTorch checkpoint", "list": "holds no state dict",
                          "no_tensors": "holds no state dict", "unsafe": "not a readable PyTorch checkpoint"}.items():
        with pytest.raises(WeightsError, match=pattern):
            load_state_dict(tmp_path / f"{name}.pt")


def test_check_keys_explains_a_sam_checkpoint():
    keys = ["image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed",
            "prompt_encoder.point_embeddings.0.weight", "mask_decoder.iou_token.weight"]
    sam_like = {k: torch.zeros(2) for k in keys}
    with pytest.raises(WeightsError) as err:
        check_keys(sam_like, UniverSeg(**TINY), "sam.pth")
    message = str(err.value)
    assert "looks like a SAM checkpoint (keys image_encoder.*)" in message
    assert "needs a UniverSeg checkpoint (keys enc_blocks.*)" in message
    assert "44 missing keys (enc_blocks.0.cross.cross_conv.weight" in message and "4 unexpected keys" in message


def test_check_keys_reports_shape_mismatches_and_module_prefix():
    model = UniverSeg(**TINY)
    with pytest.raises(WeightsError, match=r"1 shape mismatches \(enc_blocks.0.cross.cross_conv.weight: "
                                           r"checkpoint \(8, 7, 3, 3\) vs model \(8, 3, 3, 3\)\)"):
        check_keys(UniverSeg(**TINY, in_channels=3).state_dict(), model, "ckpt")
    wrapped = {"module." + k: v for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match="'module.' prefix"):
        check_keys(wrapped, model, "ckpt")
    check_keys(model.state_dict(), model, "ckpt")  # a fitting state dict passes


def test_load_universeg_official_bare_state_dict_is_v1(home):
    source = UniverSeg().eval()
    home.mkdir()
    torch.save(source.state_dict(), home / OFFICIAL_FILE)
    model = load_universeg("official", download=False)
    assert model.config == source.config and not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(*sample_input()), source(*sample_input()), atol=0, rtol=0)


def test_load_universeg_infers_architecture_from_a_bare_state_dict(tmp_path):
    source = UniverSeg((8, 6, 4), (6, 8), in_channels=3).eval()
    torch.save(source.state_dict(), tmp_path / "bare.pt")
    model = load_universeg(tmp_path / "bare.pt")
    assert model.config == {"encoder_blocks": [8, 6, 4], "decoder_blocks": [6, 8], "in_channels": 3}


def test_save_checkpoint_round_trip_with_config_and_metadata(tmp_path):
    source = UniverSeg((4, 4, 4), (4, 4), in_channels=3).eval()
    path = save_checkpoint(source, tmp_path / "sub" / "mine.pt", source.config, extra={"slice_size": 64, "k": [1]})
    assert path == tmp_path / "sub" / "mine.pt" and sorted(p.name for p in path.parent.iterdir()) == ["mine.pt"]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"] == source.config and raw["extra"] == {"slice_size": 64, "k": [1]}
    model, meta = load_universeg(path, return_metadata=True)
    assert meta == {"slice_size": 64, "k": [1]} and model.config == source.config
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(model(*sample_input(3)), source(*sample_input(3)), atol=0, rtol=0)


def test_save_checkpoint_rejects_non_plain_metadata(tmp_path):
    model = UniverSeg(**TINY)
    with pytest.raises(ValueError, match=r"extra\['where'\] is a PosixPath|extra\['where'\] is a WindowsPath"):
        save_checkpoint(model, tmp_path / "x.pt", model.config, extra={"where": tmp_path})
    with pytest.raises(ValueError, match="non-string key"):
        save_checkpoint(model, tmp_path / "x.pt", {1: 2})
    assert not (tmp_path / "x.pt").exists()


def test_load_universeg_with_a_sam_checkpoint_says_so(tmp_path):
    torch.save({"image_encoder.neck.0.weight": torch.zeros(1), "mask_decoder.iou_token.weight": torch.zeros(1)},
               tmp_path / "sam.pth")
    with pytest.raises(WeightsError, match="looks like a SAM checkpoint"):
        load_universeg(tmp_path / "sam.pth")
