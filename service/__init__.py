"""simpool-serve: a batching ONNX Runtime server for SimPool models (no torch, no timm at run time)."""
