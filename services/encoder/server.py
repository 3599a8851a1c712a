"""`internvl-serve encoder`: load, warm up, serve until SIGTERM, drain, stop."""

from __future__ import annotations

import asyncio
import functools
import logging

from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc
from internvl_serve.common.grpc_server import bind, create_server, serve_until_signal
from internvl_serve.common.logs import log_event
from internvl_serve.common.telemetry import ENCODER_SERVICE, Telemetry, setup_telemetry
from internvl_serve.encoder.config import EncoderConfig
from internvl_serve.encoder.engine import EncoderEngine
from internvl_serve.encoder.metrics import EncoderMetrics
from internvl_serve.encoder.servicer import SERVICE_NAME, EncoderServicer

log = logging.getLogger("internvl_serve.encoder")


class EncoderServer:
    """The running service; tests drive it in-process (start / stop), the CLI runs it until a signal."""

    def __init__(self, config: EncoderConfig, telemetry: Telemetry | None = None):
        """`telemetry`: default, providers from the OTEL_* environment, shut down (flushed) by stop()."""
        self.config = config
        self.draining = asyncio.Event()
        self._owns_telemetry = telemetry is None
        self.telemetry = telemetry or setup_telemetry(ENCODER_SERVICE)
        self.server, self.health = create_server(
            [SERVICE_NAME], max_receive_bytes=config.max_receive_bytes, max_send_bytes=config.max_send_bytes,
            telemetry=self.telemetry,
        )
        self.port = bind(self.server, config.host, config.port)
        self.servicer = EncoderServicer(self.draining)
        pb_grpc.add_VisionEncoderServiceServicer_to_server(self.servicer, self.server)
        self.engine: EncoderEngine | None = None
        self.metrics = EncoderMetrics(self.telemetry.meter("internvl_serve.encoder"), lambda: self.engine)

    async def start(self) -> None:
        await self.health.set(False)
        await self.server.start()  # health answers NOT_SERVING while the model loads
        loop = asyncio.get_running_loop()
        tracer = self.telemetry.tracer("internvl_serve.encoder")
        load = functools.partial(EncoderEngine, self.config, tracer, self.metrics)
        self.engine = await loop.run_in_executor(None, load)
        await self.engine.start()  # warm-up forward
        self.servicer.engine = self.engine
        await self.health.set(True)
        log_event(log, "encoder_serving", host=self.config.host, port=self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        self.draining.set()
        await self.health.set(False)
        await self.server.stop(self.config.grace_s if grace_s is None else grace_s)
        if self.engine is not None:
            await self.engine.close()
        if self._owns_telemetry:
            await asyncio.to_thread(self.telemetry.shutdown)  # export what is buffered before the process ends
        log_event(log, "encoder_stopped", port=self.port)


async def run_encoder(config: EncoderConfig) -> None:
    await serve_until_signal(EncoderServer(config))
