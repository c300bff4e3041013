"""Shared fixtures. Heavy fixtures (backbones, artifacts) are session-scoped and built once."""

from __future__ import annotations
