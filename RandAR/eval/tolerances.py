"""How closely the evaluator's PyTorch/numpy paths agree with TensorFlow running ADM's evaluator, as the tests
check it (tests/test_inception_torch.py, tests/test_eval_metrics.py) and README / GETTING_STARTED state it
(tests/test_docs.py reads the numbers there and compares them with these).

With `--backend tf` all five numbers are ADM's by construction (TensorFlow runs the graph and ADM's distance
ops); these bound `--backend torch`, measured against TensorFlow on CPU.
"""
# One op of the torch graph executor vs TF's kernel, relative (absolute: times the output's largest magnitude).
OP_RTOL = 1e-5
# Features (pool_3, mixed_6/conv, class probabilities) of the torch graph executor vs TF, relative and absolute.
FEATURE_RTOL = 1e-5
# FID, sFID and IS from those features vs TF's, relative.
METRIC_RTOL = 1e-4
# metrics.pairwise_sq_distances (ADM's float16 formula in numpy, sums in float32) vs ADM's distance ops run by
# TF on CPU, per entry relative to |u|^2 + |v|^2 of the pair (the float16 terms that cancel): about one float16
# ulp of them (measured up to 1.25e-3 in 20 random cases; relative to the distance itself, unbounded for near
# duplicates).
FLOAT16_DISTANCE_RTOL = 2e-3
# Precision and recall with those distances vs ADM's on TF (CPU), absolute: a distance a few ulps off moves the
# points lying that close to a ball's edge (measured up to 0.011, i.e. 4 of 380 points, in 20 random cases).
PRECISION_RECALL_ATOL = 0.02
