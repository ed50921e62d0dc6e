"""Stable model architecture ids, importable without torch (configs validate against them)."""

from __future__ import annotations

MODEL_IDS: tuple[str, ...] = ("mlp-64-32-10", "cnn-small-v1")
DEFAULT_MODEL = "mlp-64-32-10"
