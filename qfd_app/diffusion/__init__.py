"""The diffusion model and its quality: UNet presets, the training step, DDIM sampling,
the moving average, the data, and the FID scorer.

`catalog` names what the package offers (presets, schedules, datasets, partitioners)
without importing torch, so that a run config is validated before any model is built.
"""
