"""Bad input gets INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for size) with an actionable message; the
server stays up and keeps answering."""

from __future__ import annotations

import grpc
import pytest

from internvl_serve.pb.internvl.v1 import media_pb2
from internvl_testing.encode_requests import image, ref, request, video
from internvl_testing.encoder_server import encoder_config, encoder_stub, start_encoder
from internvl_testing.media import image_bytes, noise_image


@pytest.fixture(scope="module")
def stub(tiny_model_dir):
    thread = start_encoder(encoder_config(tiny_model_dir, None, max_media_per_request=3, max_receive_bytes=2 << 20))
    channel, stub = encoder_stub(thread.address)
    yield stub
    channel.close()
    thread.close()


def _code(stub, req):
    with pytest.raises(grpc.RpcError) as err:
        stub.Encode(req)
    return err.value.code(), err.value.details()


GOOD = image_bytes(noise_image(40, 30, 1), "PNG")


@pytest.mark.parametrize(
    "req, code, words",
    [
        (request(), grpc.StatusCode.INVALID_ARGUMENT, "no media"),
        (request(media_pb2.Media()), grpc.StatusCode.INVALID_ARGUMENT, "none of image, video or media_id"),
        (request(*[image(GOOD)] * 4), grpc.StatusCode.INVALID_ARGUMENT, "limit is 3"),
        (request(image(b"")), grpc.StatusCode.INVALID_ARGUMENT, "media[0]"),
        (request(image(b"definitely not an image")), grpc.StatusCode.INVALID_ARGUMENT, "media[0]"),
        (request(image(GOOD), image(GOOD[: len(GOOD) // 2])), grpc.StatusCode.INVALID_ARGUMENT, "media[1]"),
        (request(video(b"not a video")), grpc.StatusCode.INVALID_ARGUMENT, "media[0]"),
        (request(video(b"x", num_frames=1000)), grpc.StatusCode.INVALID_ARGUMENT, "num_frames"),
        (request(ref("../../etc/passwd")), grpc.StatusCode.INVALID_ARGUMENT, "media_id"),
        (request(image(b"\0" * (3 << 20))), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ],
)
def test_bad_request(stub, req, code, words):
    got, details = _code(stub, req)
    assert got == code, details
    assert words in details
    assert "Traceback" not in details
    assert stub.Encode(request(image(GOOD))).media[0].num_tokens > 0, "server still up"
