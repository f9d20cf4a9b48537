"""``RemoteSession``: a :class:`~fewshotcx.session.ContourSession` on a ``fewshotcx serve`` server.

It has the session's methods (``draw``, ``erase``, ``undo``, ``drawn``, ``drawn_mask``, ``suggest``,
``result``, the interactions ``add_box``, ``add_point``, ``add_scribble`` and ``accept``, plus ``close``)
and needs neither torch nor the model on this machine: only numpy, nibabel and the standard library's
HTTP client. Slice indices and masks are the image's own,
``array[:, :, k]`` of the file uploaded (of a :class:`Volume`, its array as given), as for
``ContourSession`` (docs/geometry.md, "Slice indices"; changed in 0.4.0). Every server error comes back as one
:class:`RemoteError` whose message is the server's one-line answer. Redirects are never followed
(the API key would go wherever they point): a redirect is a :class:`RemoteError` naming its target.

Example::

    from fewshotcx.client import RemoteSession
    s = RemoteSession("http://127.0.0.1:8000", "ct.nii.gz", api_key=open("key").read().strip())
    s.draw(40, mask40); s.draw(61, mask61)
    print(s.suggest()); result = s.result(); s.close()
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .compat import renamed_keywords, warn_renamed
from .io.atomic import atomic_output
from .io.volume import PathLike, Volume, label_dtype, load_volume, reorient_array
from .server.prompts import box_body, point_body, scribble_body
from .server.wire import decode_mask, encode_mask, nifti_bytes, zip_directory

__all__ = ["RemoteError", "RemoteSession"]


class RemoteError(RuntimeError):
    """The server refused a request or could not be reached (one-line message; ``status`` = HTTP
    status, 0 when unreachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: urllib then raises the 3xx answer as an ``HTTPError``."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class RemoteSession:
    """A contouring session held by a ``fewshotcx serve`` server.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8000"``.
        image: the volume to contour, uploaded: a NIfTI/NRRD path, a DICOM series folder (zipped on
            the way) or a :class:`Volume` (sent in its own layout, so its own slice indices hold).
            ``None`` with ``server_path``.
        api_key: the server's key (sent as ``Authorization: Bearer``), if it has one.
        classes: the label values that may be drawn (as for ``ContourSession``; ``labels=`` before
            0.4.0, deprecated).
        server_path: open this file or DICOM folder under the server's ``--data-root`` instead of
            uploading.
        timeout: seconds per request.
    Raises:
        RemoteError: the server refused the image or the key, or cannot be reached.
    """

    @renamed_keywords(labels="classes")
    def __init__(self, url: str, image: Union[Volume, PathLike, None] = None, api_key: Optional[str] = None,
                 classes: Optional[Sequence[int]] = None, *, server_path: Optional[str] = None,
                 timeout: float = 600.0, _session_id: Optional[str] = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.original: Optional[Volume] = None
        self._local: Optional[Path] = None  # an uploaded file, read for its layout when first needed
        query = {} if classes is None else {"classes": ",".join(str(int(v)) for v in classes)}
        if _session_id is not None:
            info = self._json("GET", f"/sessions/{urllib.parse.quote(_session_id)}")
        elif server_path is not None:
            info = self._json("POST", "/sessions", params={"path": server_path, **query})
        elif image is None:
            raise ValueError("give an image to upload or a server_path under the server's --data-root")
        else:
            name, body = self._upload(image)
            info = self._json("POST", "/sessions", params={"name": name, **query}, body=body)
        self.session_id: str = info["session_id"]
        self._info = info

    @classmethod
    def attach(cls, url: str, session_id: str, api_key: Optional[str] = None,
               image: Union[Volume, PathLike, None] = None) -> "RemoteSession":
        """Join an open session (e.g. one started in the browser viewer); ``image`` (optional, local)
        gives :meth:`result` that image's layout."""
        session = cls(url, api_key=api_key, _session_id=session_id)
        if image is not None:
            session.original = image if isinstance(image, Volume) else load_volume(image, canonical=False)
        return session

    def _upload(self, image: Union[Volume, PathLike]) -> tuple[str, bytes]:
        if isinstance(image, Volume):
            self.original = image
            return "image.nii.gz", nifti_bytes(image.array, image.affine)
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {path}")
        self._local = path
        if path.is_dir():
            return f"{path.name or 'series'}.zip", zip_directory(path)
        return path.name, path.read_bytes()

    # ------------------------------------------------------------------ HTTP
    def _request(self, method: str, route: str, params: Optional[dict] = None, body: Optional[bytes] = None,
                 content_type: str = "application/octet-stream") -> bytes:
        url = self.url + route + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = {"Content-Type": content_type} if body is not None else {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                target = exc.headers.get("Location", "?")
                raise RemoteError(f"the server redirects to {target}; RemoteSession follows no redirect "
                                  "(it would send the key there): give that URL if you trust it "
                                  f"(HTTP {exc.code})", exc.code) from None
            raise RemoteError(f"server: {_detail(exc)} (HTTP {exc.code})", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach {self.url}: {reason}") from None

    def _json(self, method: str, route: str, **kwargs: Any) -> Any:
        return json.loads(self._request(method, route, **kwargs))

    def _route(self, tail: str = "") -> str:
        return f"/sessions/{urllib.parse.quote(self.session_id)}{tail}"

    # ------------------------------------------------------------------ ContourSession methods
    @property
    def shape(self) -> tuple[int, int, int]:
        """The image's own ``(X, Y, Z)`` shape (a slice is ``(X, Y)``)."""
        return tuple(self._info["shape"])  # type: ignore[return-value]

    @property
    def depth(self) -> int:
        return self.shape[2]

    @property
    def declared(self) -> Optional[tuple[int, ...]]:
        """The label values that may be drawn (``classes=``, or those of the first non-empty draw)."""
        return None if self._info["classes"] is None else tuple(self._info["classes"])

    @property
    def labels(self) -> Optional[tuple[int, ...]]:
        """Deprecated name of :attr:`declared`."""
        warn_renamed("RemoteSession.labels", "RemoteSession.declared")
        return self.declared

    @property
    def completes_slices(self) -> bool:
        """Whether the server's model can complete drawn slices and :meth:`suggest` (``False`` for
        ``fewshotcx serve --backend atlas``; ``True`` from an older server, which does not say)."""
        return bool(self._info.get("completes_slices", True))

    @property
    def drawn(self) -> list[int]:
        """Drawn slices (the image's own indices), ascending."""
        self._info = self._json("GET", self._route())
        return list(self._info["drawn"])

    def draw(self, z: int, mask) -> None:
        """Record slice ``z`` (the image's own index) as drawn: ``mask`` is its own ``(X, Y)`` plane
        ``array[:, :, z]`` of label values in ``[0, 255]``."""
        array = np.asarray(mask)
        if array.shape != self.shape[:2]:
            raise ValueError(f"mask for slice {z} has shape {array.shape}; a slice of this image is {self.shape[:2]}")
        self._info = self._json("PUT", self._route(f"/slices/{int(z)}"), body=encode_mask(array))

    def erase(self, z: int) -> None:
        """Forget the drawing of slice ``z``."""
        self._info = self._json("DELETE", self._route(f"/slices/{int(z)}"))

    def undo(self) -> None:
        """Revert the last ``draw``, ``erase`` or interaction (``add_box``, ``add_point``, ``add_scribble``)."""
        self._info = self._json("POST", self._route("/undo"))

    def add_box(self, lo: Sequence[int], hi: Sequence[int], label: int = 1) -> None:
        """A box around the structure: inclusive own voxel corners ``(i, j, k)``; 2D (on slice ``k``)
        when ``lo[2] == hi[2]``."""
        self._interact("/box", box_body(lo, hi, label))

    def add_point(self, ijk: Sequence[int], positive: bool = True, label: int = 1) -> None:
        """A click on own voxel ``ijk``: inside the structure (``positive``) or outside it."""
        self._interact("/point", point_body(ijk, positive, label))

    def add_scribble(self, mask, positive: bool = True, label: int = 1) -> None:
        """A brush stroke: ``mask``, a bool array of the image's own shape (sent as its voxels, at most
        :data:`~fewshotcx.server.prompts.MAX_SCRIBBLE_VOXELS`), inside or outside the structure."""
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != self.shape:
            raise ValueError(f"a scribble is a boolean numpy array of the image's own shape {self.shape}")
        self._interact("/scribble", scribble_body(mask, positive, label))

    def _interact(self, tail: str, body: bytes) -> None:
        self._info = self._json("POST", self._route(tail), body=body, content_type="application/json")

    def accept(self) -> Volume:
        """The contour as accepted (as :meth:`result` returns it): ``Segmenter.add(image, contour)`` takes
        it as support."""
        return self._contour("POST", "/accept")

    def drawn_mask(self, z: int) -> np.ndarray:
        """The drawn slice ``z``: the image's own ``(X, Y)`` plane (int64)."""
        return decode_mask(self._request("GET", self._route(f"/slices/{int(z)}")), self.shape[:2])

    def suggest(self, n: int = 1) -> list[int]:
        """Up to ``n`` undrawn slices (own indices), best first, where drawing by hand would fix the most."""
        return [int(z) for z in self._json("GET", self._route("/suggest"), params={"n": int(n)})["slices"]]

    def result(self) -> Volume:
        """The label map on the image's grid: the uploaded image's layout (the server's file layout for
        ``server_path`` sessions)."""
        return self._contour("GET", "/result")

    def _contour(self, method: str, tail: str) -> Volume:
        """A label map the server returns as NIfTI, in the layout :meth:`result` gives."""
        data = self._request(method, self._route(tail), params={"format": "nifti"})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "result.nii.gz"
            path.write_bytes(data)
            result = load_volume(path, label=True)
            result.array = np.asarray(result.array)  # detach from the file before it goes
        array = result.array.astype(label_dtype(int(result.array.max(initial=0))))
        if self.original is None and self._local is not None:
            self.original = load_volume(self._local, canonical=False)
        if self.original is None:
            return result.with_array(array, label=True)
        return self.original.with_array(reorient_array(array, result.affine, self.original.affine), label=True)

    def preview(self, z: int, result: bool = False) -> bytes:
        """Slice ``z`` as PNG bytes: the drawing in red, and the completed result in green if
        ``result`` (radiological view: anterior up, the patient's right on the left)."""
        return self._request("GET", self._route(f"/slices/{int(z)}/png"), params={"result": str(bool(result)).lower()})

    def download(self, path: PathLike, format: str = "nifti", overwrite: bool = False) -> Path:
        """Write the result to ``path`` atomically: ``"nifti"`` (the image's own layout) or
        ``"rtstruct"`` (DICOM images only).

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False (checked before the request).
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        data = self._request("GET", self._route("/result"), params={"format": format})
        with atomic_output(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(data)
        return path

    def close(self) -> None:
        """Close the session on the server (its drawings are gone)."""
        self._json("DELETE", self._route())

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detail(exc: "urllib.error.HTTPError") -> str:
    """The server's one-line ``detail`` (or the HTTP reason when the answer is not ours)."""
    try:
        return " ".join(str(json.loads(exc.read())["detail"]).split())
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)
