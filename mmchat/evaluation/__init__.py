"""Evaluation: `python -m mmchat evaluate` (answers through the serving path and scores them),
the official VQA accuracy (`vqa_metric`, no torch needed) and the count and position probes."""
