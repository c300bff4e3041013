"""Recommendation datasets: one in-memory shape (`RecDataset`) for every source."""

from marc.data.dataset import Interactions, RecDataset
from marc.data.errors import DataError
from marc.data.synthetic import make_synthetic

__all__ = ["DataError", "Interactions", "RecDataset", "make_synthetic"]
