"""``fewshotcx serve``: contouring sessions over HTTP (browser viewer at ``/``, napari, RemoteSession).

Binds to loopback by default. Any other ``--host`` needs ``--api-key-file`` (refused otherwise, before
anything is loaded); put TLS in front (a reverse proxy) for anything beyond one machine: the key
travels in a header. With ``--support IMAGE:LABEL`` the model is fitted on those prior patients once,
at start, and every session starts from its prediction (``ContourSession(image, fitted_segmenter)``);
without, sessions start blank. ``--backend universeg+atlas`` or ``atlas`` (with ``--support``) starts
them from support registered onto each image instead: on the T1 brains of ``benchmarks/interactive_protocol.py``
the registered starts begin far above the default's (docs/interactive.md). With ``--learn`` each
accepted contour joins the model's support (in memory, at most ``--max-support`` volumes): the next
patient's session starts from a model that has seen it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, check_number, check_support, support_pair
from .predict import structure_list, support_volumes

#: ``--backend`` choices: the slab backends a blank session completes drawn slices with, and the
#: multi-atlas one, which only gives a fitted model's starting contour.
SESSION_BACKENDS = ("universeg", "universeg+atlas", "atlas")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshotcx serve``."""
    p = subparsers.add_parser("serve", help="contouring sessions over HTTP: web viewer, napari, RemoteSession")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", default=None,
                   help="file holding the API key; required for a non-loopback --host")
    p.add_argument("--max-sessions", type=int, default=8, help="sessions held at once (default 8)")
    p.add_argument("--data-root", default=None, help="folder whose files sessions may open by path")
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="upload size limit (default 512 MB)")
    p.add_argument("--max-image-mb", type=float, default=1024.0,
                   help="decoded image size limit, checked before decoding (default 1024 MB)")
    p.add_argument("--idle-minutes", type=float, default=60.0, help="close sessions idle this long")
    p.add_argument("--max-uploads", type=int, default=2, help="uploads received at once (default 2)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may stall before it is refused (default 30)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send its request headers (default 10)")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    p.add_argument("--max-connections", type=int, default=64,
                   help="open connections and requests at once; more are answered 503 (default 64)")
    p.add_argument("--support", action="append", type=support_pair, default=None, metavar="IMAGE:LABEL",
                   help="a labelled prior patient (repeat for more; a plan CT_DIR:RS.dcm with --structures): the "
                        "model is fitted on them once and every session starts from its prediction (default: "
                        "sessions start blank)")
    p.add_argument("--structures", default=None, metavar="A,B,...",
                   help="structures to learn from --support RTSTRUCTs (TG-263 synonyms match)")
    p.add_argument("--learn", action="store_true",
                   help="add each accepted contour (POST /sessions/ID/accept) to the model's support: sessions "
                        "opened later start from it (in memory only; off by default)")
    p.add_argument("--max-support", type=int, default=16,
                   help="support volumes the model may hold with --learn (default 16; one more is refused)")
    p.add_argument("--backend", default="universeg", choices=list(SESSION_BACKENDS),
                   help="what gives a session its starting contour from --support: universeg (default, in "
                        "context), universeg+atlas (in context on registered support, fused with the registered "
                        "labels) or atlas (the registered labels; needs --support)")
    p.add_argument("--weights", default="default", help="'default', 'official' or a checkpoint path")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    p.add_argument("--modality", default="auto", choices=["auto", "ct", "mr"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def server_options(args: argparse.Namespace) -> dict:
    """Checked options: ``{"api_key", "data_root", "limits"}``.

    Raises:
        CliError: a non-loopback host without a key, an unreadable or empty key file, a bad
            ``--data-root``, a port outside 1-65535, a limit that is not a finite positive number, or a
            ``--support`` input that does not exist (``--structures`` without ``--support``).
    """
    from ..server import is_loopback

    if args.support:
        check_support(args.support)
    elif args.structures is not None:
        raise CliError("--structures names what to learn from --support: give --support IMAGE:LABEL too")
    if args.backend == "atlas" and not args.support:
        raise CliError("--backend atlas starts sessions from --support registered onto them: give --support "
                       "IMAGE:LABEL (blank sessions complete drawn slices, which needs --backend universeg)")
    if args.backend == "atlas" and args.weights != "default":
        raise CliError("--weights does not apply to --backend atlas (it has no model)")

    key = None
    if args.api_key_file is not None:
        path = Path(args.api_key_file)
        if not path.is_file():
            raise CliError(f"--api-key-file {path} does not exist")
        key = path.read_text(encoding="utf-8").strip()
        if not key or any(c.isspace() for c in key):
            raise CliError(f"--api-key-file {path} must hold one key without spaces")
    elif not is_loopback(args.host):
        raise CliError(f"refusing to serve on non-loopback host {args.host!r} without --api-key-file "
                       "(and put TLS in front of it)")
    root = None
    if args.data_root is not None:
        root = Path(args.data_root)
        if not root.is_dir():
            raise CliError(f"--data-root {root} is not a directory")
    check_number(args.port, "--port", low=1, high=65535)
    check_number(args.max_sessions, "--max-sessions", low=1)
    check_number(args.max_support, "--max-support", low=1)
    for option in ("max_upload_mb", "max_image_mb", "idle_minutes", "body_timeout", "header_timeout",
                   "keep_alive_timeout"):
        check_number(getattr(args, option), "--" + option.replace("_", "-"), positive=True)
    if args.max_image_mb * (1 << 20) < 1:
        raise CliError(f"--max-image-mb must be at least one byte's worth, got {args.max_image_mb}")
    check_number(args.max_uploads, "--max-uploads", low=1)
    check_number(args.max_connections, "--max-connections", low=1)
    from ..server.limits import Limits

    limits = Limits(max_uploads=args.max_uploads, body_timeout=args.body_timeout, header_timeout=args.header_timeout,
                    keep_alive_timeout=args.keep_alive_timeout, max_connections=args.max_connections)
    return {"api_key": key, "data_root": root, "limits": limits}


def run(args: argparse.Namespace) -> None:
    options = server_options(args)
    try:
        import uvicorn
    except ImportError:
        raise CliError("fewshotcx serve needs the [serve] extra: pip install 'fewshotcx[serve]'") from None
    from ..segmenter import Segmenter
    from ..server import SessionStore, create_app
    from ..server.limits import uvicorn_config

    segmenter = Segmenter(backend=args.backend, weights=args.weights, device=args.device, modality=args.modality,
                          seed=args.seed, progress=False)
    if args.support:
        images, labels = support_volumes(args.support, structure_list(args.structures))
        segmenter.fit(images=images, labels=labels)
    store = SessionStore(segmenter, max_sessions=args.max_sessions, idle_seconds=args.idle_minutes * 60,
                         max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                         max_image_bytes=int(args.max_image_mb * (1 << 20)), learns=args.learn,
                         max_support=args.max_support)
    app = create_app(store, **options)
    try:  # on SIGTERM/SIGINT the app's shutdown closes the store before uvicorn re-raises the signal
        uvicorn.Server(uvicorn_config(app, options["limits"], host=args.host, port=args.port,
                                      log_level="info")).run()
    finally:
        store.close_all()
