"""Radiotherapy helpers (``fx.rt``): exact millimetre margins, structure algebra, RTSTRUCT I/O."""

from .margins import DIRECTIONS, expand_margin, intersect, read_rtstruct, shrink_margin, subtract, union, write_rtstruct

__all__ = ["DIRECTIONS", "expand_margin", "shrink_margin", "union", "intersect", "subtract", "read_rtstruct",
           "write_rtstruct"]
