"""Tests of artifact/: the verified, torch-free loader and its refusals."""
