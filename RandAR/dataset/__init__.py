"""Datasets: ImageNet tar / image folder readers (imagenet.py), latent codes (latent.py), augmentations."""
