"""qfd: on-demand quantized, energy-efficient federated training of diffusion models."""

import logging

# bitsandbytes (imported by diffusers) warns on CPU-only machines that an optional
# kernels package is missing; the CPU paths qfd uses do not need it.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

__version__ = "0.1.0"
