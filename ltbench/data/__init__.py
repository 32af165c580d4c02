"""Data: the dataset registry and its loaders, long-tailed splits, image stores and augmentation, samplers."""
