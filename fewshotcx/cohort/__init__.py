"""Cohort-scale segmentation on Ray (``fx.cohort``): a manifest of patients, one labelled support
set, any number of workers on one machine or a cluster; resumable and fault-tolerant.

Example::

    import fewshotcx as fx
    results = fx.cohort.run("queries.csv", support=[("p1_ct.nii.gz", "p1_gtv.nii.gz")], out_dir="out",
                            segmenter_options={"seed": 0})
    print(results.summary())

Needs the ``cohort`` extra (``pip install 'fewshotcx[cohort]'``); see docs/cohort.md.
"""

from .manifest import Patient, read_manifest
from .runner import CohortResults, require_ray, run

__all__ = ["CohortResults", "Patient", "read_manifest", "require_ray", "run"]
