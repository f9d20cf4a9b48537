"""The worker thread: one complete series at a time, from the queue, to an RTSTRUCT sent to the peer.

For each series it logs one line: who sent it, how many images, how many structures were contoured,
where the RTSTRUCT went and how long it took; or why nothing was sent (a refused or broken series, a
prediction or send failure). The series' files are removed afterwards, whatever happened.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from queue import Queue
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import pydicom

from ..io.atomic import atomic_output
from ..io.limits import ReadLimits
from ..io.volume import load_volume
from ..rt.structures import write_structures
from .config import NodeConfig
from .inbox import Batch
from .send import SendError, send_file

if TYPE_CHECKING:
    from ..rt.templates import Template
    from ..segmenter import Segmenter


class Worker(threading.Thread):
    """Contours queued :class:`~fewshotcx.node.inbox.Batch` objects until it gets ``None``.

    Args:
        queue: complete series (``None`` stops the thread).
        segmenter: a fitted Segmenter (the plan library as support), used by this thread only.
        names: the predicted structures, label value ``i`` → ``names[i - 1]``.
        template: the structure template (colours, types, derived structures), or None.
        config: the node's settings (peer, outbox, limits).
        log: one-line messages.
    """

    def __init__(self, queue: Queue, segmenter: "Segmenter", names: Sequence[str], template: Optional["Template"],
                 config: NodeConfig, log: Callable[[str], None]) -> None:
        super().__init__(name="fewshotcx-listen-worker", daemon=True)
        self.queue, self.segmenter, self.names, self.template = queue, segmenter, list(names), template
        self.config, self.log = config, log

    def run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            try:
                self.handle(batch)
            finally:
                shutil.rmtree(batch.folder, ignore_errors=True)

    def handle(self, batch: Batch) -> None:
        """Contour, keep and send one series; log one line."""
        start = time.monotonic()
        head = f"series {batch.series_uid} from {batch.calling}: received {batch.files} images"
        if batch.problem is not None:
            self.log(f"{head}, not contoured: {batch.problem}; nothing sent")
            return
        out = batch.folder.with_name(f"{batch.folder.name}-rtstruct.dcm")
        try:
            rois = self.contour(batch.folder, out)
        except Exception as exc:  # noqa: BLE001 - any failure on received data: log it, keep the node running
            self.log(f"{head}, not contoured: {one_line(exc)}; nothing sent")
            out.unlink(missing_ok=True)
            return
        try:
            kept = self.keep(out)
        except OSError as exc:
            kept = f", not kept in the outbox: {one_line(exc)}"
        try:
            send_file(out, self.config.forward, self.config.ae_title, self.config.timeout_seconds)
            sent = f"sent to {self.config.forward}"
        except (SendError, OSError) as exc:
            sent = f"not sent: {one_line(exc)}"
        finally:
            out.unlink(missing_ok=True)
        self.log(f"{head}, contoured {rois} structures, {sent}{kept}, {time.monotonic() - start:.1f} s")

    def contour(self, folder: Path, out: Path) -> int:
        """Predict on the series in ``folder`` and write the RTSTRUCT ``out`` in its patient, study and
        frame of reference; returns the number of ROIs."""
        limits = ReadLimits(root=folder, max_files=self.config.max_series_files)
        labels = self.segmenter.predict(load_volume(folder, limits=limits))
        write_structures(labels, self.names, folder, out, template=self.template)
        return len(pydicom.dcmread(out, stop_before_pixels=True).StructureSetROISequence)

    def keep(self, out: Path) -> str:
        """Copy the RTSTRUCT into the outbox (named by its SOP Instance UID); the log's words for it."""
        if self.config.outbox is None:
            return ""
        uid = str(pydicom.dcmread(out, stop_before_pixels=True).SOPInstanceUID)  # generated here, digits and dots
        target = self.config.outbox / f"RS_{uid}.dcm"
        with atomic_output(target) as tmp:
            shutil.copyfile(out, tmp)
        return f", kept as {target}"


def one_line(exc: BaseException) -> str:
    """An exception as one line of text."""
    return " ".join(str(exc).split()) or type(exc).__name__
