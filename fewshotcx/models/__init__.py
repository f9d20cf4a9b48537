"""Networks: :class:`UniverSeg` (official v1 state-dict layout), checkpoint inflation to 2.5D, and (in
:mod:`fewshotcx.models.sam`, imported on first use) the SAM and SAM 2 pieces the SAM backends drive."""

from .universeg import V1_DECODER_BLOCKS, V1_ENCODER_BLOCKS, UniverSeg, inflate_to_context

__all__ = ["UniverSeg", "inflate_to_context", "V1_ENCODER_BLOCKS", "V1_DECODER_BLOCKS"]
