"""Training: clips in memory, on-device augmentation, the training loop, calibration and torchrun."""
