"""Building and loading Segment Anything models (the ``segment_anything`` package's own classes).

* :func:`load_sam` reads a SAM or MedSAM checkpoint (``weights_only=True``), detects the ViT variant
  from the state dict's shapes and loads it strictly into ``sam_model_registry[variant]()``.
* :func:`tiny_sam` builds a small randomly initialised :class:`Sam` from the same classes, for tests,
  benchmarks and docs (no checkpoint is needed, and no pretrained knowledge is claimed).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Union

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..weights import WeightsError, check_keys, load_checkpoint, resolve

#: Image-encoder width → ``sam_model_registry`` key.
VARIANTS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}

_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def detect_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` from the patch-embedding weight ``(D, 3, 16, 16)``."""
    weight = state_dict.get(_PATCH_KEY)
    if weight is None:
        raise WeightsError(f"not a SAM checkpoint: it has no {_PATCH_KEY!r} entry")
    width = int(weight.shape[0])
    if width not in VARIANTS:
        raise WeightsError(f"unknown SAM image-encoder width {width}: expected one of "
                           + ", ".join(f"{d} ({v})" for d, v in VARIANTS.items()))
    return VARIANTS[width]


def load_sam(weights: Union[str, Path], download: bool = True) -> tuple[Sam, Path]:
    """Build a :class:`Sam` from a checkpoint spec and load it strictly (eval mode).

    Args:
        weights: a SAM/MedSAM checkpoint path, ``"official"`` (SAM ViT-B) or a registry name such as
            ``"sam-vit_l"`` (see :mod:`fewshotcx.models.weights`). ``"default"`` is refused: there is no
            bundled SAM.
        download: passed to :func:`fewshotcx.models.weights.resolve`.
    Returns:
        ``(model, checkpoint path)``.
    """
    if isinstance(weights, str) and weights == "default":
        raise ValueError("the SAM backend has no bundled default checkpoint: pass weights=<path to a SAM or "
                         "MedSAM checkpoint>, weights='official', or model=<a segment_anything Sam>")
    path = resolve(weights, "sam", download=download)
    state_dict, _ = load_checkpoint(path)
    model = sam_model_registry[detect_variant(state_dict)]()
    check_keys(state_dict, model, str(path))
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), path


def tiny_sam(
    seed: int = 0,
    img_size: int = 64,
    patch_size: int = 4,
    embed_dim: int = 32,
    depth: int = 2,
    num_heads: int = 2,
    prompt_dim: int = 32,
) -> Sam:
    """A small, seeded, randomly initialised :class:`Sam` built from ``segment_anything``'s classes.

    Same structure as the real model (ViT encoder, prompt encoder, two-way transformer decoder) at toy
    sizes: image ``img_size²`` → embedding ``(prompt_dim, img_size/patch_size, img_size/patch_size)``
    → low-resolution masks at ``4 × img_size/patch_size``. The global RNG is left untouched.
    """
    if img_size % patch_size or prompt_dim % 8:
        raise ValueError("img_size must be a multiple of patch_size and prompt_dim a multiple of 8")
    grid = img_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=2.0, out_chans=prompt_dim, qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            ),
            prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                         input_image_size=(img_size, img_size), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim,
                                              num_heads=2),
                transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=prompt_dim,
            ),
        )
    return model.eval()
