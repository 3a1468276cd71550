"""Importing this module registers every geometry analysis in ``core.geometry.registry.ANALYSES``,
in the order the CLI and the Report page list them."""

from core.geometry import basin, correlation, curvature, landscape  # noqa: F401

__all__ = ["basin", "correlation", "curvature", "landscape"]
