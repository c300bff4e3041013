"""The JSON-lines files training and serving both read (items.jsonl), with their one error type:
torch-free, at the bottom of every import, so `marc.data` and `marc precompute` share one reader."""
