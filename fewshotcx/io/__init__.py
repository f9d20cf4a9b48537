"""Reading and writing volumes: NIfTI/NRRD/DICOM series, RTSTRUCT, atomic writes.

``grid`` (the Volume type and its geometry) is imported by every reader; ``volume`` (NIfTI/NRRD
files and the DICOM dispatch) imports ``grid`` and ``dicom``, so no module imports a reader back.

Everything lands in a :class:`Volume` that carries its affine and the way back to its file.
"""

from .atomic import atomic_output
from .limits import ReadLimits
from .tables import read_csv, write_csv
from .volume import PathLike, SourceGeometry, Volume, VolumeError, binary_mask, check_pair, label_dtype, load_volume, reorient_array, save_volume

__all__ = ["PathLike", "ReadLimits", "SourceGeometry", "Volume", "VolumeError", "atomic_output", "binary_mask", "check_pair",
           "label_dtype", "load_volume", "read_csv", "reorient_array", "save_volume", "write_csv"]
