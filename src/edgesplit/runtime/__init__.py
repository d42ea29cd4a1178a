"""The live system: the edge server (any tail of one model, dynamic batching), the device client (torch or
ONNX Runtime, per-request decisions, local fallback), and the HTTP transport between them."""
