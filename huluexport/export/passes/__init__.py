"""Graph rewrites on the exported onnx_ir model, one per file, run in the order of export/pipeline.py."""
