"""focaldet: a compact, fast RetinaNet-family one-stage detector with a fused focal-loss kernel."""

__version__ = "0.1.0"
