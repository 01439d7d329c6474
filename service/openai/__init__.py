"""The OpenAI-compatible embeddings door: `/v1/embeddings` and `/v1/models` for OpenAI's SDKs and tools."""
