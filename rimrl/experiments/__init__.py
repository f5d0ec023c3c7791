"""Experiment machinery above single training runs: hyperparameter search and tracking."""
