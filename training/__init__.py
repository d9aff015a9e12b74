"""The training library, in subpackages by role (README, Layout).

Imports run one way: common → data → evaluation → loop → transfer → runs, inference.
"""
