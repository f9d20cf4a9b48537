"""SAM 2 / MedSAM2 backend: a volume's axial slices as video frames, propagated through a memory bank.

Two uses (both through :class:`~fewshotcx.Segmenter`):

* :meth:`Sam2Backend.complete_volume` (``Segmenter.complete``): every drawn slice is a mask prompt on
  its frame (one object id per structure, all in one inference state); SAM 2 propagates forward from
  the first drawn slice and backward from the last, only over the drawn extent; between two drawn
  slices the two directions are blended by distance to the slice each started from
  (:func:`~fewshotcx.models.sam.video.blend_passes`).
* :meth:`Sam2Backend.condition` + :meth:`Sam2Backend.predict_volume` (memory as context): the query
  is cut into runs of ``chunk`` consecutive slices; ahead of each run, ``support_size`` labelled support
  slices chosen by relative position (:func:`~fewshotcx.pipeline.support.select_support`, nearest the
  run's centre) are mask-prompted conditioning frames, and SAM 2 propagates forward through the run.
  Whether a checkpoint transfers masks across patients this way is an empirical question per
  checkpoint (docs/sam2.md).

Frames come from memory, preprocessed as SAM 2 and MedSAM2 expect (:mod:`fewshotcx.models.sam.video`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..io.volume import Volume
from ..pipeline.slicing import relative_position
from ..pipeline.support import SupportPool, SupportVolumes, Strategy, select_support
from ..models.sam.sam2_models import build_video_predictor, import_sam2
from ..models.sam.video import SliceFrames, add_masks, blend_passes, inference, new_state, propagate
from .base import Fitted

#: Support frames ahead of each run of query slices when ``support_size`` is not given.
DEFAULT_SUPPORT_FRAMES = 4


@dataclass(frozen=True)
class FrameIndex:
    """The labelled axial slices of a support (``Fitted.state`` of :meth:`Sam2Backend.condition`).

    Attributes:
        pool: a selection-only pool: per slice its relative position and per-class presence ``(M, L, 1, 1)``
            (the slices themselves are read from the support volumes).
        entries: per pool entry, ``(support volume, axial slice)``.
    """

    pool: SupportPool
    entries: tuple[tuple[int, int], ...]


class Sam2Backend:
    """SAM 2 (or MedSAM2) video propagation behind the :class:`~fewshotcx.backends.base.VolumeBackend` API.

    Args:
        model: a predictor built with ``sam2.build_sam.build_sam2_video_predictor`` (any config); else
            ``weights`` + ``config``.
        weights: a SAM 2.1 / MedSAM2 checkpoint path (no bundled or downloaded weights).
        config: the sam2 config (``"sam2.1_hiera_t"``, ``"configs/sam2.1/sam2.1_hiera_b+.yaml"``,
            ``"medsam2"`` for MedSAM2's 512² Hiera-T; see :func:`fewshotcx.models.sam.sam2_models.resolve_config`).
        device: torch device.
        support_size: support frames ahead of each run of query slices (memory as context).
        ensemble: must be 1 (accepted for the common API).
        slice_size: ``None`` or the model's ``image_size``.
        context: ``None`` or 0 (one slice per frame).
        chunk: query slices per run in :meth:`predict_volume` (one inference state each).
        strategy: support selection, ``"position"`` (default) or ``"random"``.
        offload_video_to_cpu: keep frames on the CPU, moving each batch to the device when encoded.
        offload_state_to_cpu: keep the memory bank and masks on the CPU (sam2's own option).
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"`` or ``"bf16"``.
        encode_batch: frames per batched image-encoder pass.
        cached_frames: image features of up to this many frames stay in memory, so the backward pass of
            :meth:`complete_volume` does not encode them again (features and frame: about 28 MiB per frame at
            1024², 7 MiB at 512², fp32); longer runs are encoded batch by batch in each pass.
    """

    name = "sam2"

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        weights: Union[str, Path, None] = "default",
        config: Optional[str] = None,
        device: torch.device = torch.device("cpu"),
        support_size: Optional[int] = None,
        ensemble: int = 1,
        slice_size: Optional[int] = None,
        context: Optional[int] = None,
        chunk: int = 16,
        strategy: Strategy = "position",
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        precision: str = "auto",
        encode_batch: int = 4,
        cached_frames: int = 64,
    ) -> None:
        self.device = torch.device(device)
        if model is None:
            if weights in (None, "default", "official") or config is None:
                raise ValueError("backend 'sam2' has no bundled weights: pass weights=<SAM 2.1 or MedSAM2 checkpoint> "
                                 "and config=<sam2 config, e.g. 'sam2.1_hiera_t' or 'medsam2'>, or model=<predictor>")
            model = build_video_predictor(config, weights, self.device)
        else:
            import_sam2()  # a one-line error when sam2 is missing
            from sam2.sam2_video_predictor import SAM2VideoPredictor

            if not isinstance(model, SAM2VideoPredictor):
                raise ValueError("model must be a sam2 video predictor (sam2.build_sam.build_sam2_video_predictor), "
                                 f"got {type(model).__name__}")
        self.predictor = model.to(self.device).eval()
        self.image_size = int(self.predictor.image_size)
        if slice_size is not None and int(slice_size) != self.image_size:
            raise ValueError(f"this SAM 2 model takes {self.image_size}² frames, not slice_size={slice_size}")
        if context not in (None, 0):
            raise ValueError(f"SAM 2 sees one slice per frame: context must be None or 0, got {context}")
        if ensemble != 1:
            raise ValueError("the sam2 backend is deterministic: ensemble must be 1")
        if support_size is not None and support_size < 1:
            raise ValueError(f"support_size must be at least 1, got {support_size}")
        if chunk < 1 or encode_batch < 1:
            raise ValueError("chunk and encode_batch must be at least 1")
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        self.support_size = int(support_size or DEFAULT_SUPPORT_FRAMES)
        self.chunk, self.encode_batch, self.cached_frames = int(chunk), int(encode_batch), int(cached_frames)
        self.strategy: Strategy = strategy
        self.offload_video_to_cpu, self.offload_state_to_cpu = bool(offload_video_to_cpu), bool(offload_state_to_cpu)

    # ------------------------------------------------------------------ helpers
    def _frames(self, slices: Sequence[torch.Tensor]) -> SliceFrames:
        video_device = torch.device("cpu") if self.offload_video_to_cpu else self.device
        return SliceFrames([s.to(video_device) for s in slices], self.image_size, video_device)

    def _state(self, slices: Sequence[torch.Tensor], height: int, width: int) -> dict:
        return new_state(self._frames(slices), height, width, self.device, self.offload_state_to_cpu,
                         self.cached_frames)

    # ------------------------------------------------------------------ complete (one volume)
    def complete_volume(self, image: Volume, labels: Volume, slices: Sequence[int], classes: Sequence[int],
                        normalised: torch.Tensor) -> torch.Tensor:
        """Propagate the drawn slices of one volume through its drawn extent.

        Args:
            image: the canonical volume being contoured (its grid sets the output's).
            labels: canonical label map on ``image``'s grid; only ``slices`` are read.
            slices: drawn axial indices (empty drawn slices are negatives for every structure).
            classes: label values, one object id each, in output channel order.
            normalised: ``(X, Y, Z)`` float32 in ``[0, 1]``.
        Returns:
            ``(L, X, Y, Z)`` float32 probabilities; 0 outside ``[min(slices), max(slices)]``.
        """
        drawn = sorted({int(z) for z in slices})
        lo, hi = drawn[0], drawn[-1]
        values = torch.as_tensor(list(classes)).view(-1, 1, 1)
        label_t = torch.as_tensor(labels.array.astype(np.int64))
        masks = {z - lo: label_t[..., z][None] == values for z in drawn}
        volume = normalised.detach()
        state = self._state([volume[..., z] for z in range(lo, hi + 1)], image.shape[1], image.shape[0])
        with inference(self.device, self.precision):
            add_masks(self.predictor, state, masks, classes, self.encode_batch)
            forward = propagate(self.predictor, state, 0, hi - lo, self.encode_batch)
            backward = propagate(self.predictor, state, hi - lo, 0, self.encode_batch, reverse=True)
        merged = blend_passes(forward, backward, [z - lo for z in drawn])
        probs = torch.zeros((len(classes), *image.shape), dtype=torch.float32)
        for f, logit in merged.items():
            probs[..., lo + f] = torch.sigmoid(logit)
        return probs

    # ------------------------------------------------------------------ memory as context (across patients)
    def condition(self, support: Optional[SupportVolumes], generator: torch.Generator,
                  pools: Mapping[int, SupportPool] = MappingProxyType({}), own_scan: bool = False) -> Fitted:
        """Index the labelled axial slices of the support (a :class:`FrameIndex`; nothing is encoded until
        a query comes)."""
        positions, volume_ids, present, entries = [], [], [], []
        values = np.asarray(support.classes)
        for vid, lab in enumerate(support.labels):
            depth = lab.shape[2]
            chosen = range(depth) if support.slices is None or support.slices[vid] is None else support.slices[vid]
            for z in chosen:
                slice_values = np.unique(lab.array[..., int(z)])
                entries.append((vid, int(z)))
                positions.append(relative_position(int(z), depth))
                volume_ids.append(vid)
                present.append(np.isin(values, slice_values))
        flags = torch.as_tensor(np.asarray(present, dtype=np.float32))[:, :, None, None]  # (M, L, 1, 1)
        pool = SupportPool(torch.zeros(len(entries), 1, 1, 1), flags, torch.as_tensor(positions, dtype=torch.float32),
                           torch.as_tensor(volume_ids), tuple(support.classes), axis=2)
        return Fitted(support, {}, FrameIndex(pool, tuple(entries)), own_scan)

    def predict_volume(self, fitted: Fitted, query: Volume, normalised: torch.Tensor, generator: torch.Generator,
                       fraction: float = 1.0) -> torch.Tensor:
        """Support slices as conditioning frames ahead of each run of query slices; forward propagation
        (``fraction``: not used, the frames are chosen by position).

        Returns:
            ``(L, X, Y, Z)`` float32 probabilities on the query's canonical grid.
        """
        if not isinstance(fitted.state, FrameIndex):
            raise RuntimeError("condition the backend on a support before predicting")
        support, index = fitted.support, fitted.state
        classes = support.classes
        depth = query.shape[2]
        probs = torch.zeros((len(classes), *query.shape), dtype=torch.float32)
        support_images = [torch.as_tensor(a) for a in support.normalised]
        values = torch.as_tensor(list(classes)).view(-1, 1, 1)
        for start in range(0, depth, self.chunk):
            stop = min(start + self.chunk, depth)
            centre = torch.tensor([relative_position((start + stop - 1) / 2, depth)], dtype=torch.float32)
            picked = select_support(index.pool, centre, self.support_size, self.strategy, generator)[0]
            order = sorted(picked.tolist(), key=lambda m: float(index.pool.positions[m]))
            frames = [support_images[index.entries[m][0]][..., index.entries[m][1]] for m in order]
            masks = {i: torch.as_tensor(support.labels[vid].array[..., z].astype(np.int64))[None] == values
                     for i, (vid, z) in enumerate(index.entries[m] for m in order)}
            frames += [normalised.detach()[..., z] for z in range(start, stop)]
            state = self._state(frames, query.shape[1], query.shape[0])
            with inference(self.device, self.precision):
                add_masks(self.predictor, state, masks, classes, self.encode_batch)
                logits = propagate(self.predictor, state, 0, len(frames) - 1, self.encode_batch)
            for z in range(start, stop):
                probs[..., z] = torch.sigmoid(logits[len(order) + z - start])
        return probs
