"""Losses; imports only torch (and triton, lazily, for the GPU kernel)."""

from detector.losses.focal import sigmoid_focal_loss, sigmoid_focal_loss_reference

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_reference"]
