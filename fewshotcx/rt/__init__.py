"""Radiotherapy helpers (``fx.rt``): exact millimetre margins, structure algebra, RTSTRUCT and DICOM SEG I/O,
TG-263 structure names, previous plans as support, RT contour metrics (surface Dice from areas, APL)."""

from .margins import DIRECTIONS, expand_margin, intersect, shrink_margin, subtract, union
from .metrics import added_path_length, evaluate_structures, surface_dice_area, volume_cc
from .names import interpreted_type, match_structure, tg263_name
from .rtstruct import read_rtstruct, write_rtstruct
from .seg import write_seg
from .structures import (StructureSet, deidentify_series, load_labels, read_structures, save_labels, structure_masks,
                         support_from, write_structures)

__all__ = ["DIRECTIONS", "expand_margin", "shrink_margin", "union", "intersect", "subtract", "read_rtstruct",
           "write_rtstruct", "StructureSet", "read_structures", "support_from", "write_structures", "save_labels",
           "load_labels", "structure_masks", "deidentify_series", "write_seg", "match_structure", "tg263_name",
           "interpreted_type", "added_path_length", "surface_dice_area", "evaluate_structures", "volume_cc"]
