"""Data: photo discovery, decoding and cache, labels and splits, augmentation, prefetch; the digits and MNIST."""
