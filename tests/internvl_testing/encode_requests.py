"""Building Encode requests and reading their embeddings back."""

from __future__ import annotations

import numpy as np
import torch

from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2 as pb


def image(data: bytes) -> media_pb2.Media:
    return media_pb2.Media(image=media_pb2.Image(data=data))


def video(data: bytes, num_frames: int = 0) -> media_pb2.Media:
    return media_pb2.Media(video=media_pb2.Video(data=data, num_frames=num_frames))


def ref(media_id: str) -> media_pb2.Media:
    return media_pb2.Media(media_id=media_id)


def request(*media, embeddings: bool = True) -> pb.EncodeRequest:
    return pb.EncodeRequest(media=list(media), return_embeddings=embeddings)


def embeddings(item: pb.EncodedMedia) -> torch.Tensor:
    t = item.embeddings
    assert t.dtype == "float32"
    return torch.from_numpy(np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape)).copy())
