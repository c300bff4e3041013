"""Tests of loadtest/: the headless benchmark and the Locust scenarios."""
