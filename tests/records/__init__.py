"""Tests of records/: the torch-free items.jsonl reader."""
