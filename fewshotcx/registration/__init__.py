"""Image registration between two patients' scans (SimpleITK), warping onto the query's grid,
the quality gate, and label fusion.

``register(moving, fixed)`` finds where each point of ``fixed`` (the query) lies in ``moving`` (a
labelled support scan); ``warp(volume, registration, fixed)`` resamples anything on ``moving``'s grid
onto ``fixed``'s exact canonical grid and affine. This is what radiotherapy departments call atlas
registration. :func:`register_support` is the one path by which the registered/auto support
strategies and the atlas backends bring support volumes onto a query, and :func:`vote_share` the one
majority vote they fuse labels with.

Modules, one concern each: :mod:`~fewshotcx.registration.convert` (SimpleITK ↔ Volume),
:mod:`~fewshotcx.registration.register` (rigid/affine/demons), :mod:`~fewshotcx.registration.gates`
(the quality gate and its calibrated thresholds), :mod:`~fewshotcx.registration.result`
(:class:`Registration`, save/load), :mod:`~fewshotcx.registration.warping` (warp, coverage),
:mod:`~fewshotcx.registration.fusion` (majority vote), :mod:`~fewshotcx.registration.onto_query`
(support onto a query), :mod:`~fewshotcx.registration.cache` (registrations memoised per fitted support). This package sits below the pipeline and the backends and imports neither.

Conventions: inputs are :class:`~fewshotcx.Volume` objects (arrays ``(X, Y, Z)``, RAS affines);
:attr:`Registration.transform` follows SimpleITK: it maps a *fixed* physical point (LPS mm) to the
*moving* physical point it corresponds to. Deformable transforms hold a displacement field: save
them as ``.h5`` (or ``.tfm``, larger).
"""

from .cache import DEFAULT_CACHE_BYTES, RegistrationCache
from .convert import FLIP, RegistrationError, from_sitk, sitk_affine, to_sitk
from .fusion import vote_share, weighted_share
from .gates import (
    MIN_BODY_DICE, MIN_MARGIN, MIN_NCC, MIN_OVERLAP, SHIFT_MM, THRESHOLDS, Quality, accepts, assess, body_mask,
)
from .onto_query import RegisteredVolume, fingerprint, register_onto, register_support, volume_name
from .register import MIN_SAMPLES, MODES, Mode, measure, register
from .result import Registration
from .warping import coverage, warp

__all__ = [
    "DEFAULT_CACHE_BYTES", "FLIP", "MIN_BODY_DICE", "MIN_MARGIN", "MIN_NCC", "MIN_OVERLAP", "MIN_SAMPLES", "MODES",
    "Mode", "Quality", "RegisteredVolume", "Registration", "RegistrationCache", "RegistrationError", "SHIFT_MM",
    "THRESHOLDS", "accepts", "assess", "body_mask", "coverage", "fingerprint", "from_sitk", "measure", "register",
    "register_onto", "register_support", "sitk_affine", "to_sitk", "volume_name", "vote_share", "warp",
    "weighted_share",
]
