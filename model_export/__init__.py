"""How the model is compiled: artifact -> ONNX (one file per tile, dynamic batch) -> TensorRT engine, parity
checks across backends, and the `rsd bench` benchmark. Imports rsd only (architecture.md)."""
