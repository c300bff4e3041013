"""The JSON-lines files training and serving both read (items.jsonl) and their one error type, torch-free
and at the bottom of every import."""
