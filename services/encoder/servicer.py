"""internvl.v1.VisionEncoderService over the EncoderEngine engine: protos in, protos out."""

from __future__ import annotations

import asyncio

from opentelemetry import trace

from internvl_serve.common.embedding_blob import DTYPE_NAMES, MEDIA_IMAGE, tensor_bytes
from internvl_serve.common.errors import InvalidArgument, Unavailable
from internvl_serve.common.tenancy import current_tenant
from internvl_serve.encoder.engine import EncodeOutcome, EncoderEngine, ImageInput, MediaInput, MediaRef, VideoInput
from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as pb
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VisionEncoderService"].full_name


def media_input(index: int, media: media_pb2.Media) -> MediaInput:
    kind = media.WhichOneof("source")
    if kind == "image":
        return ImageInput(media.image.data)
    if kind == "video":
        return VideoInput(media.video.data, media.video.num_frames)
    if kind == "media_id":
        return MediaRef(media.media_id)
    raise InvalidArgument(f"media[{index}] has none of image, video or media_id set")


def encoded_media(outcome: EncodeOutcome, *, with_embeddings: bool, ttl_s: int) -> pb.EncodedMedia:
    blob = outcome.blob
    msg = pb.EncodedMedia(
        media_id=outcome.media_id,
        num_tiles=blob.num_tiles,
        num_tokens=blob.embeddings.shape[0],
        cache_hit=outcome.cache_hit,
        media_type=media_pb2.MEDIA_TYPE_IMAGE if blob.media_type == MEDIA_IMAGE else media_pb2.MEDIA_TYPE_VIDEO,
        num_frames=blob.num_frames,
        tokens_per_tile=blob.tokens_per_tile,
        ttl_seconds=ttl_s if outcome.in_cache else 0,
    )
    if with_embeddings:
        emb = blob.embeddings
        msg.embeddings.CopyFrom(
            media_pb2.Tensor(dtype=DTYPE_NAMES[emb.dtype], shape=list(emb.shape), data=tensor_bytes(emb))
        )
    return msg


class EncoderServicer(pb_grpc.VisionEncoderServiceServicer):
    """Registered before the server starts (grpc.aio cannot add services later); `engine` is set once the
    model is loaded and warm, and until then calls answer UNAVAILABLE, as health says NOT_SERVING."""

    def __init__(self, draining: asyncio.Event):
        self.engine: EncoderEngine | None = None
        self.draining = draining

    async def Encode(self, request: pb.EncodeRequest, context) -> pb.EncodeResponse:
        if self.draining.is_set():
            raise Unavailable("this encoder is shutting down; retry (another replica will answer)")
        if self.engine is None:
            raise Unavailable("the encoder is still loading its model; retry shortly")
        items = [media_input(i, m) for i, m in enumerate(request.media)]
        trace.get_current_span().set_attribute("internvl.media.count", len(items))
        outcomes = await self.engine.encode(items, current_tenant())
        trace.get_current_span().set_attribute("internvl.media_cache_hits", sum(o.cache_hit for o in outcomes))
        ttl = self.engine.config.cache.ttl_s
        return pb.EncodeResponse(
            media=[encoded_media(o, with_embeddings=request.return_embeddings, ttl_s=ttl) for o in outcomes],
            model=self.engine.model_name,
            model_fingerprint=self.engine.model_fingerprint,
        )
