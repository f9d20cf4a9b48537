from __future__ import annotations

import os

import pytest

from fewshotcx.io.atomic import atomic_output


def test_failure_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target, overwrite=True) as tmp:
            # hidden, beside the target: the "no temporary file left" checks elsewhere look for a leading dot
            assert tmp.name.startswith(".out.nii.gz.") and tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_success_replaces_with_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "a.dcm") as tmp:
            tmp.write_bytes(b"new")
    finally:
        os.umask(old)
    assert (tmp_path / "a.dcm").read_bytes() == b"new"
    assert (tmp_path / "a.dcm").stat().st_mode & 0o777 == 0o640


def test_refuses_existing_and_missing_directory(tmp_path):
    (tmp_path / "x").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_output(tmp_path / "x"):
            pass
    with pytest.raises(FileNotFoundError, match="directory"):
        with atomic_output(tmp_path / "missing" / "x"):
            pass


def test_a_file_that_appears_while_writing_is_not_replaced(tmp_path):
    """The existence check happens before writing; publishing must not replace a file created in
    between (another process or worker): it was an unconditional os.replace."""
    path = tmp_path / "out.nii.gz"
    with pytest.raises(FileExistsError, match="appeared while"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"ours")
            path.write_bytes(b"theirs")  # someone else's file, created meanwhile
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]  # no temporary left
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_bytes(b"ours")
    assert path.read_bytes() == b"ours"
