"""Shared logic of the study tools (`tools/compare.py`, `tools/ablate_loss.py`, `tools/loss_distribution.py`,
`tools/anchor_scores.py`): runs of named variants (`runs`), cost and speed (`cost`), the loss ablation
(`ablation`), the one-stage vs two-stage study (`compare`), per-anchor losses and scores (`anchors`). Every
detector trains through `detector.lit.fit` and is evaluated by `detector.evaluation.report.evaluate_split`.
"""
