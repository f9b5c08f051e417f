"""Thin adapters over torch-pruning importances: taylor, bn_scale."""
