"""leafseg: semantic segmentation with few or no dense labels, built on vision foundation models."""

__version__ = "0.1.0"
