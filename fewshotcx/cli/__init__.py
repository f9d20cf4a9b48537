"""The ``fewshotcx`` command line: one module per group of sub-commands."""

from .main import main

__all__ = ["main"]
