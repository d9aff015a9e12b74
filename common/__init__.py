"""Leaf helpers shared by every layer: atomic files, digests, the cache root, tables and plots, timing."""
