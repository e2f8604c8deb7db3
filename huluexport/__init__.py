"""huluexport: export Hulu-Med to deployable ONNX/TensorRT bundles, with a PyTorch reference path."""

__version__ = "0.1.0"
