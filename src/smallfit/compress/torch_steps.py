"""Compression steps on PyTorch transformer classifiers: layer dropping, structured and
magnitude pruning, each followed by healing."""
