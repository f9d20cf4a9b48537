"""Evaluation: segmentation metrics (``fx.metrics``)."""
