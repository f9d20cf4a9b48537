"""Encode each image once: SAM's image encoder behind a content-addressed embedding cache.

The encoder dominates SAM's cost (seconds per slice for ViT-B on a CPU) while prompt tuning and
repeated predictions only need the decoder. :class:`CachedEncoder` hashes each preprocessed image
(its exact float32 bytes) together with a *namespace* (the encoder's weight fingerprint and the
preprocessing mode), runs only the missing images through the encoder in batches
(``torch.inference_mode``, bf16 autocast on CUDA) and keeps the ``(C, h, w)`` embeddings in an
in-memory LRU bounded by bytes, optionally mirrored in a directory (``torch.save`` of plain tensors,
read back with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ...io.atomic import atomic_output


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw bytes of a tensor of any dtype (on the CPU, contiguous)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fingerprint(module: nn.Module) -> str:
    """Hex digest of a module's state dict (names, dtypes, shapes and values): the model's identity."""
    digest = hashlib.blake2b(digest_size=16)
    for name, value in module.state_dict().items():
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(tensor_bytes(value))
    return digest.hexdigest()


class EmbeddingCache:
    """Key → tensor store: an LRU in memory bounded by ``max_bytes``, plus an optional directory.

    Args:
        max_bytes: memory budget of the in-memory LRU (least recently used entries are dropped first).
        directory: if given, every entry is also written there as ``<key>.pt`` and looked up there on
            a memory miss (so embeddings survive the process).

    Safe to share between threads: every lookup and update holds one lock (two threads missing the
    same key may both encode it; the second store replaces the first, identical value).
    """

    def __init__(self, max_bytes: int = 1 << 30, directory: Optional[Union[str, os.PathLike]] = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.directory = Path(directory).expanduser() if directory is not None else None
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, device: torch.device) -> Optional[torch.Tensor]:
        """The tensor stored under ``key`` on ``device``, or ``None``."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
        if value is not None:
            return value.to(device)
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        value = torch.load(path, map_location=device, weights_only=True)
        self._remember(key, value)
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        """Store ``value`` (and write it to the directory, atomically, if one is set)."""
        path = self._path(key)
        if path is not None and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path, overwrite=True) as tmp:
                torch.save(value.detach().cpu().clone(), tmp)
        self._remember(key, value)

    def clear(self) -> None:
        """Forget the in-memory entries (the directory is left as it is)."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def _remember(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.numel() * old.element_size()
            self._entries[key] = value
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.nbytes -= dropped.numel() * dropped.element_size()

    def _path(self, key: str) -> Optional[Path]:
        return None if self.directory is None else self.directory / f"{key}.pt"


class CachedEncoder:
    """SAM's image encoder with an :class:`EmbeddingCache` in front.

    Args:
        encoder: ``Sam.image_encoder`` (``(B, 3, s, s)`` → ``(B, C, h, w)``).
        cache: where embeddings are kept.
        namespace: identifies everything besides the pixels that changes the embedding (model
            fingerprint, preprocessing mode); part of every key.
        batch_size: images per encoder forward pass.
        autocast_dtype: e.g. ``torch.bfloat16`` to encode under autocast (``None`` = full precision).

    Attributes:
        encoded: number of images that actually went through the encoder (cache misses).
    """

    def __init__(self, encoder: nn.Module, cache: EmbeddingCache, namespace: str, batch_size: int = 1,
                 autocast_dtype: Optional[torch.dtype] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"encoder batch size must be at least 1, got {batch_size}")
        self.encoder = encoder
        self.cache = cache
        self.namespace = namespace
        self.batch_size = int(batch_size)
        self.autocast_dtype = autocast_dtype
        self.encoded = 0

    def keys(self, images: torch.Tensor) -> list[str]:
        """One cache key per image of ``(N, 3, s, s)``."""
        prefix = self.namespace.encode()
        return [hashlib.blake2b(prefix + tensor_bytes(image.float()), digest_size=20).hexdigest()
                for image in images]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder input ``(N, 3, s, s)`` → float32 embeddings ``(N, C, h, w)`` (ordinary tensors: autograd-safe)."""
        if images.shape[0] == 0:
            raise ValueError("no images to encode")
        device = images.device
        keys = self.keys(images)
        found = {i: self.cache.get(k, device) for i, k in enumerate(keys)}
        missing = [i for i, value in found.items() if value is None]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start:start + self.batch_size]
            embeddings = self._encode(images[batch])
            for i, embedding in zip(batch, embeddings):
                found[i] = embedding
                self.cache.put(keys[i], embedding)
            self.encoded += len(batch)
        return torch.stack([found[i] for i in range(len(keys))])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast(images.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        with torch.inference_mode(), autocast:
            out = self.encoder(images)
        return out.float().clone()  # cloned outside inference mode → an ordinary tensor
