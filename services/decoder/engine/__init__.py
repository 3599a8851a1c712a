"""The decoder's engine core: sequence, block manager, scheduler, model runner, KV cache, attention,
sampler and the engine loop (schedule -> run -> update_from_output). It knows nothing of gRPC.

What the service layer and the tests use is re-exported here; engine_loop.py has the flow.
"""

from internvl_serve.decoder.engine.engine_loop import Engine, EngineStats
from internvl_serve.decoder.engine.loaded_model import LoadedModel, load_model, tensor_parallel_problems
from internvl_serve.decoder.engine.media import MediaEmbedding
from internvl_serve.decoder.engine.request import (
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    Usage,
)
from internvl_serve.decoder.engine.sampling_params import SamplingParams

__all__ = [
    "Engine",
    "EngineStats",
    "FinishReason",
    "GenerationDelta",
    "GenerationRequest",
    "GenerationResult",
    "LoadedModel",
    "MediaEmbedding",
    "SamplingParams",
    "Usage",
    "load_model",
    "tensor_parallel_problems",
]
