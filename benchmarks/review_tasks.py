"""The real tasks that the uncertainty, calibration and active-contouring benchmarks share.

Downsampled so that a whole benchmark stays within minutes on a shared CPU: brains at 2 mm (the
deep-grey-matter slab of :func:`common.brain_cases`), pyradiomics lung CTs at 2.5 mm in-plane (their
5 mm slices kept), slicerio's chest CT as shipped (3 mm in-plane, 10 mm slices).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from common import brain_cases, CrossTask, pyradiomics_case, SliceTask
from fewshotcx import datasets

LUNG_IN_PLANE_MM = 2.5


@lru_cache(maxsize=None)
def lung_case(name: str) -> datasets.Case:
    """A pyradiomics lung CT and its lesion at :data:`LUNG_IN_PLANE_MM` in-plane (slices kept)."""
    case = pyradiomics_case(name)
    spacing = (LUNG_IN_PLANE_MM, LUNG_IN_PLANE_MM, case.image.spacing[2])
    return replace(case, image=datasets.resample_to_spacing(case.image, spacing),
                   labels=datasets.resample_to_spacing(case.labels, spacing))


def slice_tasks(quick: bool = False) -> list[SliceTask]:
    """Five same-volume tasks (one structure contoured on a few of its own slices)."""
    colin, mni = brain_cases(2.0)
    if quick:
        return [SliceTask(mni, "left thalamus"), SliceTask(lung_case("lung2"), "lesion")]
    return [SliceTask(colin, "left hippocampus"), SliceTask(mni, "left hippocampus"), SliceTask(mni, "left thalamus"),
            SliceTask(lung_case("lung2"), "lesion"), SliceTask(datasets.slicerio_chest(), "right lung")]


def cross_tasks(quick: bool = False) -> list[CrossTask]:
    """Cross-subject tasks: brain structures both ways between Colin27 and MNI152 (lung1's lesion spans
    three slices at 5 mm, too few to pair with lung2's)."""
    colin, mni = brain_cases(2.0)
    structures = ("left thalamus",) if quick else ("left thalamus", "left hippocampus")
    return [CrossTask(a, b, s) for s in structures for a, b in ((colin, mni), (mni, colin))]
