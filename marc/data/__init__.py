"""Recommendation datasets: one in-memory shape (`RecDataset`) for every source."""

from marc.data.dataset import Interactions, RecDataset

__all__ = ["Interactions", "RecDataset"]
