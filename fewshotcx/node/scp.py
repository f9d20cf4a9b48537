"""The Storage SCP (:class:`Node`): C-ECHO and C-STORE of CT images, calling AE titles checked at
association, received series contoured one at a time by a :class:`~fewshotcx.node.worker.Worker`.

Patient data lives only in a private temporary folder (mode 0700) while a series is received and
contoured; it is removed after each series and when the node stops (``with Node(...)`` or
:meth:`Node.stop`, which the CLI calls on SIGTERM and SIGINT). Only the outbox keeps RTSTRUCTs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from queue import Queue
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .config import NodeConfig
from .inbox import Inbox
from .worker import Worker

if TYPE_CHECKING:
    from ..rt.templates import Template
    from ..segmenter import Segmenter

#: Transfer syntaxes accepted for CT: uncompressed only (no decoder or inflater runs on received data).
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR little endian
MAX_ASSOCIATIONS = 4
_SWEEP_SECONDS = 0.2


class Node:
    """A running DICOM node (see the module docstring).

    Args:
        config: AE title, address, allowed callers, peer, outbox, limits.
        segmenter: fitted on the plan library; only the worker thread uses it.
        names: the predicted structures (label value order).
        template: structure template for colours, types and derived structures, or None.
        log: one-line messages (default: the ``fewshotcx.node`` logger at INFO).
    """

    def __init__(self, config: NodeConfig, segmenter: "Segmenter", names: Sequence[str],
                 template: Optional["Template"] = None, log: Optional[Callable[[str], None]] = None) -> None:
        self.config = config
        self.log = log or logging.getLogger("fewshotcx.node").info
        self.queue: Queue = Queue()
        self.root = Path(tempfile.mkdtemp(prefix="fewshotcx-listen-"))
        self.inbox = Inbox(self.root, config, self.queue, self.log)
        self.worker = Worker(self.queue, segmenter, names, template, config, self.log)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="fewshotcx-listen-sweeper", daemon=True)
        self._server = None

    def start(self) -> "Node":
        """Listen (raises OSError when the address cannot be bound) and start the worker."""
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import CTImageStorage, Verification

        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_seconds
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.require_calling_aet = list(self.config.allow)
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, list(TRANSFER_SYNTAXES))
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_RELEASED, self._on_release),
                    (evt.EVT_ABORTED, self._on_abort), (evt.EVT_CONN_CLOSE, self._on_release),
                    (evt.EVT_REJECTED, self._on_reject)]
        try:
            self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        except OSError:
            self.stop()
            raise
        self.worker.start()
        self._sweeper.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening, let the worker finish the series in hand (at most ``timeout`` s), remove every
        received file. Series still queued are dropped (logged)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        dropped = 0
        while not self.queue.empty():
            if self.queue.get_nowait() is not None:
                dropped += 1
        if dropped:
            self.log(f"stopping: {dropped} received series not contoured")
        if self.worker.is_alive():
            self.queue.put(None)
            self.worker.join(timeout)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sweep(self) -> None:
        while not self._stop.wait(_SWEEP_SECONDS):
            self.inbox.sweep()

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        return self.inbox.store(event.assoc, calling, event.encoded_dataset(include_meta=True))

    def _on_release(self, event) -> None:
        self.inbox.release(event.assoc)

    def _on_abort(self, event) -> None:
        self.inbox.abort(event.assoc)

    def _on_reject(self, event) -> None:
        requestor = event.assoc.requestor
        self.log(f"refused an association from {requestor.ae_title!r} at {requestor.address} "
                 "(calling AE title not in --allow)")
