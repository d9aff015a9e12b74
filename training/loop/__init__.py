"""The training loop: configuration and presets, optimizer and masks, steps and fit, checkpoints, devices."""
