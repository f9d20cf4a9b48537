"""DICOM de-identification: the PS3.15 Basic Profile with the Retain UIDs Option, at any nesting depth.

Every DICOM reader and writer of the package goes through it (reading a series de-identifies what is
copied into the Volume; RTSTRUCT, SEG and image writers de-identify what they write), so it sits at the
bottom with the readers; ``fx.dicom`` re-exports it and ``fx.rt.deidentify_series`` applies it to a
whole plan.

:func:`deidentify_dataset` applies the DICOM PS3.15 Annex E *Basic Application Level Confidentiality
Profile* (every attribute of Table E.1-1, :data:`~fewshotcx.io.deid_profile.BASIC_PROFILE`) with the
*Retain UIDs Option* (an RTSTRUCT must reference the original Study/Series/SOP Instance UIDs), at any
nesting depth, deterministically. Private attributes are removed. Pixel data is not inspected for
burned-in text (the Clean Pixel Data Option is not applied).
"""

from __future__ import annotations

import copy
from typing import Collection, Optional

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import STR_VR

from .deid_profile import BASIC_PROFILE, REPEATING_GROUP_ELEMENTS

#: ``DeidentificationMethod`` (LO, at most 64 characters) written by :func:`deidentify_dataset`.
DEIDENTIFICATION_METHOD = "PS3.15 Basic Application Confidentiality Profile, Retain UIDs"

#: How compound actions of :data:`BASIC_PROFILE` are applied: ``Z`` wherever the table allows it
#: (a zero-length value keeps Type 2 attributes present and discloses nothing), else ``X``.
COMPOUND_ACTIONS = {"X/Z": "Z", "Z/D": "Z", "X/Z/D": "Z", "X/Z/U*": "Z", "X/D": "X"}

#: Dummy values for action ``D`` by value representation; other text VRs get ``"ANONYMOUS"``, numbers 0.
DUMMY_VALUES = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D", "UR": "", "UI": ""}


def profile_action(tag: int) -> Optional[str]:
    """The action :func:`deidentify_dataset` applies to ``tag``: ``K``, ``X``, ``Z``, ``D`` or ``U``.

    The Basic Profile with the Retain UIDs Option (its ``K`` wins) and compound actions resolved by
    :data:`COMPOUND_ACTIONS`; ``None`` for attributes outside the profile (kept).
    """
    entry = BASIC_PROFILE.get(tag)
    if entry is not None:
        _, action, retained = entry
        return "K" if retained else COMPOUND_ACTIONS.get(action, action)
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 or any(group & gm == gv and element & em == ev for gm, em, gv, ev in REPEATING_GROUP_ELEMENTS):
        return "X"
    return None


def dummy_value(element: DataElement) -> object:
    """The action-``D`` replacement for ``element``: a fixed value of its VR that identifies nobody."""
    if element.VR in DUMMY_VALUES:
        return DUMMY_VALUES[element.VR]
    if element.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b""
    if element.VR in ("DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"):
        return 0
    return "ANONYMOUS"  # fits every text VR, AE/CS/SH (16 characters) included


def has_identifiers(ds: Dataset, retain: Collection[str] = ()) -> bool:
    """Whether ``ds`` holds, at any nesting depth, a non-empty attribute that :func:`deidentify_dataset`
    would remove (``X``, private attributes included) or empty (``Z``), or a ``D`` attribute other than
    its dummy value; the items of every sequence are looked into as well. ``retain``: keywords the
    caller vouches for (as in :func:`deidentify_dataset`)."""
    keep = {tag_for_keyword(k) for k in retain}
    for element in ds:
        action = profile_action(element.tag)
        if element.is_empty or element.tag in keep:
            continue
        if action in ("X", "Z") or (action == "D" and element.VR != "SQ" and element.value != dummy_value(element)):
            return True
        if element.VR == "SQ" and any(has_identifiers(item, retain) for item in element.value):
            return True
    return False


def deidentify_dataset(ds: Dataset, retain: Collection[str] = ()) -> Dataset:
    """A copy of ``ds`` de-identified by the PS3.15 Basic Profile with the Retain UIDs Option.

    At any nesting depth: ``X`` attributes (and private ones, curve and overlay groups) are removed,
    ``Z`` ones emptied, ``D`` ones set to :func:`dummy_value`, ``U`` ones not kept by the option get a
    UID derived from the original by a hash (the same input UID always maps to the same output);
    sequences that stay are cleaned item by item. Sets ``PatientIdentityRemoved = "YES"`` (``"NO"``
    for an image whose ``BurnedInAnnotation`` is not ``"NO"``: text in the pixels is not removed),
    ``DeidentificationMethod`` and ``DeidentificationMethodCodeSequence`` (DCM 113100, 113110).
    Deterministic; the input is not modified.

    Args:
        retain: keywords kept as they are, e.g. ``("ROIName",)`` for names written by the caller
            rather than copied from a patient's files (a departure from the profile: the caller vouches
            for them).
    """
    keep = {tag_for_keyword(k) for k in retain}
    if None in keep:
        raise ValueError(f"retain: unknown DICOM keyword in {sorted(retain)}")
    out = copy.deepcopy(ds)
    _clean(out, keep)
    # Pixels may carry burned-in text: the profile's claim holds only where they were checked.
    checked = "PixelData" not in out or str(out.get("BurnedInAnnotation", "")).upper() == "NO"
    out.PatientIdentityRemoved = "YES" if checked else "NO"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    out.DeidentificationMethodCodeSequence = [_code(codes.DCM.BasicApplicationConfidentialityProfile),
                                              _code(codes.DCM.RetainUidsOption)]
    return out


def _clean(ds: Dataset, keep: set[int]) -> None:
    for tag in list(ds.keys()):
        if tag in keep:
            continue
        action, element = profile_action(tag), ds[tag]
        if action == "X":
            del ds[tag]
            continue
        if action == "Z":
            element.value = [] if element.VR == "SQ" else ("" if element.VR in STR_VR else None)
        elif action == "D" and element.VR != "SQ":
            element.value = dummy_value(element)
        elif action == "U" and not element.is_empty:
            uids = element.value if element.VM > 1 else [element.value]
            new = [generate_uid(entropy_srcs=[str(uid)]) for uid in uids]
            element.value = new if element.VM > 1 else new[0]
        if element.VR == "SQ":
            for item in element.value:
                _clean(item, keep)


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item
