"""Evaluation: `metrics` (FID/sFID, IS, precision/recall on feature arrays) and `fid` (ADM's TF Inception
evaluator; run it with `python -m RandAR.eval.fid ref.npz samples.npz`)."""
