"""Hugging Face chat messages (every shape of the InternVL3 model card) -> internvl.v1 protos.

The requests are serialised and parsed back, so what is checked is what goes on the wire. The model card's
urls are served by a real HTTP server on 127.0.0.1 (from the `media_dir` files) and fetched with allow_urls.
"""

from __future__ import annotations

import numpy as np
import pytest

from internvl_serve.clients.errors import InputError, MediaError
from internvl_serve.clients.fetch import UrlPolicy
from internvl_serve.clients.messages import encode_request, generate_request, is_batch, to_proto_messages
from internvl_serve.clients.results import EncodedMedia
from internvl_serve.clients.sampling import sampling_params
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb

ALLOW = UrlPolicy(allow=True)


@pytest.fixture
def card(http, media_dir):
    """name -> url of the model card's media, served locally."""
    names = {
        "bee": "view.jpg",
        "cats": "bridge.jpg",
        "view": "view.jpg",
        "stop": "liberty.jpg",
        "liberty": "liberty.jpg",
        "bridge": "bridge.jpg",
        "tennis": "tennis.mp4",
    }
    return {k: http.add(f"/{k}", (media_dir / v).read_bytes()) for k, v in names.items()}


def _wire(conversation, policy=ALLOW, **kwargs) -> pb.GenerateRequest:
    request = generate_request(conversation, sampling_params(max_new_tokens=25), policy, **kwargs)
    return pb.GenerateRequest.FromString(request.SerializeToString())


def _shape(request: pb.GenerateRequest) -> list[tuple[str, list[str]]]:
    """(role, [part kinds]) per message: "text:<text>", "image", "video", "media_id"."""
    out = []
    for msg in request.messages:
        kinds = []
        for part in msg.content:
            if part.WhichOneof("content") == "text":
                kinds.append(f"text:{part.text}")
            else:
                kinds.append(part.media.WhichOneof("source"))
        out.append((msg.role, kinds))
    return out


def test_pipeline_example_image_key_with_a_url(card, media_dir):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": card["bee"]}, {"type": "text", "text": "Describe this image."}],
        }
    ]
    request = _wire(messages)
    assert _shape(request) == [("user", ["image", "text:Describe this image."])]
    assert request.messages[0].content[0].media.image.data == (media_dir / "view.jpg").read_bytes()
    assert request.sampling.max_new_tokens == 25


def test_single_image_url_key(card, media_dir):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "url": card["cats"]},
                {"type": "text", "text": "Please describe the image explicitly."},
            ],
        }
    ]
    request = _wire(messages)
    assert _shape(request) == [("user", ["image", "text:Please describe the image explicitly."])]
    assert request.messages[0].content[0].media.image.data == (media_dir / "bridge.jpg").read_bytes()


def test_text_only():
    request = _wire([{"role": "user", "content": [{"type": "text", "text": "Write a haiku"}]}], UrlPolicy())
    assert _shape(request) == [("user", ["text:Write a haiku"])]


def test_batch_of_image_chats_and_several_images_in_one_chat(card, media_dir):
    batch = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": card["view"]},
                    {"type": "text", "text": "Write a haiku for this image"},
                ],
            }
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": card["liberty"]},
                    {"type": "image", "url": card["bridge"]},
                    {"type": "text", "text": "These images depict two different landmarks. Can you identify them?"},
                ],
            }
        ],
    ]
    assert is_batch(batch)
    first, second = (_wire(c) for c in batch)
    assert _shape(first) == [("user", ["image", "text:Write a haiku for this image"])]
    assert _shape(second)[0][1][:2] == ["image", "image"]
    parts = second.messages[0].content
    assert parts[0].media.image.data == (media_dir / "liberty.jpg").read_bytes()
    assert parts[1].media.image.data == (media_dir / "bridge.jpg").read_bytes(), "order of images is kept"


def test_video(card, media_dir):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video", "url": card["tennis"]},
                {"type": "text", "text": "What type of shot is the man performing?"},
            ],
        }
    ]
    request = _wire(messages)
    video = request.messages[0].content[0].media.video
    assert video.data == (media_dir / "tennis.mp4").read_bytes() and video.num_frames == 0
    assert _wire(messages, num_frames=6).messages[0].content[0].media.video.num_frames == 6, "client default"
    messages[0]["content"][0]["num_frames"] = 4
    assert _wire(messages, num_frames=6).messages[0].content[0].media.video.num_frames == 4, "the part's own wins"


def test_interleaved_batch_of_images_and_videos(card):
    batch = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": card["liberty"]},
                    {"type": "image", "url": card["bridge"]},
                    {"type": "text", "text": "These images depict two different landmarks. Can you identify them?"},
                ],
            }
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "video", "url": card["tennis"]},
                    {"type": "text", "text": "What type of shot is the man performing?"},
                ],
            }
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "url": card["view"]},
                    {"type": "text", "text": "Write a haiku for this image"},
                ],
            }
        ],
    ]
    assert is_batch(batch) and not is_batch(batch[0])
    shapes = [_shape(_wire(c))[0][1] for c in batch]
    assert [s[:-1] for s in shapes] == [["image", "image"], ["video"], ["image"]]


def test_local_paths_pil_numpy_and_plain_string_content(media_dir):
    from PIL import Image

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    conversation = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "image", "path": str(media_dir / "view.jpg")},
                {"type": "image", "image": media_dir / "bridge.jpg"},
                {"type": "image", "image": Image.open(media_dir / "liberty.jpg")},
                {"type": "image", "image": np.zeros((4, 4, 3), np.uint8)},
                {"type": "video", "video": frames, "num_frames": 2},
                {"type": "video", "path": str(media_dir / "tennis.mp4")},
                {"type": "text", "text": "Compare."},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
        {"role": "user", "content": "And now?"},
    ]
    request = _wire(conversation, UrlPolicy())
    assert _shape(request) == [
        ("system", ["text:You are terse."]),
        ("user", ["image", "image", "image", "image", "video", "video", "text:Compare."]),
        ("assistant", ["text:Done."]),
        ("user", ["text:And now?"]),
    ]
    assert request.messages[1].content[4].media.video.num_frames == 2


def test_media_ids_and_encoded_media_are_references():
    encoded = EncodedMedia("abc123", "image", 1, 16, 0, 16, False, 3600)
    request = _wire(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "media_id": "xyz"},
                    {"type": "video", "media_id": encoded},
                    {"type": "text", "text": "?"},
                ],
            }
        ],
        UrlPolicy(),
    )
    parts = request.messages[0].content
    assert [parts[0].media.media_id, parts[1].media.media_id] == ["xyz", "abc123"]


def test_request_id_and_stream_requests():
    request = generate_request(
        [{"role": "user", "content": "hi"}], sampling_params(), UrlPolicy(), request_id="job-7", stream=True
    )
    assert isinstance(request, pb.GenerateStreamRequest) and request.request_id == "job-7"
    assert not request.sampling.HasField("seed")


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([{"role": "robot", "content": "hi"}], r"messages\[0\].role must be one of system, user, assistant"),
        ([{"role": "user"}], r"messages\[0\].content must be a string or a list"),
        ([{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}], r"content\[0\].type must be one of"),
        (
            [{"role": "user", "content": [{"type": "image"}]}],
            r"content\[0\] \(image\) needs exactly one of .*found none",
        ),
        ([{"role": "user", "content": [{"type": "image", "url": "a", "path": "b"}]}], "found url, path"),
        ([{"role": "user", "content": [{"type": "image", "media_id": "a", "num_frames": 3}]}], "videos only"),
        ([{"role": "user", "content": [{"type": "video", "media_id": "a", "num_frames": -1}]}], "num_frames must be"),
        ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "'text' must be a string"),
        ([{"role": "user", "content": [{"type": "image", "media_id": ""}]}], "media_id must be a non-empty"),
        (["hello"], r"messages\[0\] must be a dict"),
        ([], "needs at least one message"),
    ],
)
def test_malformed_messages_are_refused_before_sending(conversation, message):
    with pytest.raises(InputError, match=message):
        to_proto_messages(conversation, UrlPolicy())


def test_urls_are_not_fetched_unless_allowed(card, http):
    messages = [{"role": "user", "content": [{"type": "image", "url": card["bee"]}, {"type": "text", "text": "?"}]}]
    with pytest.raises(MediaError, match="allow_urls=True"):
        _wire(messages, UrlPolicy())
    assert http.hits == []


def test_missing_local_file_names_it(tmp_path):
    with pytest.raises(MediaError, match="video file not found: .*gone.mp4"):
        _wire([{"role": "user", "content": [{"type": "video", "path": str(tmp_path / "gone.mp4")}]}], UrlPolicy())


def test_is_batch_rejects_non_lists():
    for bad in ("hello", [], {"role": "user"}, None):
        with pytest.raises(InputError, match="non-empty list"):
            is_batch(bad)


def test_encode_request_items(media_dir):
    request = encode_request(
        [
            str(media_dir / "view.jpg"),
            media_dir / "tennis.mp4",
            np.zeros((3, 8, 8, 3), np.uint8),
            {"type": "video", "path": str(media_dir / "tennis.mp4"), "num_frames": 3},
            {"media_id": "abc"},
            EncodedMedia("def", "image", 1, 16, 0, 16, True, 10),
        ],
        UrlPolicy(),
        num_frames=5,
    )
    kinds = [item.WhichOneof("source") for item in request.media]
    assert kinds == ["image", "video", "video", "video", "media_id", "media_id"]
    assert [request.media[i].video.num_frames for i in (1, 2, 3)] == [5, 5, 3]
    assert request.media[0].image.data == (media_dir / "view.jpg").read_bytes()
    assert encode_request(str(media_dir / "view.jpg"), UrlPolicy()).media[0].WhichOneof("source") == "image"
    with pytest.raises(InputError, match="at least one"):
        encode_request([], UrlPolicy())
