"""HTTP serving of an artifact's item vectors, torch-free: FastAPI app, micro-batching on ONNX Runtime,
Redis or in-process cache, Prometheus metrics."""
