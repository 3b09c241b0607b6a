"""Tools around the model: the throughput bench, export to ONNX/TorchScript, and checkpoint info."""
