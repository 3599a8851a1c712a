"""`internvl-serve encoder`: load, warm up, serve until SIGTERM, drain, stop (common/service_lifecycle.py)."""

from __future__ import annotations

import asyncio
import functools

from internvl_serve.common.service_lifecycle import ServiceServer
from internvl_serve.common.telemetry import Telemetry
from internvl_serve.encoder.config import EncoderConfig
from internvl_serve.encoder.engine import EncoderEngine
from internvl_serve.encoder.metrics import EncoderMetrics
from internvl_serve.encoder.servicer import SERVICE_NAME, EncoderServicer
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc


class EncoderServer(ServiceServer):
    kind = "encoder"
    trusts_named_tenant = True

    def __init__(self, config: EncoderConfig, telemetry: Telemetry | None = None):
        super().__init__(config, [SERVICE_NAME], telemetry)
        self.servicer = EncoderServicer(self.draining)
        pb_grpc.add_VisionEncoderServiceServicer_to_server(self.servicer, self.server)
        self.engine: EncoderEngine | None = None
        self.metrics = EncoderMetrics(self.telemetry.meter(self.scope), lambda: self.engine)

    async def load(self) -> None:
        tracer = self.telemetry.tracer(self.scope)
        load = functools.partial(EncoderEngine, self.config, tracer, self.metrics)
        self.engine = await asyncio.get_running_loop().run_in_executor(None, load)
        await self.engine.start()  # warm-up forward
        self.servicer.engine = self.engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
