"""`internvl-serve decoder`: load, warm up, serve until SIGTERM, finish in-flight work, stop."""

from __future__ import annotations

import asyncio
import logging

from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc
from internvl_serve.decoder.service.encoder_client import EncoderClient
from internvl_serve.common.grpc_server import bind, create_server, serve_until_signal
from internvl_serve.common.logs import log_event
from internvl_serve.common.telemetry import DECODER_SERVICE, Telemetry, setup_telemetry
from internvl_serve.decoder.service.chat_telemetry import DecoderMetrics
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.engine.engine_loop import Engine
from internvl_serve.decoder.service.media_ids import MediaIdLookup
from internvl_serve.decoder.engine.loaded_model import load_model
from internvl_serve.decoder.service.servicer import SERVICE_NAME, GenerationServicer

log = logging.getLogger("internvl_serve.decoder")
MiB = 1024 * 1024


class DecoderServer:
    """The running service; tests drive it in-process (start / stop), the CLI runs it until a signal."""

    def __init__(self, config: DecoderConfig, telemetry: Telemetry | None = None):
        """`telemetry`: default, providers from the OTEL_* environment, shut down (flushed) by stop()."""
        self.config = config
        self.draining = asyncio.Event()
        self._owns_telemetry = telemetry is None
        self.telemetry = telemetry or setup_telemetry(DECODER_SERVICE)
        tracer = self.telemetry.tracer("internvl_serve.decoder")
        # Requests carry media bytes (up to 16 items); replies are text.
        self.server, self.health = create_server([SERVICE_NAME], max_receive_bytes=512 * MiB, max_send_bytes=64 * MiB,
                                                 telemetry=self.telemetry)  # fmt: skip
        self.port = bind(self.server, config.host, config.port)
        self.encoders = EncoderClient(list(config.encoders), tracer=tracer) if config.encoders else None
        self.engine: Engine | None = None
        metrics = DecoderMetrics(self.telemetry.meter("internvl_serve.decoder"), lambda: self.engine)
        self.media_ids = MediaIdLookup(config.redis_url) if config.redis_url and self.encoders else None
        self.servicer = GenerationServicer(self.encoders, self.draining, tracer=tracer, metrics=metrics,
                                           capture_content=self.telemetry.capture_content,
                                           media_ids=self.media_ids)  # fmt: skip
        pb_grpc.add_GenerationServiceServicer_to_server(self.servicer, self.server)

    async def start(self) -> None:
        await self.health.set(False)
        await self.server.start()  # health answers NOT_SERVING while the model loads
        runtime = await asyncio.get_running_loop().run_in_executor(None, load_model, self.config)
        self.engine = Engine(runtime, self.config)
        await self.engine.warmup()
        self.servicer.model_name = runtime.model_name
        self.servicer.engine = self.engine
        await self.health.set(True)
        log_event(log, "decoder_serving", host=self.config.host, port=self.port, encoders=list(self.config.encoders),
                  kv_blocks=self.engine.num_total_blocks)  # fmt: skip

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight requests finish within the grace period."""
        grace = self.config.grace_s if grace_s is None else grace_s
        self.draining.set()
        await self.health.set(False)
        if self.engine is not None:
            finished = await self.engine.wait_idle(grace)
            log_event(log, "decoder_draining", finished_in_grace=finished)
        await self.server.stop(0 if self.engine is None else 1.0)
        if self.engine is not None:
            await self.engine.close()
        if self.encoders is not None:
            await self.encoders.close()
        if self.media_ids is not None:
            await self.media_ids.close()
        if self._owns_telemetry:
            await asyncio.to_thread(self.telemetry.shutdown)  # export what is buffered before the process ends
        log_event(log, "decoder_stopped", port=self.port)


async def run_decoder(config: DecoderConfig) -> None:
    await serve_until_signal(DecoderServer(config))
