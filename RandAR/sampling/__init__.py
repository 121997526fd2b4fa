"""Sampling to folders of PNGs and .npz files (sample_c2i.py, the CFG search, the zero-shot tools)."""
