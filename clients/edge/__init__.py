"""The edge node: receives signed releases (TUF), installs them atomically, rolls back,
predicts with onnxruntime (docs/releases.md)."""
