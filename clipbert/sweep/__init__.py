"""Hyperparameter sweeps on Ray Tune: the sweep itself, its search spaces and its outputs."""
