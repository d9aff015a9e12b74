"""Data: finding photos (discovery), decoding one photo (decoding), the decoded-photo cache (cache), loading a
list of photos with its report (loading), labels and splits, augmentation, prefetch; the digits and MNIST."""
