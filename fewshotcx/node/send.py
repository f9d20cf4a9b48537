"""C-STORE SCU: send one file to a peer (the PACS or planning system behind the node)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from .config import Peer


class SendError(RuntimeError):
    """The peer could not be reached, refused the association or did not store the file."""


def send_file(path: Path, peer: Peer, calling_ae: str, timeout: float) -> None:
    """C-STORE ``path`` to ``peer`` as ``calling_ae``, waiting at most ``timeout`` seconds per step.

    Raises:
        SendError: one line saying what went wrong.
    """
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise SendError(f"{peer} {'refused the association' if assoc.is_rejected else 'did not answer'}")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(status.get("Status", -1)) if status else -1
    if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # success, or stored with a warning
        raise SendError(f"{peer} did not store the RTSTRUCT (status {'none' if code < 0 else hex(code)})")
