"""Evaluation: ``voc`` (VOC07 11-point and VOC2010+ area AP, devkit rules), ``coco`` (COCO AP through
pycocotools) and ``speed`` (model-only and end-to-end FPS).

Import the submodules explicitly (``from detector.evaluation.voc import voc_ap``): nothing is imported here,
so ``speed`` works where pycocotools is not installed.
"""
