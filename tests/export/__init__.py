"""Tests of export/: checkpoint -> ONNX artifact, parity, quantised variants, fingerprints."""
