"""Reliability: fuzzing, faults, overload, hostile bodies, shutdown, integrity, security; figures go to
RELIABILITY.md."""
