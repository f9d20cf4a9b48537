"""The site's plan library: one folder per prior patient, each holding a CT series and one RTSTRUCT."""

from __future__ import annotations

from pathlib import Path

from ..io.grid import PathLike
from ..rt.structures import is_rtstruct

#: Most files looked at in one patient folder of the library.
MAX_PLAN_FILES = 5000


def library_plans(directory: PathLike) -> list[tuple[Path, Path]]:
    """``[(patient folder, its RTSTRUCT)]`` for every sub-folder of ``directory``, sorted by name.

    The CT series is read from the patient folder (the RTSTRUCT names the series it was drawn on).

    Raises:
        ValueError: ``directory`` is not a folder or has no patient folder; a patient folder with no
            RTSTRUCT, several, or too many files (one line naming it).
    """
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"--library {root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"--library {root} has no patient folders (one per prior patient: a CT series and "
                         "one RTSTRUCT)")
    plans = []
    for folder in folders:
        files = []
        for path in folder.rglob("*"):
            files.append(path)
            if len(files) > MAX_PLAN_FILES:
                raise ValueError(f"--library {folder} holds more than {MAX_PLAN_FILES} files")
        found = sorted(p for p in files if p.is_file() and not p.is_symlink() and is_rtstruct(p))
        if len(found) != 1:
            raise ValueError(f"--library {folder} holds {len(found) or 'no'} RTSTRUCT{'s' if found else ''}; "
                             "each patient folder needs exactly one")
        plans.append((folder, found[0]))
    return plans
