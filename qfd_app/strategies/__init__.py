"""Flower strategies: the full-precision baseline and, later, quantized and on-demand ones."""
