"""Tools around the models: FLOPs, benchmarks, the inference fast path, ONNX export, block-graph drawings."""
