"""encode() against a real in-process encoder (tiny checkpoint, real redis-server): media ids that resolve
again, every kind of media value, typed errors for what the server refuses, and the encode command."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from internvl_serve.clients import AsyncInternVLClient, InternVLClient
from internvl_serve.clients import errors as e
from internvl_serve.clients.cli import EXIT_OK, EXIT_USAGE, main
from internvl_testing.media import alpha_image, image_bytes, noise_image

TOKENS_PER_TILE = 16  # the tiny preset


@pytest.fixture(scope="module")
def client(encoder):
    with InternVLClient("127.0.0.1:1", encoder_target=encoder.address, timeout=120) as c:
        yield c


def test_media_ids_come_back_and_resolve_again(client, media_dir):
    (first,) = client.encode(str(media_dir / "view.jpg"))
    assert first.media_type == "image" and first.reusable and first.model
    assert first.num_tiles > 1 and first.num_tokens == first.num_tiles * TOKENS_PER_TILE
    (again,) = client.encode({"type": "image", "path": str(media_dir / "view.jpg")})
    assert again.media_id == first.media_id and again.cache_hit, "same bytes, same id, answered from the cache"
    by_id, by_object = client.encode([{"media_id": first.media_id}, first])
    for resolved in (by_id, by_object):
        assert resolved.media_id == first.media_id and resolved.cache_hit
        assert (resolved.media_type, resolved.num_tokens) == ("image", first.num_tokens)


def test_every_kind_of_value_in_one_call_in_order(client, media_dir):
    rgba = alpha_image(40, 30, 9)
    frames = np.stack([np.asarray(noise_image(32, 32, s)) for s in range(5)])
    results = client.encode(
        [
            media_dir / "bridge.jpg",
            rgba,
            np.asarray(noise_image(20, 20, 4)),
            {"type": "video", "video": frames, "num_frames": 3},
            str(media_dir / "tennis.mp4"),
        ],
        num_frames=4,
    )
    assert [r.media_type for r in results] == ["image", "image", "image", "video", "video"]
    assert [r.num_frames for r in results[3:]] == [3, 4], "a part's num_frames wins over the call's"
    assert results[3].num_tokens == 3 * TOKENS_PER_TILE
    assert len({r.media_id for r in results}) == 5
    (png,) = client.encode(image_bytes(rgba, "PNG"))
    assert png.media_id == results[1].media_id, "a PIL image is sent as the PNG of its pixels, mode kept"


def test_embeddings_on_request(client, media_dir):
    (item,) = client.encode(media_dir / "bridge.jpg", return_embeddings=True)
    assert item.embeddings.shape[0] == item.num_tokens and item.embeddings.dtype == np.float32
    assert np.isfinite(item.embeddings).all()
    assert client.encode(media_dir / "bridge.jpg")[0].embeddings is None


def test_async_client_gets_the_same_ids(encoder, client, media_dir):
    async def go():
        async with AsyncInternVLClient(encoder.address) as aclient:
            return await asyncio.gather(
                aclient.encode(media_dir / "view.jpg"), aclient.encode(media_dir / "liberty.jpg")
            )

    (view,), (liberty,) = asyncio.run(go())
    assert view.media_id == client.encode(media_dir / "view.jpg")[0].media_id
    assert liberty.media_id == client.encode(media_dir / "liberty.jpg")[0].media_id


def test_undecodable_bytes_are_invalid_argument(client):
    with pytest.raises(e.InvalidArgumentError) as err:
        client.encode({"type": "image", "image": b"definitely not an image"})
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "media[0]" in err.value.details
    assert not isinstance(err.value, e.InputError), "this verdict came from the server"


def test_unknown_media_id_is_not_found(client, media_dir):
    import hashlib

    (real,) = client.encode(media_dir / "bridge.jpg")
    prefix = real.media_id.rsplit("-", 1)[0]
    never_encoded = f"{prefix}-{hashlib.sha256(b'never encoded').hexdigest()}"
    with pytest.raises(e.NotFoundError, match="unknown or expired") as err:
        client.encode({"type": "image", "media_id": never_encoded})
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(e.InvalidArgumentError, match="not an id this service issued"):
        client.encode({"media_id": "garbage"})


def test_a_reply_over_the_clients_receive_limit_is_resource_exhausted(encoder, media_dir):
    from internvl_serve.clients import ChannelSettings

    small = ChannelSettings(max_receive_bytes=4096)
    with InternVLClient(encoder.address, channel_settings=small) as client:
        assert client.encode(media_dir / "bridge.jpg")[0].media_id, "metadata alone fits"
        with pytest.raises(e.ResourceExhaustedError) as err:
            client.encode(media_dir / "bridge.jpg", return_embeddings=True)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_deadline_too_short_is_deadline_exceeded(client, media_dir):
    with pytest.raises(e.DeadlineExceededError):
        client.encode(np.asarray(noise_image(300, 200, 11)), timeout=0.001)


def test_encode_command_prints_one_id_per_file(encoder, client, media_dir, capsys):
    paths = [str(media_dir / "liberty.jpg"), str(media_dir / "tennis.mp4")]
    assert main(["encode", "--target", encoder.address, "--num-frames", "2", *paths]) == EXIT_OK
    printed = capsys.readouterr().out.split()
    expected = client.encode([paths[0], {"type": "video", "path": paths[1], "num_frames": 2}])
    assert printed == [r.media_id for r in expected]


def test_encode_command_json_and_server_refusal(encoder, media_dir, tmp_path, capsys):
    import json

    assert main(["encode", "--target", encoder.address, "--json", str(media_dir / "bridge.jpg")]) == EXIT_OK
    row = json.loads(capsys.readouterr().out)
    assert row["path"].endswith("bridge.jpg") and row["media_type"] == "image" and row["ttl_seconds"] > 0
    (tmp_path / "notes.txt").write_text("not media")
    assert main(["encode", "--target", encoder.address, str(tmp_path / "notes.txt")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("internvl-client: error: the encoder refused the request (INVALID_ARGUMENT): ")
    assert len(err.splitlines()) == 1
