"""Per-anchor losses and scores of a trained RetinaNet (the focal-loss paper's Figure 4, and the check that a
classifier separates foreground from background), from the criterion's own matching.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["anchor_logits_and_labels", "anchor_scores", "hardest_shares", "per_anchor_losses"]


@torch.no_grad()
def anchor_logits_and_labels(
    model: torch.nn.Module, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits [B*A, C] and matched integer labels [B*A] (class 0..C-1, -1 background, -2 ignore).

    The same head outputs and matching as training: `RetinaNet.head_outputs` and the criterion's
    `RetinaNetLoss.anchor_labels`.
    """
    from detector.models.retinanet import RetinaNet

    if not isinstance(model, RetinaNet):
        raise ValueError(f"per-anchor losses and scores need our RetinaNet, got {type(model).__name__}")
    cls_logits, _, anchors, per_level = model.head_outputs(images)
    labels = model.loss.anchor_labels(anchors, targets, model.num_classes, per_level)[0]
    return cls_logits.reshape(-1, cls_logits.shape[-1]).float(), labels.reshape(-1)


@torch.no_grad()
def per_anchor_losses(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, list[dict]]],
    gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    max_images: int | None = None,
) -> tuple[dict[float, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """Focal loss per anchor (summed over classes, alpha None) for each gamma, split foreground/background.

    Ignored anchors (IoU between the thresholds) are left out. Returns ({gamma: (fg, bg)}, counts).
    Alpha is left out because each curve is normalized within its group, where alpha is a constant factor.
    """
    from detector.losses.focal import sigmoid_focal_loss

    fg: dict[float, list[np.ndarray]] = {float(g): [] for g in gammas}
    bg: dict[float, list[np.ndarray]] = {float(g): [] for g in gammas}
    seen = 0
    for logits, labels, n_images in _anchor_batches(model, batches, max_images):
        seen += n_images
        is_fg, is_bg = labels >= 0, labels == -1
        for g in fg:
            loss = sigmoid_focal_loss(logits, labels, alpha=None, gamma=g, reduction="none").sum(dim=1)
            fg[g].append(loss[is_fg].double().cpu().numpy())
            bg[g].append(loss[is_bg].double().cpu().numpy())
    curves = {g: (np.concatenate(fg[g]), np.concatenate(bg[g])) for g in fg}
    first = curves[next(iter(curves))]
    return curves, {"images": seen, "foreground": int(first[0].size), "background": int(first[1].size)}


@torch.no_grad()
def anchor_scores(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, list[dict]]], max_images: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of a trained RetinaNet per anchor: (foreground anchors' probability of their own class,
    background anchors' highest class probability, images). Ignored anchors are left out. A classifier
    that separates the two groups scores most background near 0; a collapsed one scores everything alike."""
    fg, bg, seen = [], [], 0
    for logits, labels, n_images in _anchor_batches(model, batches, max_images):
        seen += n_images
        probs = logits.sigmoid()
        is_fg = labels >= 0
        fg.append(probs[is_fg].gather(1, labels[is_fg, None]).squeeze(1).double().cpu().numpy())
        bg.append(probs[labels == -1].amax(dim=1).double().cpu().numpy())
    return np.concatenate(fg), np.concatenate(bg), seen


def _anchor_batches(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, list[dict]]], max_images: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(logits, labels, images) of `anchor_logits_and_labels` per batch, in eval mode, up to `max_images`."""
    model.eval()
    seen = 0
    for images, targets in batches:
        if max_images is not None and seen >= max_images:
            break
        if max_images is not None:
            images, targets = images[: max_images - seen], targets[: max_images - seen]
        seen += images.shape[0]
        yield (*anchor_logits_and_labels(model, images, targets), images.shape[0])
    if seen == 0:
        raise ValueError("no images to score anchors on (empty split?)")


def hardest_shares(losses: np.ndarray, fractions: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[float, float]:
    """Share of the total loss carried by the hardest `fraction` of the samples, for each fraction."""
    from detector.visualize import loss_share_of_hardest

    return {float(f): loss_share_of_hardest(losses, f) for f in fractions}
