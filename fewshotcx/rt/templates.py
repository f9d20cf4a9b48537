"""Structure templates: which structures to contour, in which order, with their TG-263 names, display
colours, ``RTROIInterpretedType`` and margins (used by ``predict``, ``listen`` and
:func:`~fewshotcx.rt.write_structures`).

A template is a small TOML file (``fewshotcx-template/1``)::

    format = "fewshotcx-template/1"
    name = "cervix"
    description = "..."            # optional

    [[structure]]
    name = "CTV"                   # the ROI name written (1-64 characters, no backslash)
    tg263 = "CTV"                  # optional: its TG-263 primary name (default: looked up from name)
    colour = [255, 128, 0]         # RGB 0-255
    type = "CTV"                   # RT ROI Interpreted Type: ORGAN, GTV, CTV, PTV, AVOIDANCE, ...

    [[structure]]
    name = "PTV"
    colour = [0, 255, 255]
    type = "PTV"
    source = "CTV"                 # derived, not predicted: source grown by margin (mm, isotropic),
    margin = 7.0                   # with fx.rt.expand_margin

Structures without ``margin`` are predicted (label value ``i`` is the ``i``-th of them); derived
structures are computed from their source after prediction and written into RTSTRUCTs. Shipped
templates (:data:`SHIPPED`) are named by their file stem (``cervix``, ``thorax``); any other template
is given as a path. Every problem is a one-line :class:`ValueError` naming the file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..io.grid import Volume
from .margins import expand_margin
from .names import check_names, key, match_structure, tg263_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

FORMAT = "fewshotcx-template/1"
#: Folder of the templates shipped with the package.
TEMPLATE_DIR = Path(__file__).with_name("template_files")
#: Names of the shipped templates.
SHIPPED = tuple(sorted(p.stem for p in TEMPLATE_DIR.glob("*.toml")))
#: RT ROI Interpreted Type defined terms (DICOM PS3.3 C.8.8.8).
INTERPRETED_TYPES = frozenset({
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "OAR", "BOLUS", "AVOIDANCE", "ORGAN",
    "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY",
    "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT"})
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_MARGIN_MM = 100.0
_TOP_KEYS = {"format", "name", "description", "structure"}
_STRUCTURE_KEYS = {"name", "tg263", "colour", "type", "source", "margin"}


@dataclass(frozen=True)
class TemplateStructure:
    """One structure of a template (see the module docstring for the fields)."""

    name: str
    tg263: Optional[str]
    colour: tuple[int, int, int]
    type: str
    source: Optional[str] = None
    margin: Optional[float] = None


@dataclass(frozen=True)
class Template:
    """A checked structure template: ``structures`` in output order."""

    name: str
    structures: tuple[TemplateStructure, ...]

    @property
    def predicted(self) -> list[str]:
        """Names of the structures a model predicts (label values 1..N), in template order."""
        return [s.name for s in self.structures if s.source is None]

    def find(self, name: str) -> Optional[TemplateStructure]:
        """The structure standing for ``name`` (case, separators, TG-263 synonyms), or None."""
        found = match_structure(name, [s.name for s in self.structures], f"template {self.name!r}", missing_ok=True)
        return None if found is None else next(s for s in self.structures if s.name == found)

    def select(self, names: Sequence[str]) -> "Template":
        """This template restricted to ``names`` (in that order, each renamed as asked); names the
        template lacks get the default colour and type. A derived structure needs its source listed too.

        Raises:
            ValueError: bad names, or a derived structure without its source.
        """
        from .names import display_colour, interpreted_type

        chosen = []
        for index, name in enumerate(check_names(names)):
            own = self.find(name)
            chosen.append(TemplateStructure(name, tg263_name(name), display_colour(name, index), interpreted_type(name))
                          if own is None else replace(own, name=name))
        renamed = {s.name: c.name for s, c in zip(map(self.find, names), chosen) if s is not None}
        out = []
        for item in chosen:
            if item.source is not None:
                if item.source not in renamed:
                    raise ValueError(f"template {self.name!r}: {item.name} is {item.source} + {item.margin:g} mm: "
                                     f"list {item.source} too")
                item = replace(item, source=renamed[item.source])
            out.append(item)
        return Template(self.name, tuple(out))

    def masks(self, labels: Volume, names: Sequence[str]) -> dict[str, Volume]:
        """``{name: uint8 mask}`` in template order: value ``i`` of ``labels`` is ``names[i - 1]``,
        derived structures are their source grown by their margin; structures of ``names`` the
        template lacks come last."""
        masks = {name: labels.with_array((labels.array == i).astype(np.uint8), label=True)
                 for i, name in enumerate(names, start=1)}
        ordered: dict[str, Volume] = {}
        for item in self.structures:
            if item.source is None and item.name in masks:
                ordered[item.name] = masks[item.name]
            elif item.source in masks:
                ordered[item.name] = expand_margin(masks[item.source], float(item.margin or 0.0))
        return {**ordered, **{n: m for n, m in masks.items() if n not in ordered}}

    def colours(self) -> dict[str, tuple[int, int, int]]:
        """``{name: RGB}``."""
        return {s.name: s.colour for s in self.structures}

    def types(self) -> dict[str, str]:
        """``{name: RTROIInterpretedType}``."""
        return {s.name: s.type for s in self.structures}


def load_template(name_or_path: Union[str, Path]) -> Template:
    """A shipped template by name (:data:`SHIPPED`) or a template file.

    Raises:
        ValueError: unknown name, unreadable or too large file, or a problem with its content (one line).
    """
    text = str(name_or_path)
    path = TEMPLATE_DIR / f"{text}.toml" if text in SHIPPED else Path(text)
    if not path.is_file():
        raise ValueError(f"template {text!r} is neither a shipped template ({', '.join(SHIPPED)}) nor a file")
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise ValueError(f"template {path} is larger than {MAX_TEMPLATE_BYTES // 1024} KiB")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"template {path} is not TOML: {exc}") from None
    return parse_template(data, str(path))


def parse_template(data: Mapping[str, Any], where: str) -> Template:
    """A :class:`Template` from parsed TOML; ``where`` names the source in messages.

    Raises:
        ValueError: an unknown key, wrong format, bad colour or type, duplicate names, a margin
            without a source (or the reverse), a source that is not an earlier predicted structure.
    """
    _unknown(data, _TOP_KEYS, f"template {where}")
    if data.get("format") != FORMAT:
        raise ValueError(f"template {where}: format must be {FORMAT!r}, got {data.get('format')!r}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"template {where}: name must be a non-empty string")
    items = data.get("structure")
    if not isinstance(items, list) or not items:
        raise ValueError(f"template {where}: no [[structure]] tables")
    structures: list[TemplateStructure] = []
    for number, item in enumerate(items, start=1):
        structures.append(_structure(item, f"template {where}: structure {number}", structures))
    check_names([s.name for s in structures])  # duplicates, also through TG-263 synonyms
    return Template(name.strip(), tuple(structures))


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _structure(item: Any, where: str, earlier: list[TemplateStructure]) -> TemplateStructure:
    """One checked ``[[structure]]`` table (``earlier``: the structures before it)."""
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: not a table")
    _unknown(item, _STRUCTURE_KEYS, where)
    name = item.get("name")
    if not isinstance(name, str):
        raise ValueError(f"{where}: name must be a string")
    where = f"{where} ({name!r})"
    try:
        name = check_names([name])[0]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    twin = next((s.name for s in earlier if key(s.name) == key(name) or
                 (tg263_name(name) is not None and tg263_name(s.name) == tg263_name(name))), None)
    if twin is not None:
        raise ValueError(f"{where}: duplicate of structure {twin!r}")
    colour = item.get("colour")
    if not (isinstance(colour, list) and len(colour) == 3 and
            all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
        raise ValueError(f"{where}: colour must be three integers 0-255 [R, G, B], got {colour!r}")
    kind = item.get("type")
    if kind not in INTERPRETED_TYPES:
        raise ValueError(f"{where}: type must be an RT ROI Interpreted Type ({', '.join(sorted(INTERPRETED_TYPES))}), "
                         f"got {kind!r}")
    tg263 = item.get("tg263", tg263_name(name))
    if tg263 is not None and (not isinstance(tg263, str) or not 0 < len(tg263) <= 64):
        raise ValueError(f"{where}: tg263 must be a name of 1-64 characters")
    source, margin = item.get("source"), item.get("margin")
    if (source is None) != (margin is None):
        raise ValueError(f"{where}: " + ("margin without a source" if source is None else "source without a margin"))
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) \
                or not 0 <= margin <= MAX_MARGIN_MM:
            raise ValueError(f"{where}: margin must be a number of mm in [0, {MAX_MARGIN_MM:g}], got {margin!r}")
        if source not in [s.name for s in earlier if s.source is None]:
            raise ValueError(f"{where}: source {source!r} is not a predicted structure listed before it")
    return TemplateStructure(name, tg263, (colour[0], colour[1], colour[2]), kind, source,
                             None if margin is None else float(margin))
