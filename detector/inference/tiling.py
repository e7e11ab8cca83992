"""Detection on images larger than the network input: overlapping tiles, in batches, merged over the image.

`predict_tiled(predict_batch, image, tile, overlap)` cuts the image into `tile` x `tile` windows (the last
row and column flush with the image border, none beyond it), feeds them to `predict_batch` at most
`batch_size` at a time as lazy crops (views; only the current batch is ever letterboxed), shifts each tile's
boxes into whole-image pixels and merges them in two steps:

1. cut boxes: a box that touches an inner tile edge (within `edge_tol` px of a window border that is not
   the image border) is the visible part of an object the tile cut. It is dropped when a box of the same
   class from another tile is larger (by area, then score) and covers most of it: intersection over the
   smaller box's area >= `edge_ios`. This runs before the NMS because the cut part can outscore the whole
   box and, with an IoU above the NMS threshold, would otherwise suppress it.
2. duplicates: one class-wise NMS (IoU `nms_thresh`) over the whole image, so an object seen whole by two
   overlapping tiles is reported once.

Objects wider than the overlap (`tile * overlap` px) are never seen whole by any tile and may be reported
as two parts; choose the overlap above the largest object. `predict_batch(list of uint8 [3, h, w]) -> list
of dict(boxes xyxy in tile pixels, scores, labels)` is the only model interface, so the PyTorch model and
the ONNX backend tile the same way (`batch_predictor`, `batch_predictor`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

__all__ = [
    "DEFAULT_OVERLAP",
    "PredictBatch",
    "TileSettings",
    "TiledCollector",
    "any_needs_tiling",
    "choose_tile",
    "collect_tiled",
    "grid_nms",
    "merge_tile_detections",
    "needs_tiled_collection",
    "batch_predictor",
    "predict_image",
    "predict_tiled",
    "suppress_cut_boxes",
    "tile_starts",
    "tile_windows",
    "batch_predictor",
]

DEFAULT_OVERLAP = 0.25
AUTO_FACTOR = 2  # without --tile, an image is tiled when a side exceeds AUTO_FACTOR x the model input size
GRID_NMS_ABOVE = 4000  # more merged boxes than this: grid_nms (linear) instead of torchvision's all-pairs NMS

PredictBatch = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class TileSettings:
    """How the tools tile: `tile` None = auto (model size, for images over twice it), 0 = never, N = N px.

    The merge thresholds are documented in the module docstring.
    """

    tile: int | None = None
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = 4
    nms_thresh: float = 0.5
    edge_ios: float = 0.6
    edge_tol: float = 4.0
    progress: bool | None = None  # None: a bar when stderr is a terminal

    def check(self) -> None:
        """Raise ValueError naming the bad setting (--tile, --overlap, tile batch size)."""
        if self.tile is not None and (int(self.tile) != self.tile or self.tile < 0):
            raise ValueError(f"--tile must be 0 (off) or a positive number of pixels, got {self.tile}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"--overlap must be a fraction in [0, 1), got {self.overlap}")
        if self.tile:
            _check_tile(self.tile, self.overlap)
        if self.batch_size < 1:
            raise ValueError(f"tile batch size must be >= 1, got {self.batch_size}")


def _check_tile(tile: int, overlap: float) -> None:
    if int(tile) != tile or tile <= 0:
        raise ValueError(f"tile side must be a positive number of pixels, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be a fraction in [0, 1), got {overlap}")
    if tile - round(tile * overlap) < 1:
        raise ValueError(f"tile {tile} px with overlap {overlap} leaves no stride between tiles")


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile origins along one axis: stride `tile - round(tile * overlap)`, the last flush with the end.

    An axis no longer than the tile has the single origin 0 (that tile is then shorter than `tile`).
    """
    _check_tile(tile, overlap)
    if length <= tile:
        return [0]
    stride = tile - round(tile * overlap)
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Windows `(x0, y0, x1, y1)` covering an image, row-major; each within the image, at most tile x tile."""
    return [
        (x0, y0, min(x0 + tile, width), min(y0 + tile, height))
        for y0 in tile_starts(height, tile, overlap)
        for x0 in tile_starts(width, tile, overlap)
    ]


def choose_tile(height: int, width: int, model_size: int, tile: int | None) -> int:
    """Tile side to use for an image, 0 for none: `tile` 0 never tiles; None tiles at the model size when a
    side exceeds twice it; N tiles at N when a side exceeds N (a smaller image is one tile, the image)."""
    if tile is None:
        return int(model_size) if max(height, width) > AUTO_FACTOR * int(model_size) else 0
    if int(tile) != tile or tile < 0:
        raise ValueError(f"--tile must be 0 (off) or a positive number of pixels, got {tile}")
    return int(tile) if tile and max(height, width) > tile else 0


def _cut_mask(
    boxes: torch.Tensor, windows: torch.Tensor, image_size: tuple[int, int], tol: float
) -> torch.Tensor:
    """Boxes (whole-image pixels) that touch a border of their own window that is an inner tile edge."""
    height, width = image_size
    x0, y0, x1, y1 = windows.unbind(1)
    bx0, by0, bx1, by1 = boxes.unbind(1)
    return (
        ((x0 > 0) & (bx0 - x0 <= tol))
        | ((y0 > 0) & (by0 - y0 <= tol))
        | ((x1 < width) & (x1 - bx1 <= tol))
        | ((y1 < height) & (y1 - by1 <= tol))
    )


def _neighbours(windows: torch.Tensor) -> list[torch.Tensor]:
    """For each window, the indices of the other windows it overlaps (its only possible box partners)."""
    w = windows.to(torch.float64)
    ix = (torch.minimum(w[:, None, 2], w[None, :, 2]) - torch.maximum(w[:, None, 0], w[None, :, 0])) > 0
    iy = (torch.minimum(w[:, None, 3], w[None, :, 3]) - torch.maximum(w[:, None, 1], w[None, :, 1])) > 0
    touching = ix & iy
    touching.fill_diagonal_(False)
    return [torch.nonzero(row).flatten() for row in touching]


def suppress_cut_boxes(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    tile_index: torch.Tensor,
    windows: torch.Tensor,
    image_size: tuple[int, int],
    edge_ios: float = 0.6,
    edge_tol: float = 4.0,
) -> torch.Tensor:
    """Keep mask [N]: False for a box cut by an inner tile edge that a larger same-class box of another tile
    covers (intersection / smaller area >= `edge_ios`). Boxes in whole-image pixels; `windows` [T, 4]."""
    n = boxes.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    if n == 0:
        return keep
    boxes = boxes.to(torch.float64)
    cut = _cut_mask(boxes, windows.to(torch.float64)[tile_index], image_size, edge_tol)
    if not bool(cut.any()):
        return keep
    area = box_area(boxes).clamp(min=0)
    order = torch.argsort(tile_index, stable=True)  # detections grouped by tile: tile t is order[lo[t]:hi[t]]
    hi = torch.cumsum(torch.bincount(tile_index, minlength=windows.shape[0]), 0).tolist()
    lo = [0, *hi[:-1]]
    neighbours = _neighbours(windows)
    for t in torch.unique(tile_index[cut]).tolist():
        group = order[lo[t] : hi[t]]
        mine = group[cut[group]]
        if len(neighbours[t]) == 0:
            continue
        others = torch.cat([order[lo[u] : hi[u]] for u in neighbours[t].tolist()])
        if others.numel() == 0:
            continue
        a, b = boxes[mine], boxes[others]
        lt = torch.maximum(a[:, None, :2], b[None, :, :2])
        rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        smaller = torch.minimum(area[mine][:, None], area[others][None, :]).clamp(min=1e-9)
        covers = inter / smaller >= edge_ios
        same_class = labels[mine][:, None] == labels[others][None, :]
        larger = (area[others][None, :] > area[mine][:, None]) | (
            (area[others][None, :] == area[mine][:, None]) & (scores[others][None, :] > scores[mine][:, None])
        )
        keep[mine] = ~(covers & same_class & larger).any(dim=1)
    return keep


def grid_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_thresh: float
) -> torch.Tensor:
    """Class-wise greedy NMS (as `torchvision.ops.batched_nms`: by score, drop IoU > `iou_thresh` with a kept
    box) that compares each box only with kept boxes sharing a grid cell: linear in the number of boxes for a
    whole orthophoto, where torchvision's CPU kernel compares all pairs (minutes at 200k boxes)."""
    if len(scores) == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    cell = max(16.0, 2.0 * float(sides.median()))
    grid: dict[tuple[int, int, int], list[tuple[float, float, float, float, float]]] = {}
    kept: list[int] = []
    for i, (x1, y1, x2, y2), label in zip(
        order.tolist(), boxes[order].tolist(), labels[order].tolist(), strict=True
    ):
        area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
        cells = [
            (label, cx, cy)
            for cx in range(int(x1 // cell), int(x2 // cell) + 1)
            for cy in range(int(y1 // cell), int(y2 // cell) + 1)
        ]
        suppressed = False
        for key in cells:
            for kx1, ky1, kx2, ky2, karea in grid.get(key, ()):
                iw, ih = min(x2, kx2) - max(x1, kx1), min(y2, ky2) - max(y1, ky1)
                if iw <= 0 or ih <= 0:
                    continue
                inter = iw * ih
                union = area + karea - inter
                if union > 0 and inter / union > iou_thresh:
                    suppressed = True
                    break
            if suppressed:
                break
        if not suppressed:
            kept.append(i)
            entry = (x1, y1, x2, y2, area)
            for key in cells:
                grid.setdefault(key, []).append(entry)
    return torch.tensor(kept, dtype=torch.int64)


def merge_tile_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    tile_index: torch.Tensor,
    windows: torch.Tensor,
    image_size: tuple[int, int],
    nms_thresh: float = 0.5,
    edge_ios: float = 0.6,
    edge_tol: float = 4.0,
    max_detections: int | None = None,
) -> dict[str, torch.Tensor]:
    """Cut-box suppression, then one class-wise NMS over the whole image; detections by score, descending."""
    keep = suppress_cut_boxes(boxes, scores, labels, tile_index, windows, image_size, edge_ios, edge_tol)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if len(scores) <= GRID_NMS_ABOVE:
        order = batched_nms(boxes.float(), scores.float(), labels, float(nms_thresh))
    else:
        order = grid_nms(boxes, scores, labels, float(nms_thresh))
    if max_detections is not None:
        order = order[: int(max_detections)]
    return {"boxes": boxes[order].float(), "scores": scores[order].float(), "labels": labels[order].long()}


def _progress_bar(total: int, desc: str | None, enabled: bool | None) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else bool(enabled)
    return tqdm(total=total, desc=desc, unit="tile", file=sys.stderr, disable=not show, leave=False)


def _batches(windows: Sequence[tuple[int, int, int, int]], batch_size: int) -> Iterator[range]:
    for start in range(0, len(windows), batch_size):
        yield range(start, min(start + batch_size, len(windows)))


def predict_tiled(
    predict_batch: PredictBatch,
    image: Any,
    tile: int,
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 4,
    nms_thresh: float = 0.5,
    edge_ios: float = 0.6,
    edge_tol: float = 4.0,
    max_detections: int | None = None,
    progress: bool | None = None,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """Detections (boxes xyxy in whole-image pixels, scores, labels) for a uint8 image [3, H, W] by tiles.

    `image` is a tensor or anything with `.shape` (3, H, W) whose `[:, y0:y1, x0:x1]` gives a uint8 tile
    (e.g. a windowed file reader); crops are taken one batch at a time, so memory beyond the image is bounded
    by `batch_size` tiles. `progress`: a tqdm bar on stderr (None: only when stderr is a terminal).
    """
    if batch_size < 1:
        raise ValueError(f"tile batch size must be >= 1, got {batch_size}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    windows = tile_windows(height, width, tile, overlap)
    all_boxes, all_scores, all_labels, all_tiles = [], [], [], []
    with _progress_bar(len(windows), desc, progress) as bar:
        for idx in _batches(windows, batch_size):
            crops = [torch.as_tensor(image[:, y0:y1, x0:x1]) for x0, y0, x1, y1 in (windows[i] for i in idx)]
            outputs = predict_batch(crops)
            if len(outputs) != len(crops):
                raise ValueError(f"predict_batch returned {len(outputs)} results for {len(crops)} tiles")
            for i, out in zip(idx, outputs, strict=True):
                x0, y0 = windows[i][0], windows[i][1]
                boxes = torch.as_tensor(out["boxes"]).detach().float().cpu().reshape(-1, 4)
                all_boxes.append(boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
                all_scores.append(torch.as_tensor(out["scores"]).detach().float().cpu().reshape(-1))
                all_labels.append(torch.as_tensor(out["labels"]).detach().cpu().to(torch.int64).reshape(-1))
                all_tiles.append(torch.full((boxes.shape[0],), i, dtype=torch.int64))
            del crops, outputs
            bar.update(len(idx))
    return merge_tile_detections(
        torch.cat(all_boxes),
        torch.cat(all_scores),
        torch.cat(all_labels),
        torch.cat(all_tiles),
        torch.tensor(windows, dtype=torch.float32),
        (height, width),
        nms_thresh=nms_thresh,
        edge_ios=edge_ios,
        edge_tol=edge_tol,
        max_detections=max_detections,
    )


def batch_predictor(model: torch.nn.Module, size: int, tta: Sequence[str] = ()) -> PredictBatch:
    """`predict_batch` for a detector (PyTorch, or the ONNX runtime's `OnnxDetector` at its exported size):
    tiles letterboxed to `size`, one forward for the batch (a batch-1 ONNX export runs tile by tile);
    `tta`: flip test-time augmentation of each tile (`detector.inference.tta`)."""
    from detector.inference.predict import predict

    tta = tuple(tta)
    return lambda tiles: predict(model, tiles, size, batch_size=max(1, len(tiles)), tta=tta)


def predict_image(
    predict_batch: PredictBatch,
    image: Any,
    model_size: int,
    settings: TileSettings = TileSettings(),
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """One image, tiled when `choose_tile` says so, else letterboxed whole (as `inference.predict`)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    tile = choose_tile(height, width, model_size, settings.tile)
    if not tile:
        out = predict_batch([torch.as_tensor(image)])[0]
        return {k: torch.as_tensor(v) for k, v in out.items()}
    return predict_tiled(
        predict_batch,
        image,
        tile,
        settings.overlap,
        batch_size=settings.batch_size,
        nms_thresh=settings.nms_thresh,
        edge_ios=settings.edge_ios,
        edge_tol=settings.edge_tol,
        progress=settings.progress,
        desc=desc,
    )


def any_needs_tiling(sizes: Sequence[tuple[int, int]], model_size: int, tile: int | None) -> bool:
    """Whether any image of these (height, width) sizes would be tiled."""
    return any(choose_tile(h, w, model_size, tile) for h, w in sizes)


def _record_size(record: Any) -> tuple[int, int]:
    """(height, width) of a dataset record: from its annotation, else from the image header (no decoding)."""
    if getattr(record, "size", None):
        return tuple(int(v) for v in record.size)  # type: ignore[return-value]
    from PIL import Image

    with Image.open(record.image_path) as img:
        return img.size[1], img.size[0]


def needs_tiled_collection(dataset: Any, model_size: int, tile: int | None) -> bool:
    """Whether evaluating `dataset` (with `records`) must go through tiled prediction for some image."""
    records = getattr(dataset, "records", None)
    if not records or tile == 0:
        return False
    return any_needs_tiling([_record_size(r) for r in records], model_size, tile)


def collect_tiled(
    predict_batch: PredictBatch,
    dataset: Any,
    model_size: int,
    settings: TileSettings = TileSettings(),
) -> tuple[list[str], list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """(image ids, detections, ground truths) in original pixels for a dataset with `records`, each image
    read whole and predicted through `predict_image` (tiled when it applies): eval on full-size images."""
    from detector.data.images import read_image

    ids: list[str] = []
    dets: list[dict[str, np.ndarray]] = []
    gts: list[dict[str, np.ndarray]] = []
    for record in dataset.records:
        image = read_image(record.image_path)
        det = predict_image(predict_batch, image, model_size, settings, desc=str(record.image_id))
        ids.append(str(record.image_id))
        dets.append(
            {
                "boxes": det["boxes"].numpy().reshape(-1, 4),
                "scores": det["scores"].numpy().reshape(-1),
                "labels": det["labels"].numpy().astype(np.int64).reshape(-1),
            }
        )
        gts.append(
            {
                "boxes": np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4),
                "labels": np.asarray(record.labels, dtype=np.int64).reshape(-1),
                "difficult": np.asarray(record.difficult, dtype=bool).reshape(-1),
            }
        )
    return ids, dets, gts


class TiledCollector:
    """`collect(model, loader)` for `inference.evaluate_split`: tiled prediction on each full image when some
    image of the loader's dataset needs tiles, else the usual batched letterbox path (unchanged numbers).

    After a call, `tiled` says which path ran; `describe()` is the JSON-ready record of the settings. With
    `tta`, give it a `batch_predictor(model, size, tta)` of the same flips.
    """

    def __init__(
        self, predict_batch: PredictBatch, model_size: int, settings: TileSettings, tta: Sequence[str] = ()
    ) -> None:
        self.predict_batch, self.model_size, self.settings = predict_batch, int(model_size), settings
        self.tta = tuple(tta)  # the flips of the letterbox path; `predict_batch` must apply the same
        self.tiled = False

    def __call__(
        self, model: torch.nn.Module, loader: Any
    ) -> tuple[list[str], list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
        from detector.evaluation.report import collect_predictions

        dataset = getattr(loader, "dataset", None)
        self.tiled = needs_tiled_collection(dataset, self.model_size, self.settings.tile)
        if not self.tiled:
            return (
                collect_predictions(model, loader, tta=self.tta)
                if self.tta
                else collect_predictions(model, loader)
            )
        return collect_tiled(self.predict_batch, dataset, self.model_size, self.settings)

    def describe(self) -> dict[str, Any]:
        """What ran: tiled or not, the tile side (None = the model size when automatic) and merge settings."""
        s = self.settings
        return {
            "tiled": self.tiled,
            "tile": s.tile if s.tile is not None else f"auto ({self.model_size} px over {AUTO_FACTOR}x that)",
            "overlap": s.overlap,
            "nms_thresh": s.nms_thresh,
            "edge_ios": s.edge_ios,
            "edge_tol": s.edge_tol,
        }
