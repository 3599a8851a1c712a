"""The decoder service: our Qwen2 on the paged-attention kernels, continuous batching, streaming.

Two layers: engine/ (the engine core, no gRPC) and service/ (the gRPC front end over it). config.py is
the one settings object both take; cli.py is `internvl-serve decoder`.
"""
