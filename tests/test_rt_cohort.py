"""Cohorts from plans: DICOM series queries, support given as previous plans (CT + RTSTRUCT), one named
RTSTRUCT per patient in that patient's study (generated series, tiny model, a one-CPU local Ray)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fewshotcx import rt
from fewshotcx.io.dicom import scan_series
from fewshotcx.io.volume import load_volume

from rt_cases import make_plan, make_query, tiny_weights

ray = pytest.importorskip("ray")


def test_cohort_writes_one_named_rtstruct_per_patient(tmp_path):
    from fewshotcx import cohort

    ct, rs = make_plan(tmp_path)
    query = make_query(tmp_path)
    names = ["Lung_L", "SpinalCord", "GTV"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        support = [rt.support_from(ct, rs, names)]
    here = str(Path(__file__).resolve().parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([here, str(Path(here).parent)] + ([old] if old else []))
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        results = cohort.run([{"id": "new7", "series": str(query)}], support=support, out_dir=tmp_path / "out",
                             workers=1, structures=names, progress=False,
                             segmenter_options={"weights": str(tiny_weights(tmp_path / "tiny.pt")), "device": "cpu"})
    finally:
        ray.shutdown()
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    assert [r["status"] for r in results.rows] == ["ok"], results.rows
    written = pydicom.dcmread(tmp_path / "out" / "new7.rtstruct.dcm")
    ct_header = pydicom.dcmread(scan_series(query).files[0])
    assert [r.ROIName for r in written.StructureSetROISequence] == names
    assert (written.PatientID, written.StudyInstanceUID) == (ct_header.PatientID, ct_header.StudyInstanceUID)
    labels = load_volume(tmp_path / "out" / "new7.nii.gz", label=True)
    named, sidecar_names = rt.load_labels(tmp_path / "out" / "new7.nii.gz")  # the sidecar predict also writes
    assert sidecar_names == names and np.array_equal(named.array, labels.array)
    back = rt.read_rtstruct(tmp_path / "out" / "new7.rtstruct.dcm", query)
    for value, name in enumerate(names, start=1):
        np.testing.assert_array_equal(back[name].array, (labels.array == value).astype(np.uint8))
