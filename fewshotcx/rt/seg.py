"""DICOM Segmentation (SEG) output through highdicom (``pip install 'fewshotcx[dicom]'``).

A named label map on a DICOM image series becomes one binary SEG object referencing every slice, one
segment per structure (segment number = label value, label = structure name), in the series' patient
and study. Empty structures are kept as segments without frames.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from ..io.atomic import atomic_output
from ..io.dicom import scan_series
from ..io.grid import PathLike, Volume
from .rtstruct import on_series_grid
from .names import check_names, interpreted_type, tg263_name


def _require_highdicom():
    try:
        import highdicom
    except ImportError:
        raise ValueError("DICOM SEG output needs highdicom: pip install 'fewshotcx[dicom]'") from None
    return highdicom


def write_seg(labels: Volume, names: Sequence[str], series: PathLike, out: PathLike, overwrite: bool = False) -> Path:
    """Write a named label map (values ``1..len(names)``, on ``series``' grid) as a DICOM SEG file.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False. ValueError: bad names, highdicom
            missing. VolumeError: labels off the series grid.
    """
    hd = _require_highdicom()
    from pydicom.sr.codedict import codes

    from .. import __version__

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    names = check_names(names)
    found = scan_series(series)
    array = on_series_grid(labels, found, "labels", binary=False)  # (X, Y, Z) in the series' layout
    if int(array.max(initial=0)) > len(names):
        raise ValueError(f"the label map has value {int(array.max())} but only {len(names)} names")
    # (slices, rows, columns, segments): one binary channel per structure
    pixels = np.stack([array.transpose(2, 1, 0) == v for v in range(1, len(names) + 1)], axis=-1).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(name="fewshotcx", version=__version__,
                                                    family=codes.DCM.ArtificialIntelligence)
    descriptions = []
    for number, name in enumerate(names, start=1):
        target = interpreted_type(name) in ("GTV", "CTV", "PTV")
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure if target
            else codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Neoplasm if target else codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=tg263_name(name) or name))
    sources = [pydicom.dcmread(path) for path in found.files]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's notes on omitted optional attributes
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="fewshotcx", manufacturer_model_name="fewshotcx", software_versions=__version__,
            device_serial_number="0", omit_empty_frames=True)
    with atomic_output(out, overwrite) as tmp:
        seg.save_as(str(tmp))
    return out
