"""SAM / MedSAM backend: frozen image encoder, cached embeddings, prompts tuned on the support.

Pipeline for a batch of square slabs ``(N, 2k+1, s, s)`` (``s`` = the encoder's ``img_size``):

1. 2.5D → RGB (``context=1``: slices ``z-1, z, z+1``; ``context=0``: the slice three times) and
   preprocessing (``"sam"``: ×255 then SAM's pixel mean/std; ``"medsam"``: ``[0, 1]`` as is).
2. Image embeddings ``(N, 256, 64, 64)`` from a content-addressed cache, encoding only new images
   (:mod:`fewshotcx.models.sam.embedding_cache`).
3. A prompt source per plane axis, set up by :meth:`SamBackend.condition`: learned prompts tuned on the
   support (``tune_steps > 0``) or training-free support-derived point prompts (``tune_steps=0``),
   decoded for all slices and classes in one batched call of SAM's mask decoder.
4. Low-res logits ``(N, L, 256, 256)`` → bilinear to ``s × s`` → sigmoid; classes whose soft area falls
   below the threshold calibrated on the support are zeroed on that slice ("empty").

Resizing to ``s`` is done by the segmenter: ``"pad"`` (longest side, centred zero padding) for SAM,
``"stretch"`` for MedSAM. The padding is intensity 0 *before* normalisation (SAM pads with 0 *after*
it): support pools do not record where their padding is, and support and query must be preprocessed
identically.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional, Union

import torch
from segment_anything.modeling import ImageEncoderViT, Sam

from ..models.sam.calibration import calibrate_threshold, foreground_score, suppress_empty
from ..models.sam.embedding_cache import CachedEncoder, EmbeddingCache, fingerprint
from ..models.sam.models import load_sam
from ..models.sam.prompts import LearnedPrompts, SupportPrompts, initial_tokens
from ..models.sam.transforms import RESIZE_MODES, check_mode, preprocess, resize_masks, upsample_logits
from ..models.sam.tuning import tune_prompts
from ..pipeline.slicing import SliceGeometry
from ..pipeline.support import SupportPool, SupportVolumes, select_support
from .base import Fitted, LegacyCalls, slab_call

#: Prompt-tuning steps when ``tune_steps`` is not given.
DEFAULT_TUNE_STEPS = 200
#: Working memory that sets the default encoder batch.
_ENCODER_BUDGET = {"cpu": 1 << 30, "cuda": 8 << 30}
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AxisState:
    """What :meth:`SamBackend.condition` learned for one plane axis (``Fitted.state[axis]``).

    Attributes:
        source: the prompt source (:class:`LearnedPrompts` or :class:`SupportPrompts`).
        thresholds: ``(L,)`` calibrated empty-slice thresholds on the foreground score.
        losses: prompt-tuning loss per step (empty when untuned).
    """

    source: Union[LearnedPrompts, SupportPrompts]
    thresholds: torch.Tensor
    losses: tuple[float, ...] = ()


class SamBackend(LegacyCalls):
    """Few-shot segmentation with Segment Anything (or MedSAM) and prompts fitted to the support.

    Args:
        model: a ``segment_anything`` :class:`Sam` (e.g. :func:`fewshotcx.models.sam.tiny_sam`); else ``weights``.
        weights: a SAM/MedSAM checkpoint path, ``"official"`` (SAM ViT-B) or a registry name
            (``"sam-vit_l"``…); ``"default"`` is an error (no bundled SAM). ViT-B/L/H is detected.
        device: torch device.
        support_size: at most this many support slabs are encoded and used (drawn with the
            ``"random"`` strategy, some empty); ``None`` = the whole pool. Encoding dominates the cost.
        ensemble: must be 1 (a fitted prompt set is deterministic).
        slice_size: must be ``None`` or the encoder's ``img_size`` (1024 for SAM).
        context: 1 (default: neighbours in the R and B channels) or 0 (slice repeated).
        tune_steps: prompt-tuning steps; 0 = untuned: support-derived point prompts (PerSAM-style).
        num_tokens: ``K`` learned sparse tokens per class (initialised as point, box corners, padding).
        tune_decoder: also fine-tune (a copy of) the mask decoder, at ``decoder_lr``.
        lr: Adam learning rate of the prompts.
        decoder_lr: Adam learning rate of the mask decoder (with ``tune_decoder``).
        batch_size: support slices per tuning step.
        position_aware: add a learned function of the relative slice position to the dense prompt.
        preprocess: ``"sam"`` or ``"medsam"``; ``None`` = ``"medsam"`` if the checkpoint's file name
            contains "medsam", else ``"sam"``. Sets ``resize_mode`` (``"pad"`` / ``"stretch"``).
        calibrate_empty: zero classes whose slice score is below the support-calibrated threshold.
        precision: encoder autocast, ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"``, ``"fp16"``.
        cache_bytes: memory for cached embeddings (4 MiB per slice for real SAM).
        cache_dir: optional directory mirroring the embedding cache across runs.
        encoder_batch: images per encoder pass; ``None`` = what fits 1 GiB (CPU) / 8 GiB (CUDA).
        decode_batch: slices per decoder call when scoring the support.
        augment_shift: during tuning, roll support embeddings and labels together by up to this
            fraction of the image side (whole embedding cells), so the dense prompt cannot simply
            memorise where the support's structure lies; 0 disables it.
    """

    name = "sam"

    def __init__(
        self,
        model: Optional[Sam] = None,
        weights: Union[str, Path] = "default",
        device: torch.device = torch.device("cpu"),
        support_size: Optional[int] = None,
        ensemble: int = 1,
        slice_size: Optional[int] = None,
        context: Optional[int] = None,
        tune_steps: int = DEFAULT_TUNE_STEPS,
        num_tokens: int = 4,
        tune_decoder: bool = False,
        lr: float = 1e-2,
        decoder_lr: float = 1e-4,
        batch_size: int = 8,
        position_aware: bool = True,
        preprocess: Optional[str] = None,
        calibrate_empty: bool = True,
        precision: str = "auto",
        cache_bytes: int = 1 << 30,
        cache_dir: Optional[Union[str, Path]] = None,
        encoder_batch: Optional[int] = None,
        decode_batch: int = 16,
        augment_shift: float = 0.125,
    ) -> None:
        if model is None:
            model, path = load_sam(weights)
            default_mode = "medsam" if "medsam" in path.name.lower() else "sam"
        else:
            if not isinstance(model, Sam):
                raise ValueError(f"model must be a segment_anything Sam, got {type(model).__name__}")
            default_mode = "sam"
        self.device = torch.device(device)
        self.sam = model.to(self.device).eval()
        self.mode = check_mode(preprocess or default_mode)
        self.resize_mode = RESIZE_MODES[self.mode]
        self.slice_size = int(self.sam.image_encoder.img_size)
        if slice_size is not None and int(slice_size) != self.slice_size:
            raise ValueError(f"this SAM encoder takes {self.slice_size}² images, not slice_size={slice_size}")
        self.context = 1 if context is None else int(context)
        if self.context not in (0, 1):
            raise ValueError(f"SAM packs at most 3 slices into RGB: context must be 0 or 1, got {context}")
        if ensemble != 1:
            raise ValueError("the SAM backend fits one deterministic prompt set: ensemble must be 1")
        if support_size is not None and support_size < 1:
            raise ValueError(f"support_size must be at least 1, got {support_size}")
        if tune_steps < 0 or num_tokens < 1 or batch_size < 1 or decode_batch < 1:
            raise ValueError("tune_steps must be >= 0 and num_tokens, batch_size, decode_batch >= 1")
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in _AUTOCAST:
            raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
        self.support_size = support_size
        self.tune_steps = int(tune_steps)
        self.num_tokens = int(num_tokens)
        self.tune_decoder = bool(tune_decoder)
        self.lr, self.decoder_lr, self.batch_size = float(lr), float(decoder_lr), int(batch_size)
        self.position_aware = bool(position_aware)
        self.calibrate_empty = bool(calibrate_empty)
        self.decode_batch = int(decode_batch)
        if not 0.0 <= augment_shift < 0.5:
            raise ValueError(f"augment_shift must be in [0, 0.5), got {augment_shift}")
        self.max_shift = round(augment_shift * self.embedding_size[1])
        elem = 4 if _AUTOCAST[precision] is None else 2
        budget = _ENCODER_BUDGET.get(self.device.type, 1 << 30)
        batch = encoder_batch or max(1, budget // encoder_bytes(self.sam.image_encoder, elem))
        namespace = f"{fingerprint(self.sam.image_encoder)}:{self.mode}:{precision}"
        self.encoder = CachedEncoder(self.sam.image_encoder, EmbeddingCache(cache_bytes, cache_dir), namespace,
                                     batch_size=batch, autocast_dtype=_AUTOCAST[precision])
        self._elem = elem

    # ------------------------------------------------------------------ helpers
    @property
    def embedding_size(self) -> tuple[int, int]:
        """``(h, w)`` of the image embedding (64×64 for SAM)."""
        h, w = self.sam.prompt_encoder.image_embedding_size
        return int(h), int(w)

    def embed(self, slabs: torch.Tensor) -> torch.Tensor:
        """``(N, 2k+1, s, s)`` slabs in ``[0, 1]`` → ``(N, C, h, w)`` cached image embeddings."""
        if slabs.shape[-2:] != (self.slice_size, self.slice_size):
            raise ValueError(f"SAM slabs must be {self.slice_size}×{self.slice_size}, got {tuple(slabs.shape[-2:])}")
        images = preprocess(slabs.to(self.device), self.mode, self.sam.pixel_mean, self.sam.pixel_std)
        return self.encoder(images)

    def _chunked_logits(self, source: Union[LearnedPrompts, SupportPrompts], embeddings: torch.Tensor,
                        positions: torch.Tensor) -> torch.Tensor:
        """Source logits ``(N, L, 4h, 4w)`` computed ``decode_batch`` slices at a time."""
        step = self.decode_batch
        return torch.cat([source.logits(embeddings[i:i + step], positions[i:i + step])
                          for i in range(0, embeddings.shape[0], step)])

    # ------------------------------------------------------------------ protocol
    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """Per axis: encode the support, tune (or derive) the prompts, calibrate the empty threshold.

        Returns:
            a :class:`Fitted` whose ``state`` maps plane axis → :class:`AxisState` (read-only).
        """
        states = {}
        for axis, pool in pools.items():
            pool = pool.to(self.device)
            chosen = torch.arange(len(pool), device=self.device)
            if self.support_size is not None and self.support_size < len(pool):
                chosen = select_support(pool, torch.zeros(1), self.support_size, "random", generator)[0]
            labels, positions = pool.labels[chosen].float(), pool.positions[chosen]
            embeddings = self.embed(pool.images[chosen])
            losses: list[float] = []
            if self.tune_steps:
                source, losses = self._tuned_prompts(embeddings, labels, positions, generator)
            else:
                with torch.no_grad():
                    source = SupportPrompts(self.sam.prompt_encoder, self.sam.mask_decoder, embeddings, labels,
                                            positions)
            num_classes = labels.shape[1]
            thresholds = torch.zeros(num_classes, device=self.device)
            if self.calibrate_empty:
                with torch.inference_mode():
                    scores = foreground_score(self._chunked_logits(source, embeddings, positions))
                thresholds = calibrate_threshold(scores, labels.amax(dim=(2, 3)) > 0.5)
            states[axis] = AxisState(source, thresholds, tuple(losses))
        return Fitted(support, {axis: pool.to(self.device) for axis, pool in pools.items()},
                      MappingProxyType(states), own_scan)

    def _tuned_prompts(self, embeddings: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor,
                       generator: torch.Generator) -> tuple[LearnedPrompts, list[float]]:
        prompt_encoder = self.sam.prompt_encoder
        decoder = copy.deepcopy(self.sam.mask_decoder).requires_grad_(self.tune_decoder)
        with torch.no_grad():
            sparse = initial_tokens(prompt_encoder, labels, self.num_tokens)
            no_mask = prompt_encoder.no_mask_embed.weight  # (1, C): SAM's dense prompt for "no mask given"
            dense = no_mask.view(1, -1, 1, 1).expand(labels.shape[1], -1, *self.embedding_size)
            prompts = LearnedPrompts(decoder, prompt_encoder.get_dense_pe(), sparse, dense,
                                     position_frequencies=2 if self.position_aware else 0).to(self.device)
        targets = resize_masks(labels, tuple(4 * n for n in self.embedding_size))
        losses = tune_prompts(prompts, embeddings, targets, positions, self.tune_steps, generator, lr=self.lr,
                              batch_size=self.batch_size, decoder_lr=self.decoder_lr if self.tune_decoder else None,
                              max_shift=self.max_shift)
        return prompts, losses

    @torch.inference_mode()
    def predict_slices(self, fitted: Fitted, slabs: torch.Tensor, geometry: SliceGeometry,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(N, 2k+1, s, s)`` query slabs → ``(N, L, s, s)`` probabilities with ``fitted``'s prompts (see
        :class:`~fewshotcx.backends.base.Backend`)."""
        fitted, slabs, geometry, generator = slab_call(self, fitted, slabs, geometry, generator)
        state = (fitted.state or {}).get(geometry.axis)
        if state is None:
            raise RuntimeError("condition the backend on a support before predicting")
        embeddings = self.embed(slabs)
        logits = state.source.logits(embeddings, geometry.positions.to(self.device))
        probs = torch.sigmoid(upsample_logits(logits, self.slice_size))
        if self.calibrate_empty:
            probs = suppress_empty(probs, foreground_score(logits), state.thresholds)
        return probs.float()

    def bytes_per_slab(self, fitted: Optional[Fitted] = None) -> int:
        """Encoder peak (attention maps dominate) plus the decoder's per-class activations."""
        states = (fitted.state or {}) if fitted is not None else {}
        classes = max((s.source.num_classes for s in states.values()), default=1)
        h, w = self.embedding_size
        channels = int(self.sam.prompt_encoder.embed_dim)
        decoder = classes * 4 * (8 * channels * h * w + 3 * (channels // 8) * 16 * h * w)
        return encoder_bytes(self.sam.image_encoder, self._elem) + decoder


def encoder_bytes(encoder: torch.nn.Module, elem: int = 4) -> int:
    """Rough peak working memory of one image through a SAM image encoder (``elem`` bytes per value)."""
    size = int(encoder.img_size)
    if not isinstance(encoder, ImageEncoderViT):
        return 256 * size * size * elem
    tokens = (size // int(encoder.patch_embed.proj.kernel_size[0])) ** 2
    width = int(encoder.patch_embed.proj.out_channels)
    widest = 0
    for block in encoder.blocks:
        keys = tokens if block.window_size == 0 else block.window_size ** 2
        widest = max(widest, block.attn.num_heads * tokens * keys)
    return elem * (2 * widest + 12 * tokens * width)
