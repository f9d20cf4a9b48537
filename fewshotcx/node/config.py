"""The node's settings: AE titles, the peer it forwards to, limits and timing."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: AE titles: 1-16 characters of the DICOM default repertoire, no backslash, not only spaces (PS3.5 6.2).
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity on the network."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """What ``fewshotcx listen`` was asked to do.

    Attributes:
        ae_title: the node's own AE title (the called AE title senders use).
        host, port: where it listens (``127.0.0.1`` by default).
        allow: calling AE titles accepted; empty: any (only allowed on loopback).
        forward: the peer each RTSTRUCT is C-STOREd to.
        outbox: a folder that also receives each RTSTRUCT, or None.
        idle_seconds: a series with no new file for this long is complete even before its association ends.
        max_file_bytes: a received file larger than this is refused (and its series not contoured).
        max_series_files: a series with more files is refused.
        timeout_seconds: network, ACSE and DIMSE timeouts, for receiving and sending.
    """

    ae_title: str
    host: str
    port: int
    allow: tuple[str, ...]
    forward: Peer
    outbox: Optional[Path] = None
    idle_seconds: float = 5.0
    max_file_bytes: int = 64 * 1024 * 1024
    max_series_files: int = 2000
    timeout_seconds: float = 30.0


def check_ae_title(text: str, option: str) -> str:
    """``text`` without surrounding spaces when it is a valid AE title, else a one-line ValueError."""
    title = text.strip()
    if not _AE_TITLE.fullmatch(title):
        raise ValueError(f"{option}: {text!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return title


def parse_peer(text: str, option: str = "--forward") -> Peer:
    """``AE@HOST:PORT`` → :class:`Peer` (``[v6]`` hosts in brackets), else a one-line ValueError."""
    title, at, address = text.rpartition("@")
    host, colon, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not at or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{option} expects AE@HOST:PORT (e.g. ORTHANC@10.0.0.5:4242), got {text!r}")
    return Peer(check_ae_title(title, option), host, int(port))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
