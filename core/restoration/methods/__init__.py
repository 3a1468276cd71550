"""Restoration methods, one module each; importing this package registers them all
(``core.restoration.registry.METHODS``) in the order the dashboard lists them."""

from core.restoration.methods import curvature, direction, interpolate, resta, safelora  # noqa: F401

__all__ = ["curvature", "direction", "interpolate", "resta", "safelora"]
