"""Tests of service/; the route-level ones are still tests/test_service_*.py and test_reliability_*.py."""
