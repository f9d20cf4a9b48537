"""Structure names: matching clinical ROI names to requested ones through AAPM TG-263.

Planning systems hold structures under local names (``Lung-Left``, ``LT LUNG``, ``spinal cord``,
``GTV-1``). :func:`match_structure` finds the ROI a user asked for in three steps, each applied only
when the previous one found nothing:

1. the same **key**: case, spaces, underscores, hyphens and dots ignored (``Spinal-Cord`` = ``spinal cord``);
2. the same **TG-263 primary name** through :data:`SYNONYMS` (``Lung-Left`` = ``Lung_L`` = ``left lung``);
3. for target volumes (GTV, CTV, ITV, PTV) asked for without a number, the one ROI of that kind with a
   suffix (``GTV`` finds ``GTV-1`` or ``GTVp`` when it is the only GTV).

Two ROIs matching at the same step is an error that names both (never a silent choice).
:func:`interpreted_type` and :func:`display_colour` give the ``RTROIInterpretedType`` and
``ROIDisplayColor`` written for a structure name.

The primary names follow Mayo C. S. et al., *American Association of Physicists in Medicine Task
Group 263: Standardizing Nomenclatures in Radiation Oncology*, IJROBP 100(4), 2018; the synonyms are
the common local spellings, not part of the report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: TG-263 primary name → ``(RTROIInterpretedType, (synonyms…))``. Synonyms are compared by :func:`key`.
SYNONYMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "A_Aorta": ("ORGAN", ("aorta", "aorta_a", "great vessels aorta")),
    "Bladder": ("ORGAN", ("urinary bladder", "blad", "blaas")),
    "Body": ("EXTERNAL", ("external", "skin", "outline", "body contour", "patient")),
    "Bone_Mandible": ("ORGAN", ("mandible", "jaw")),
    "Bowel_Small": ("ORGAN", ("small bowel", "smallbowel", "small intestine", "bowel_sm", "sb")),
    "Bowel_Large": ("ORGAN", ("large bowel", "colon", "bowel_lg")),
    "Bowel": ("ORGAN", ("bowel bag", "bowelbag", "bowel_bag", "intestines")),
    "BrachialPlex_L": ("ORGAN", ("brachial plexus left", "brachialplexus_l", "l brachial plexus")),
    "BrachialPlex_R": ("ORGAN", ("brachial plexus right", "brachialplexus_r", "r brachial plexus")),
    "Brain": ("ORGAN", ("cerebrum", "whole brain")),
    "Brainstem": ("ORGAN", ("brain stem",)),
    "Breast_L": ("ORGAN", ("left breast", "breast left", "lt breast", "breast_lt")),
    "Breast_R": ("ORGAN", ("right breast", "breast right", "rt breast", "breast_rt")),
    "Cochlea_L": ("ORGAN", ("left cochlea", "cochlea left")),
    "Cochlea_R": ("ORGAN", ("right cochlea", "cochlea right")),
    "Esophagus": ("ORGAN", ("oesophagus", "esoph", "oesophagus_whole")),
    "Eye_L": ("ORGAN", ("left eye", "globe_l", "eye left")),
    "Eye_R": ("ORGAN", ("right eye", "globe_r", "eye right")),
    "Femur_Head_L": ("ORGAN", ("left femoral head", "femoral head left", "femur_l", "fem head l", "femoralhead_l")),
    "Femur_Head_R": ("ORGAN", ("right femoral head", "femoral head right", "femur_r", "fem head r", "femoralhead_r")),
    "Heart": ("ORGAN", ("cor", "heart_whole", "pericardium")),
    "Kidney_L": ("ORGAN", ("left kidney", "kidney left", "lt kidney", "kidney_lt")),
    "Kidney_R": ("ORGAN", ("right kidney", "kidney right", "rt kidney", "kidney_rt")),
    "Larynx": ("ORGAN", ("larynx_whole",)),
    "Lens_L": ("ORGAN", ("left lens", "lens left")),
    "Lens_R": ("ORGAN", ("right lens", "lens right")),
    "Liver": ("ORGAN", ("hepar",)),
    "Lung_L": ("ORGAN", ("lung left", "left lung", "lt lung", "lung_lt", "l lung", "lunglt")),
    "Lung_R": ("ORGAN", ("lung right", "right lung", "rt lung", "lung_rt", "r lung", "lungrt")),
    "Lungs": ("ORGAN", ("lung", "both lungs", "lungs total", "lung_total", "lung total")),
    "OpticChiasm": ("ORGAN", ("chiasm", "optic chiasm", "chiasma")),
    "OpticNrv_L": ("ORGAN", ("left optic nerve", "optic nerve left", "opticnerve_l")),
    "OpticNrv_R": ("ORGAN", ("right optic nerve", "optic nerve right", "opticnerve_r")),
    "Parotid_L": ("ORGAN", ("left parotid", "parotid left", "lt parotid", "parotid_lt")),
    "Parotid_R": ("ORGAN", ("right parotid", "parotid right", "rt parotid", "parotid_rt")),
    "Pancreas": ("ORGAN", ()),
    "Prostate": ("ORGAN", ()),
    "Rectum": ("ORGAN", ("rectum_wall_outer", "rect")),
    "SeminalVes": ("ORGAN", ("seminal vesicles", "sv", "seminal vesicle")),
    "SpinalCanal": ("ORGAN", ("spinal canal", "canal")),
    "SpinalCord": ("ORGAN", ("spinal cord", "cord", "myelum")),
    "Spleen": ("ORGAN", ("lien",)),
    "Stomach": ("ORGAN", ("ventriculus",)),
    "Thyroid": ("ORGAN", ("thyroid gland",)),
    "Trachea": ("ORGAN", ()),
    "Couch": ("SUPPORT", ("couch surface", "table", "couch interior")),
    "GTV": ("GTV", ("gross tumour volume", "gross tumor volume")),
    "CTV": ("CTV", ("clinical target volume",)),
    "ITV": ("CTV", ("internal target volume",)),
    "PTV": ("PTV", ("planning target volume",)),
}

#: Target-volume prefixes that take a numeric or descriptive suffix (``GTV-1``, ``CTV_High``, ``PTVp``).
TARGET_PREFIXES = {"gtv": "GTV", "ctv": "CTV", "itv": "CTV", "ptv": "PTV"}

#: Display colours (RGB) for primary names; others cycle through :data:`PALETTE`.
COLOURS: dict[str, tuple[int, int, int]] = {
    "GTV": (255, 0, 0), "CTV": (255, 128, 0), "ITV": (255, 192, 0), "PTV": (0, 255, 255),
    "Body": (0, 160, 0), "Lung_L": (100, 150, 255), "Lung_R": (150, 100, 255), "Lungs": (120, 120, 255),
    "SpinalCord": (255, 255, 0), "Heart": (200, 0, 80), "Esophagus": (160, 90, 40), "Liver": (150, 75, 0),
    "Bladder": (255, 220, 0), "Rectum": (140, 70, 20), "Femur_Head_L": (220, 220, 160),
    "Femur_Head_R": (200, 200, 140), "Bowel_Small": (255, 160, 200), "A_Aorta": (230, 30, 30),
}
PALETTE = ((0, 160, 255), (0, 200, 0), (200, 0, 255), (0, 220, 200), (255, 120, 0), (150, 150, 255),
           (255, 0, 128), (128, 128, 0))


def key(name: str) -> str:
    """The comparison key of a name: lower case without spaces, underscores, hyphens or dots."""
    return re.sub(r"[\s_.\-]+", "", name.lower())


_PRIMARY: dict[str, str] = {}
for _name, (_, _synonyms) in SYNONYMS.items():
    for _alias in (_name, *_synonyms):
        _PRIMARY.setdefault(key(_alias), _name)


def tg263_name(name: str) -> str | None:
    """The TG-263 primary name ``name`` stands for (``"Lung-Left"`` → ``"Lung_L"``), or None if unknown."""
    return _PRIMARY.get(key(name))


def _target_kind(name: str) -> str | None:
    """``"gtv"``/``"ctv"``/``"itv"``/``"ptv"`` when ``name`` is a target volume (with any suffix)."""
    k = key(name)
    return k[:3] if k[:3] in TARGET_PREFIXES else None


def match_structure(requested: str, available: Sequence[str], source: str = "the RTSTRUCT",
                    missing_ok: bool = False) -> str | None:
    """The ROI name among ``available`` that stands for ``requested`` (see the module docstring).

    Returns:
        the matching name; None when nothing matches and ``missing_ok``.
    Raises:
        ValueError: one line: nothing matches (listing every available name), or two ROIs match equally.
    """
    steps = (
        lambda a: key(a) == key(requested),
        lambda a: tg263_name(a) is not None and tg263_name(a) == tg263_name(requested),
        lambda a: key(requested) in TARGET_PREFIXES and _target_kind(a) == key(requested),
    )
    for step in steps:
        found = [a for a in available if step(a)]
        if len(found) == 1:
            return found[0]
        if found:
            raise ValueError(f"structure {requested!r} matches several ROIs of {source}: "
                             f"{', '.join(map(repr, found))}; ask for one of them by its exact name")
    if missing_ok:
        return None
    listed = ", ".join(map(repr, available)) or "none"
    raise ValueError(f"structure {requested!r} is not in {source}; its ROIs are: {listed}")


def default_name(value: int) -> str:
    """The name of label value ``value`` when nobody named it: ``label_<value>``, everywhere (predict,
    cohorts, comparisons, the server's RTSTRUCT export, label maps without a sidecar)."""
    return f"label_{int(value)}"


def default_names(count: int) -> list[str]:
    """:func:`default_name` of label values ``1 … count``."""
    return [default_name(value) for value in range(1, int(count) + 1)]


def check_names(names: Sequence[str]) -> list[str]:
    """``names`` stripped, each a valid DICOM ROI name, none the same structure as another.

    Raises:
        ValueError: an empty name, more than 64 characters or a backslash, or two names with the same
            key or TG-263 primary name (``Lung_L`` and ``lung-left``).
    """
    out, seen = [], {}
    for raw in names:
        name = raw.strip()
        if not name or len(name) > 64 or "\\" in name:
            raise ValueError(f"structure name {raw!r} must be 1-64 characters without a backslash")
        ident = tg263_name(name) or key(name)
        if ident in seen:
            raise ValueError(f"structure names {seen[ident]!r} and {name!r} name the same structure")
        seen[ident] = name
        out.append(name)
    if not out:
        raise ValueError("no structure names given")
    return out


def interpreted_type(name: str) -> str:
    """``RTROIInterpretedType`` for a structure name: its TG-263 entry's type, target volumes by their
    prefix, ``AVOIDANCE`` for avoidance/optimisation helpers, else ``""`` (Type 2: unknown)."""
    primary = tg263_name(name)
    if primary is not None:
        return SYNONYMS[primary][0]
    kind = _target_kind(name)
    if kind is not None:
        return TARGET_PREFIXES[kind]
    k = key(name)
    if re.match(r"z[A-Z_\-]", name.strip()) or "avoid" in k or k.startswith("opt"):
        return "AVOIDANCE"
    return ""


def display_colour(name: str, index: int) -> tuple[int, int, int]:
    """RGB display colour: the structure's conventional colour, else the ``index``-th palette entry."""
    primary = tg263_name(name)
    kind = _target_kind(name)
    if primary in COLOURS:
        return COLOURS[primary]
    if kind is not None:
        return COLOURS[kind.upper()]
    return PALETTE[index % len(PALETTE)]
