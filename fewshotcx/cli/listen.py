"""``fewshotcx listen``: a DICOM node that contours each CT series it receives from the site's plan
library and C-STOREs the RTSTRUCT to a PACS or planning system (docs/dicom-node.md).

Every argument is checked before anything starts (one line, exit 2); then the library is read and
the Segmenter fitted once; then the node listens until SIGTERM or SIGINT (exit 0), logging one line
per series on stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path

from .common import POSITIVE, CliError, add_model_options, check_output_dir, number
from .predict import model_options, structure_list, support_volumes, template_structures

DEFAULT_PORT = 11112


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx listen``."""
    p = subparsers.add_parser(
        "listen", help="run a DICOM node: receive CT series, contour them, send RTSTRUCTs to a PACS",
        description="A Storage SCP (C-ECHO, C-STORE of CT): each received series is contoured with the plan "
                    "library as support and its RTSTRUCT, in the series' patient, study and frame of reference, "
                    "is C-STOREd to --forward (and written to --outbox). One log line per series on stderr.")
    p.add_argument("--library", required=True, metavar="DIR",
                   help="the plan library: one folder per prior patient, each with a CT series and one RTSTRUCT")
    p.add_argument("--structures", default=None, metavar="A,B,...",
                   help="structures to contour (ROI names of the library matched through TG-263 synonyms)")
    p.add_argument("--template", default=None, metavar="NAME|FILE",
                   help="structure template (cervix, thorax or a .toml file); --structures picks from it")
    p.add_argument("--ae-title", default="FEWSHOTCX", help="this node's AE title (default FEWSHOTCX)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                   "address needs --allow)")
    p.add_argument("--port", type=number(int, low=1, high=65535), default=DEFAULT_PORT,
                   help=f"DICOM port (default {DEFAULT_PORT})")
    p.add_argument("--forward", required=True, metavar="AE@HOST:PORT",
                   help="where each RTSTRUCT is C-STOREd (the PACS or planning system)")
    p.add_argument("--allow", default=None, metavar="AE1,AE2",
                   help="calling AE titles accepted; others are rejected at association (default on loopback: any)")
    p.add_argument("--outbox", default=None, metavar="DIR", help="also write each RTSTRUCT into this folder")
    p.add_argument("--idle", type=POSITIVE, default=5.0, metavar="SECONDS",
                   help="a series with no new image for this long is complete (default 5)")
    p.add_argument("--max-file-mb", type=POSITIVE, default=64.0,
                   help="a received file larger than this is refused, and its series not contoured (default 64)")
    add_model_options(p)
    p.set_defaults(func=run)


def check_arguments(args: argparse.Namespace):
    """Every argument checked: ``(NodeConfig, template or None, names to predict, library plans)``."""
    from ..node import NodeConfig, check_ae_title, library_plans, parse_peer
    from ..node.config import is_loopback

    if args.structures is None and args.template is None:
        raise CliError("say what to contour: --structures A,B,... or --template NAME")
    template, names = template_structures(args.template, structure_list(args.structures))
    allow = tuple(check_ae_title(t, "--allow") for t in args.allow.split(",")) if args.allow is not None else ()
    if not is_loopback(args.host) and not allow:
        raise CliError(f"--host {args.host} listens beyond this machine and needs --allow AE1,AE2 "
                       "(the AE titles of the senders)")
    outbox = None if args.outbox is None else check_output_dir(args.outbox, "--outbox")
    config = NodeConfig(ae_title=check_ae_title(args.ae_title, "--ae-title"), host=args.host, port=args.port,
                        allow=allow, forward=parse_peer(args.forward), outbox=outbox, idle_seconds=args.idle,
                        max_file_bytes=int(args.max_file_mb * 1024 * 1024))
    return config, template, names, library_plans(args.library)


def run(args: argparse.Namespace) -> None:
    from ..node import Node
    from ..segmenter import Segmenter

    config, template, names, plans = check_arguments(args)
    options = model_options(args)
    log = _logger()
    if config.outbox is not None:
        Path(config.outbox).mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")  # the per-series log line is the node's report
    images, labels = support_volumes([(str(folder), str(rs)) for folder, rs in plans], names)
    seg = Segmenter(device=args.device, axis=args.axis, seed=args.seed, modality=args.modality, **options)
    seg.fit(images=list(images), labels=list(labels))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node = Node(config, seg, names, template, log=log.info)
    try:
        node.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    try:
        log.info(f"listening on {config.host}:{config.port} as {config.ae_title}: {len(plans)} prior plan(s), "
                 f"{', '.join(names)}; forwarding to {config.forward}")
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
        log.info("stopped")


def _logger() -> logging.Logger:
    """``fewshotcx.node`` logging one line per message on stderr; pynetdicom's own logging silenced."""
    log = logging.getLogger("fewshotcx.node")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s fewshotcx listen: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    return log
