"""Runs: outer folds scored once, run folders, reports, the results-table grid, finished runs read back."""
