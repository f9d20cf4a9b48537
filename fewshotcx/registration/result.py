"""The outcome of a registration: its transform, mode, final metric and gate measures; save/load."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..io.atomic import atomic_output
from ..io.volume import PathLike, VolumeError
from .convert import load_sitk
from .gates import Quality

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk


@dataclass
class Registration:
    """A fixed → moving mapping and how good it is.

    Attributes:
        transform: SimpleITK transform mapping fixed physical points (LPS mm) to moving ones.
        mode: ``"rigid"``, ``"affine"`` or ``"deformable"``.
        metric: final Mattes mutual information at full working resolution (lower = better; NaN after
            :meth:`load`).
        quality: the gate's measurements; ``None`` after :meth:`load` of a file without them.
    """

    transform: "sitk.Transform"
    mode: str
    metric: float = math.nan
    quality: Optional[Quality] = None

    @property
    def ok(self) -> bool:
        """Whether the quality gate was run and passed."""
        return self.quality is not None and self.quality.ok

    def save(self, path: PathLike, overwrite: bool = False) -> None:
        """Write the transform in SimpleITK's format (``.tfm``/``.txt``/``.h5``), atomically, plus a
        ``<path>.json`` side file with ``mode``, ``metric`` and ``quality``."""
        sitk = load_sitk()
        path = Path(path)
        meta = Path(str(path) + ".json")
        if meta.exists() and not overwrite:
            raise FileExistsError(f"{meta} exists; pass overwrite=True to replace it")
        with atomic_output(path, overwrite=overwrite) as tmp:
            sitk.WriteTransform(self.transform, str(tmp))
        with atomic_output(meta, overwrite=overwrite) as tmp:
            info = {"mode": self.mode, "metric": self.metric,
                    "quality": None if self.quality is None else self.quality.as_dict()}
            tmp.write_text(json.dumps(info, indent=1))

    @classmethod
    def load(cls, path: PathLike) -> "Registration":
        """Read a transform written by :meth:`save` (the side file is optional)."""
        sitk = load_sitk()
        path = Path(path)
        if not path.is_file():
            raise VolumeError(f"no such transform file: {path}")
        try:
            transform = sitk.ReadTransform(str(path))
        except RuntimeError as err:
            raise VolumeError(f"{path}: not a readable SimpleITK transform ({str(err).strip().splitlines()[-1]})") from None
        meta = Path(str(path) + ".json")
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        quality = info.get("quality")
        return cls(transform, info.get("mode", "unknown"), float(info.get("metric", math.nan)),
                   None if quality is None else Quality(**quality))
