"""`simpool-export`: a SimPool model -> a verified single-file ONNX graph and its manifest.json.

`graph` wraps the model with the served signature, `parity` checks onnxruntime against PyTorch,
`preprocess` and `manifest` describe the graph for the service, `cli` ties them together.
"""
