"""Evaluation: `metrics` (FID/sFID, IS, precision/recall on feature arrays), `fid` (ADM's evaluator; run it with
`python -m RandAR.eval.fid ref.npz samples.npz`), `extractors` (feature extractors by name), `inception_graph` (ADM's
Inception graph file), and `tf_graph` + `tf_ops` + `inception_torch` (that graph run by PyTorch)."""
