"""`internvl-serve decoder`: load, warm up, serve until SIGTERM, finish in-flight work, stop
(common/service_lifecycle.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from internvl_serve.common.errors import StartupError
from internvl_serve.common.logs import log_event
from internvl_serve.common.service_lifecycle import ServiceServer
from internvl_serve.common.service_settings import MiB, receive_limit
from internvl_serve.common.telemetry import Telemetry
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.engine import Engine, load_model, tensor_parallel_problems
from internvl_serve.decoder.http.app import OpenAIApi
from internvl_serve.decoder.http.media_fetch import MediaFetcher
from internvl_serve.decoder.http.server import HttpApiServer
from internvl_serve.decoder.service.chat_telemetry import DecoderMetrics
from internvl_serve.decoder.service.encoder_client import EncoderClient
from internvl_serve.decoder.service.media_ids import MediaIdLookup
from internvl_serve.decoder.service.servicer import SERVICE_NAME, GenerationServicer
from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc


def encoder_client(config: DecoderConfig, tracer) -> EncoderClient | None:
    """The client of the --encoder replicas, or None (text only). What can only be checked now (TLS files,
    addresses that must resolve) is a StartupError: exit 2 before the decoder listens."""
    if not config.encoders:
        return None
    try:
        return EncoderClient(
            list(config.encoders),
            attempts=config.encoder_attempts,
            backoff_s=config.encoder_backoff_s,
            timeout_s=config.encoder_timeout_s,
            max_concurrency=config.encoder_max_concurrency,
            max_message_bytes=config.max_encoder_reply_bytes,
            max_request_bytes=receive_limit(config),
            credentials=config.encoder_tls.credentials(),
            tls_server_name=config.encoder_tls.server_name,
            token=config.encoder_token,
            tracer=tracer,
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None


class DecoderServer(ServiceServer):
    kind = "decoder"

    def __init__(self, config: DecoderConfig, telemetry: Telemetry | None = None):
        if problems := _tensor_parallel_problems(config):  # before anything listens or loads
            raise StartupError("; ".join(problems))
        super().__init__(config, [SERVICE_NAME], telemetry)
        tracer = self.telemetry.tracer(self.scope)
        self.encoders = encoder_client(config, tracer)
        self.engine: Engine | None = None
        self.runtime = None  # the LoadedModel (its tensor-parallel workers are closed last)
        metrics = DecoderMetrics(self.telemetry.meter(self.scope), lambda: self.engine)
        self.media_ids = MediaIdLookup(config.cache) if config.cache.url and self.encoders else None
        self.servicer = GenerationServicer(
            self.encoders,
            self.draining,
            tracer=tracer,
            metrics=metrics,
            capture_content=self.telemetry.capture_content,
            media_ids=self.media_ids,
        )
        pb_grpc.add_GenerationServiceServicer_to_server(self.servicer, self.server)
        self.fetcher: MediaFetcher | None = None
        self.http = self._http_api() if config.http_port is not None else None
        self.http_port = None if self.http is None else self.http.port  # the bound one (0 picks)

    def _http_api(self) -> HttpApiServer:
        """The OpenAI-compatible API over the same servicer, tokens and TLS (decoder/http/)."""
        config = self.config
        try:
            self.fetcher = MediaFetcher(
                config.allowed_media_domains, config.media_fetch_timeout_s, config.max_request_media_bytes
            )
        except ValueError as exc:
            raise StartupError(f"--allowed-media-domains: {exc}") from None
        max_body = receive_limit(config) * 4 // 3 + MiB  # media arrive base64-encoded in data: URLs
        media_limits = (config.max_media_per_request, config.max_request_media_bytes)
        api = OpenAIApi(
            self.servicer,
            self.security.tokens,
            self.in_flight,
            self.fetcher,
            max_body,
            media_limits,
            is_serving=lambda: self.health.serving,
        )
        return HttpApiServer(api.app, config.host, config.http_port, config.tls)

    async def load(self) -> None:
        if self.http is not None:
            await self.http.start()  # /health says 503 until the model is loaded and warm
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, load_model, self.config)
        self.runtime = model
        # Off the loop: on CUDA the engine's profile run (KV-cache sizing) takes seconds; health keeps answering.
        self.engine = await loop.run_in_executor(None, Engine, model, self.config)
        if model.tp is not None:  # a rank that dies is fatal: NOT_SERVING, then exit non-zero
            model.tp.watch(lambda reason: loop.call_soon_threadsafe(self._tensor_parallel_failed, reason))
        await self.engine.warmup()
        self.servicer.model_name = model.model_name
        self.servicer.engine = self.engine

    def serving_fields(self) -> dict[str, Any]:
        return {
            "encoders": list(self.config.encoders),
            "kv_blocks": self.engine.num_total_blocks,
            "http_port": self.http_port,
        }

    async def drain(self, grace_s: float) -> None:
        """In-flight calls get the grace period (gRPC's own grace would cut long streams short): a call still
        encoding its media is not in the engine yet, so the servicer's calls are what must be done."""
        if self.engine is None:
            await self.server.stop(0)
            return
        finished = await self._wait_quiet(grace_s)
        log_event(
            self.log,
            "decoder_draining",
            finished_in_grace=finished,
            kv_blocks_free=self.engine.num_free_blocks,  # all of them again once every call is done
            kv_blocks_total=self.engine.num_total_blocks,
        )
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(1.0)

    async def _wait_quiet(self, timeout_s: float) -> bool:
        """Until no call is in flight (every engine request belongs to one); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.servicer.in_flight:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _tensor_parallel_failed(self, reason: str) -> None:
        self.fail(f"{reason}: the ranks are out of step and the model is incomplete; restart the decoder")

    async def close(self) -> None:
        if self.http is not None:
            await self.http.stop()  # idempotent; here when loading failed or the drain was cut short
        if self.fetcher is not None:
            await self.fetcher.close()
        if self.engine is not None:
            await self.engine.close()
        if self.encoders is not None:
            await self.encoders.close()
        if self.media_ids is not None:
            await self.media_ids.close()
        if self.runtime is not None and self.runtime.tp is not None:
            await asyncio.to_thread(self.runtime.tp.close)


def _tensor_parallel_problems(config: DecoderConfig) -> list[str]:
    try:
        return tensor_parallel_problems(config)
    except ValueError:  # an unreadable checkpoint: load() reports it with its own message
        return []
