"""The CPU quickstart's domain: a procedural 10-class image dataset (data.py) and the small classifier that
evaluates samples of it (classifier.py, the "toy" evaluator). Not part of the method."""
