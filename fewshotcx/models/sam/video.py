"""Axial slices as SAM 2 video frames, fed from memory: frames, inference state, batched encoding, passes.

SAM 2's ``init_state`` reads JPEG frames from a folder. Here the state is built directly (the fields
its ``init_state`` sets), and its ``images`` entry is a :class:`SliceFrames` that preprocesses a slice
when the predictor asks for it, so a volume never makes a round trip through the disk and never sits
in memory as ``(N, 3, S, S)`` float frames.

Slice → frame orientation: a canonical axial slice ``(X, Y)`` (RAS: +x right, +y anterior) is shown
the radiological way, as MedSAM2's CT pipeline sees it (rows anterior → posterior, columns patient
right → left): ``frame[r, c] = slice[X-1-c, Y-1-r]``.

Preprocessing (the same chain for SAM 2 and MedSAM2, at the model's ``image_size``): the slice in
``[0, 1]`` (CT windowed, i.e. 0–255 / 255), replicated to three channels, resized (bilinear,
anti-aliased, aspect not kept: SAM 2's ``load_video_frames`` and MedSAM2's
``medsam2_infer_3D_CT.py`` both stretch to the square), then ImageNet mean/std.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

#: ImageNet statistics that SAM 2 and MedSAM2 normalise frames with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_frame(slices: torch.Tensor) -> torch.Tensor:
    """``(..., X, Y)`` canonical axial slices → ``(..., Y, X)`` display frames (``[r, c] = [X-1-c, Y-1-r]``)."""
    return slices.flip((-2, -1)).transpose(-2, -1)


def from_frame(frames: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_frame`: ``(..., Y, X)`` → ``(..., X, Y)``."""
    return frames.transpose(-2, -1).flip((-2, -1))


class SliceFrames:
    """A sequence of preprocessed frames ``(3, S, S)`` made on demand from 2D slices.

    Args:
        slices: per frame, a ``(X, Y)`` float slice in ``[0, 1]`` (a view into a volume; frames may
            come from volumes of different in-plane sizes).
        image_size: the model's ``S``.
        device: where frames are returned (the CPU with ``offload_video_to_cpu``).
    """

    def __init__(self, slices: Sequence[torch.Tensor], image_size: int, device: torch.device) -> None:
        self.slices = list(slices)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.batch([index])[0]

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """``(B, 3, S, S)`` preprocessed frames for ``indices``."""
        size = (self.image_size, self.image_size)
        frames = [F.interpolate(to_frame(self.slices[i]).float()[None, None], size=size, mode="bilinear",
                                align_corners=False, antialias=True)[0] for i in indices]
        rgb = torch.cat(frames).clamp(0, 1)[:, None].expand(-1, 3, -1, -1)
        mean, std = self.mean.to(rgb.device), self.std.to(rgb.device)
        return ((rgb - mean) / std).to(self.device)


def new_state(frames: SliceFrames, height: int, width: int, device: torch.device, offload_state_to_cpu: bool,
              max_cached_frames: int = 0) -> dict:
    """An inference state with the fields ``SAM2VideoPredictor.init_state`` sets, over in-memory frames.

    Args:
        height, width: frame size of the output masks (the query slice in display orientation).
        device: the model's device.
        max_cached_frames: image features kept across passes (see :func:`encode_frames`).
    """
    return {
        "max_cached_frames": int(max_cached_frames),
        "images": frames, "num_frames": len(frames), "offload_video_to_cpu": frames.device != device,
        "offload_state_to_cpu": offload_state_to_cpu, "video_height": int(height), "video_width": int(width),
        "device": device, "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {}, "constants": {},
        "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
        "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
    }


def encode_frames(predictor, state: dict, indices: Sequence[int]) -> None:
    """Encode the frames of ``indices`` not yet cached, in one batched image-encoder pass.

    ``SAM2VideoPredictor._get_image_feature`` looks frames up in ``state["cached_features"]`` and encodes
    one frame at a time on a miss; filling the cache ahead of the predictor batches that work. Features
    stay cached (so a second pass does not encode again) while the cache holds at most
    ``state["max_cached_frames"]`` frames; past that the cache is replaced by the new batch. The
    positional encodings depend only on the feature size: one copy is shared by every frame.
    """
    cache = state["cached_features"]
    requested = list(dict.fromkeys(int(i) for i in indices))
    wanted = [i for i in requested if i not in cache]
    if not wanted:
        return
    if len(cache) + len(wanted) > state.get("max_cached_frames", 0):
        cache = state["cached_features"] = {}
        wanted = requested
    images = state["images"].batch(wanted).to(state["device"])
    out = predictor.forward_image(images)
    pos = [p[:1].clone() for p in out["vision_pos_enc"]]
    for j, idx in enumerate(wanted):
        cache[idx] = (images[j:j + 1], {"backbone_fpn": [f[j:j + 1].clone() for f in out["backbone_fpn"]],
                                        "vision_pos_enc": pos})


@contextmanager
def inference(device: torch.device, precision: str) -> Iterator[None]:
    """Inference mode, bf16 autocast when asked for (CUDA), and silence for the hole-filling step that
    needs sam2's CUDA extension (skipped by sam2 itself when the extension is not built)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with torch.inference_mode(), autocast, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Skipping the post-processing step")
        yield


def add_masks(predictor, state: dict, frame_masks: dict[int, torch.Tensor], obj_ids: Sequence[int],
              batch: int) -> None:
    """Mask prompts: ``frame_masks[f]`` is ``(L, X, Y)`` bool on canonical axes, one channel per object id."""
    frames = sorted(frame_masks)
    for start in range(0, len(frames), batch):
        chunk = frames[start:start + batch]
        encode_frames(predictor, state, chunk)
        for f in chunk:
            for obj_id, mask in zip(obj_ids, frame_masks[f]):
                predictor.add_new_mask(state, f, int(obj_id), to_frame(mask))
        # the memory encoder of the prompted frames runs here, while their features are cached
        predictor.propagate_in_video_preflight(state)


def propagate(predictor, state: dict, start: int, stop: int, batch: int,
              reverse: bool = False) -> dict[int, torch.Tensor]:
    """One pass from frame ``start`` to ``stop`` (inclusive; ``reverse`` walks down).

    Frames are encoded ``batch`` at a time just ahead of the pass. Non-conditioning memory left by an
    earlier pass is cleared first, so each pass only remembers its own predictions (plus every prompted
    frame).

    Returns:
        frame index → ``(L, X, Y)`` float32 mask logits on canonical axes (CPU), object order of ``state``.
    """
    for obj_output in state["output_dict_per_obj"].values():
        obj_output["non_cond_frame_outputs"].clear()
    for tracked in state["frames_tracked_per_obj"].values():
        tracked.clear()
    order = list(range(start, stop - 1, -1)) if reverse else list(range(start, stop + 1))
    if reverse and start == 0:
        return {}  # sam2 has nothing to walk down from frame 0
    passes = predictor.propagate_in_video(state, start_frame_idx=start, max_frame_num_to_track=len(order) - 1,
                                          reverse=reverse)
    logits: dict[int, torch.Tensor] = {}
    for first in range(0, len(order), batch):
        chunk = order[first:first + batch]
        encode_frames(predictor, state, chunk)
        for expected in chunk:
            frame, _, masks = next(passes)
            if frame != expected:
                raise RuntimeError(f"sam2 propagated frame {frame}, expected {expected}")
            logits[frame] = from_frame(masks[:, 0].float()).cpu()
    passes.close()
    return logits


def blend_passes(forward: dict[int, torch.Tensor], backward: dict[int, torch.Tensor],
                 prompted: Sequence[int]) -> dict[int, torch.Tensor]:
    """Merge a forward and a backward pass over the frames between prompted frames.

    For frame ``z`` between prompted frames ``a < z < b`` the forward pass came from ``a`` and the
    backward pass from ``b``; their logits are averaged with weights ``(b - z)/(b - a)`` and
    ``(z - a)/(b - a)``: each direction counts more the closer ``z`` is to the slice it started from.
    Prompted frames take the forward value (both passes return the prompt there). Frames covered by one
    pass only keep it.
    """
    marks = sorted(set(int(p) for p in prompted))
    merged = {}
    for z in sorted(set(forward) | set(backward)):
        if z not in backward or z in marks:
            merged[z] = forward.get(z, backward.get(z))
            continue
        if z not in forward:
            merged[z] = backward[z]
            continue
        below = max((m for m in marks if m < z), default=None)
        above = min((m for m in marks if m > z), default=None)
        if below is None or above is None:
            merged[z] = forward[z] if below is not None else backward[z]
            continue
        w = (z - below) / (above - below)
        merged[z] = (1 - w) * forward[z] + w * backward[z]
    return merged
