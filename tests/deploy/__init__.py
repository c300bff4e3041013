"""Tests of deploy/, the Dockerfile and `make artifact`: what ships agrees with the code."""
