"""The Ray connection of a cohort run, and its security warnings (docs/cohort.md, Security)."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Optional

#: Security warnings already given in this process (each once; see docs/cohort.md, Security).
_WARNED: set[str] = set()


def token_auth_enabled() -> bool:
    """Whether this process asks Ray for token authentication (``RAY_AUTH_MODE=token``, Ray ≥ 2.52)."""
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


class RaySession:
    """Connect to Ray for the run: reuse this process's connection, start a private local instance
    (stopped on exit), or join the cluster at ``address``.

    Without token authentication Ray accepts any client that reaches its ports, and patient volumes
    travel through its object store: joining a cluster then warns once per process. The private
    instance has no dashboard (no HTTP job API) and binds what Ray lets it bind to loopback; Ray's
    own gRPC ports listen on every interface (Ray resolves a loopback node address to the routable
    one on Linux), so it warns once too unless token authentication is on.
    """

    def __init__(self, ray, address: Optional[str], workers: Optional[int], cpus_per_worker: int) -> None:
        self.ray, self.address, self.owned = ray, address, False
        self.num_cpus = workers * cpus_per_worker if workers else None

    def __enter__(self):
        ray = self.ray
        if ray.is_initialized():
            return self
        quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        secured = token_auth_enabled()
        if self.address is None:
            if not secured:
                _warn_once("private", "the private Ray started for this cohort has no authentication and its ports "
                           "listen on every network interface (Ray cannot bind them to loopback): on a shared "
                           "machine or network set RAY_AUTH_MODE=token before starting Python (docs/cohort.md, "
                           "Security)")
            ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count(), dashboard_host="127.0.0.1", **quiet)
        else:
            if not secured:
                _warn_once(f"join {self.address}", f"joining the Ray cluster at {self.address!r} without token "
                           "authentication (RAY_AUTH_MODE=token): anyone who can reach its ports can run code on it "
                           "and read the patient volumes in its object store (docs/cohort.md, Security)")
            try:
                ray.init(address=self.address, **quiet)
            except ConnectionError as exc:
                raise ValueError(f"cannot join the Ray cluster at {self.address!r}: {exc}") from None
        self.owned = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self.owned:
            self.ray.shutdown()
