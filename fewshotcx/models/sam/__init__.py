"""Segment Anything support: model loading, preprocessing, embedding cache, prompts, decoding.

The backend that drives these is :class:`fewshotcx.backends.sam.SamBackend`
(``fx.Segmenter(backend="sam", ...)``).
"""

from .calibration import calibrate_threshold, foreground_score, suppress_empty
from .decoding import decode
from .embedding_cache import CachedEncoder, EmbeddingCache, fingerprint
from .models import VARIANTS, detect_variant, load_sam, tiny_sam
from .prompts import LearnedPrompts, SupportPrompts, initial_tokens, mask_boxes
from .refine import refine_with_sam
from .transforms import RESIZE_MODES, preprocess, to_rgb, upsample_logits
from .tuning import dice_bce_loss, tune_prompts

__all__ = [
    "CachedEncoder", "EmbeddingCache", "LearnedPrompts", "RESIZE_MODES", "SupportPrompts", "VARIANTS",
    "calibrate_threshold", "decode", "detect_variant", "dice_bce_loss", "fingerprint", "foreground_score",
    "initial_tokens", "load_sam", "mask_boxes", "preprocess", "refine_with_sam", "suppress_empty", "tiny_sam",
    "to_rgb", "tune_prompts", "upsample_logits",
]
