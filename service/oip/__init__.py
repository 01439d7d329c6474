"""The Open Inference Protocol (KServe v2 / Triton HTTP) door, and the model's Triton configuration."""
