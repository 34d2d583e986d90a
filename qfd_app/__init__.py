"""qfd: on-demand quantized, energy-efficient federated training of diffusion models."""

__version__ = "0.1.0"
