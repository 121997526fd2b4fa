"""Training: the class-conditional RandAR trainer's pieces (train_c2i.py) and the VQ tokenizer trainer's (vq.py)."""
