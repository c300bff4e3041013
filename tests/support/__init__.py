"""Test helpers, and the one place that starts processes for tests: a private redis-server
(`redis_server`), the service in a thread or as `marc serve` (`servers`, on `loadtest.processes`),
bounded loads (`load`); plus the ONNX Runtime reference (`reference`), forged artifacts (`artifacts`)
and the reliability figures (`reliability_report`)."""
