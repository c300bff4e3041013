"""The model side: ONNX Runtime sessions, the text encoder and the micro-batcher in front of it."""
