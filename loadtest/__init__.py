"""Load testing: Locust scenarios, and the headless benchmark (`marc bench`) that measures the service
against raw ONNX Runtime and a bare endpoint."""
