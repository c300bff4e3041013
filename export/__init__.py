"""Export: a MARC checkpoint becomes a verified ONNX artifact (graph, tokenizer file, int8/fp16 variants,
parity check, manifest)."""
