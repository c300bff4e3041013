"""The contract between training and serving, torch-free and at the bottom of every import: the artifact's
file and graph names, its manifest, its fingerprints and the loader that verifies them."""
