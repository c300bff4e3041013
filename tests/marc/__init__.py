"""Tests of marc/: data, backbone, training, checkpoints, evaluation, metrics, experiments."""
