"""The settings of one training run (``fewshotcx train`` options), checked on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

#: Real data sources ``--data`` accepts (loaders in :mod:`fewshotcx.datasets`), plus ``"synthetic"`` and
#: ``"ssl-ct"`` (unlabelled CTs as supervoxel and Hounsfield tasks: :mod:`fewshotcx.training.selfsupervised`).
DATA_SOURCES = ("synthetic", "slicerio", "pyradiomics", "brain", "nilearn", "sts", "ssl-ct")

@dataclass
class TrainConfig:
    """Everything a training run depends on (stored in its checkpoints; see ``fewshotcx train -h``).

    ``width`` gives every CrossBlock the same feature count (v1: 64); ``size`` is the slice size
    (``None`` = the init checkpoint's, else 64); ``context`` the 2.5D neighbours (``None`` = the init
    checkpoint's, else 0); ``support_size`` the ``(min, max)`` support set size; ``val_max_tasks``
    caps the validation tasks per dataset (evenly spaced), ``val_episodes`` the fixed episodes per task.
    ``pixel_mm``/``context_mm`` select physical framing (slices resampled to ``pixel_mm`` around the
    body, neighbours ``context_mm`` apart; ``None`` = the init checkpoint's, else the field-of-view fit),
    recorded in the checkpoint so inference frames slices the same way. ``volume_cache``: a file of
    the real sources' loaded volumes, read when it exists, else written (a run can move to a machine
    without the data sources; :mod:`fewshotcx.training.volume_cache`). ``max_seconds``: a time budget;
    the run stops when it is spent, and the cosine schedule decays to 0 by then (or by ``steps``).
    """

    data: list[str] = field(default_factory=lambda: ["synthetic"])
    volume_cache: Optional[str] = None
    images: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    init: Optional[str] = None
    steps: int = 1000
    width: int = 32
    size: Optional[int] = None
    context: Optional[int] = None
    pixel_mm: Optional[float] = None
    context_mm: Optional[float] = None
    support_size: tuple[int, int] = (4, 16)
    queries: int = 4
    episodes_per_step: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup: int = 50
    synthetic_ratio: float = 0.3
    synthetic_families: int = 40
    synthetic_val_families: int = 4
    synthetic_shape: tuple[int, int, int] = (64, 64, 16)
    synthetic_labels: int = 8
    axes: list[str] = field(default_factory=lambda: ["axial", "coronal", "sagittal"])
    margin: float = 0.25
    max_slices: int = 48
    position_prob: float = 0.5
    augment: bool = True
    holdout_volumes: list[str] = field(default_factory=list)
    holdout_structures: list[str] = field(default_factory=list)
    report_volumes: list[str] = field(default_factory=list)
    report_structures: list[str] = field(default_factory=list)
    val_every: int = 100
    val_episodes: int = 2
    val_max_tasks: int = 24
    checkpoint_every: int = 500
    out: str = "fewshotcx-runs/universeg.pt"
    export: Optional[str] = None
    export_dtype: str = "float16"
    max_seconds: Optional[float] = None
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    #: Fields that may differ between a run and its resumption.
    RESUMABLE_CHANGES = ("volume_cache", "max_seconds", "steps", "resume", "overwrite", "progress", "device", "export", "export_dtype", "checkpoint_every")

    def __post_init__(self) -> None:
        self.support_size = tuple(int(v) for v in self.support_size)  # type: ignore[assignment]
        self.synthetic_shape = tuple(int(v) for v in self.synthetic_shape)  # type: ignore[assignment]
        self.data, self.axes = list(self.data), list(self.axes)
        unknown = [d for d in self.data if d not in DATA_SOURCES]
        if unknown:
            raise ValueError(f"unknown --data {unknown[0]!r}: expected one of {', '.join(DATA_SOURCES)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"got {len(self.images)} --images but {len(self.labels)} --labels: give them in pairs")
        if self.steps < 0 or self.width < 1 or self.queries < 1 or self.episodes_per_step < 1:
            raise ValueError("steps must be >= 0 and width, queries, episodes_per_step >= 1")
        lo, hi = self.support_size if len(self.support_size) == 2 else (0, 0)
        if not 1 <= lo <= hi:
            raise ValueError(f"support_size must be (min, max) with 1 <= min <= max, got {self.support_size}")
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise ValueError(f"size must be a multiple of 8 (UniverSeg pools three times), got {self.size}")
        if any(v is not None and v <= 0 for v in (self.pixel_mm, self.context_mm)):
            raise ValueError("pixel_mm and context_mm must be positive")
        if self.context is not None and self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0.0 <= self.synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {self.synthetic_ratio}")
        if self.export_dtype not in ("float16", "float32"):
            raise ValueError(f"export_dtype must be 'float16' or 'float32', got {self.export_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), as stored in checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
