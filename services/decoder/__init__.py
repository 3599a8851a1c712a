"""The decoder service's engine: our Qwen2 on the paged-attention kernels, continuous batching, streaming.

Public entry points (what the gRPC layer calls) are re-exported here; see engine.py for the flow.
"""

from internvl_serve.decoder.config import DecoderConfig, add_decoder_arguments, decoder_config_from_args
from internvl_serve.decoder.engine import Engine, EngineStats
from internvl_serve.decoder.media import MediaEmbedding
from internvl_serve.decoder.request import FinishReason, GenerationDelta, GenerationRequest, GenerationResult, Usage
from internvl_serve.decoder.runtime import DecoderRuntime, load_runtime
from internvl_serve.decoder.sampling_params import SamplingParams

__all__ = [
    "DecoderConfig",
    "DecoderRuntime",
    "Engine",
    "EngineStats",
    "FinishReason",
    "GenerationDelta",
    "GenerationRequest",
    "GenerationResult",
    "MediaEmbedding",
    "SamplingParams",
    "Usage",
    "add_decoder_arguments",
    "decoder_config_from_args",
    "load_runtime",
]
