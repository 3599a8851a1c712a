"""Video decode + sampling give exactly the oracle's pixel_values (tolerance 0: torch.equal)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from internvl_serve.encoder.media.config import MediaLimits
from internvl_serve.encoder.media.video import decode_video, sample_indices
from internvl_serve.oracle.media import decode_video as oracle_decode
from internvl_testing.media import MPEG4_NOT_CODED_VOP, edited_checkpoint, remux_with_extra_packets, write_video

CODECS = {  # file name -> encoder: the containers/codecs the service must read
    "h264.mp4": "libx264",
    "mpeg4.avi": "mpeg4",
    "vp8.webm": "libvpx",
    "vp9.webm": "libvpx-vp9",
    "h264.mkv": "libx264",
    "mjpeg.avi": "mjpeg",
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    files = {
        name: write_video(root / name, frames=23, codec=codec, seed=i) for i, (name, codec) in enumerate(CODECS.items())
    }
    files["short.mp4"] = write_video(root / "short.mp4", frames=5, seed=9)
    return files


def _reference(oracle, data: bytes, num_frames: int | None) -> torch.Tensor:
    """The oracle's decode (every frame, PyAV) through InternVLVideoProcessor; None = keep every frame."""
    frames, meta = oracle_decode(data)
    kwargs = {"do_sample_frames": False} if num_frames is None else {"do_sample_frames": True, "num_frames": num_frames}
    out = oracle.processor.video_processor(videos=[frames], video_metadata=[meta], return_tensors="pt", **kwargs)
    return out["pixel_values_videos"][0]


@pytest.mark.parametrize("num_frames", [8, 4])
@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_container_and_codec_matches_the_oracle(name, num_frames, videos, oracle, video_decoder):
    data = videos[name].read_bytes()
    ours = video_decoder.decode_sync(data, num_frames)
    assert ours.pixel_values.shape == (num_frames, 3, 64, 64) and ours.pixel_values.dtype == torch.float32
    assert ours.total_frames == 23 and ours.fps == 10.0 and (ours.width, ours.height) == (96, 64)
    assert list(ours.indices) == sample_indices(23, num_frames)
    assert torch.equal(ours.pixel_values, _reference(oracle, data, num_frames))


def test_video_chat_matches_the_oracle_end_to_end(videos, oracle, video_decoder):
    chat = [
        {
            "role": "user",
            "content": [{"type": "video", "video": str(videos["h264.mp4"])}, {"type": "text", "text": "What happens?"}],
        }
    ]
    ours = video_decoder.decode_sync(videos["h264.mp4"].read_bytes(), 0)  # 0: the checkpoint's default (8)
    assert ours.num_frames == 8
    assert torch.equal(ours.pixel_values, oracle.prepare(chat).pixel_values)


def test_a_clip_shorter_than_num_frames_gives_all_its_frames(videos, oracle, video_decoder):
    data = videos["short.mp4"].read_bytes()
    ours = video_decoder.decode_sync(data, 8)
    assert ours.indices == (0, 1, 2, 3, 4) and ours.total_frames == 5
    assert torch.equal(ours.pixel_values, _reference(oracle, data, None))


def test_frames_are_counted_as_decoded_not_as_packets(videos, oracle, video_decoder):
    """Packets that decode to no frame (not-coded VOPs) make the demux count wrong; the worker notices and
    samples again from the 23 frames that decode, which is what the oracle counts."""
    data = remux_with_extra_packets(videos["mpeg4.avi"].read_bytes(), MPEG4_NOT_CODED_VOP, every=5)
    ours = video_decoder.decode_sync(data, 8)
    assert ours.total_frames == 23 == oracle_decode(data)[1]["total_num_frames"]
    assert torch.equal(ours.pixel_values, _reference(oracle, data, 8))


def test_frame_settings_are_read_from_the_checkpoint(tiny_model_dir, tmp_path, videos):
    from transformers import AutoProcessor

    from internvl_serve.encoder.media.config import load_preprocess

    edited = edited_checkpoint(
        tiny_model_dir,
        tmp_path / "edited",
        "video_preprocessor_config.json",
        size={"height": 40, "width": 24},
        num_frames=6,
        image_mean=[0.5, 0.4, 0.3],
    )
    pp = load_preprocess(edited)[1]
    data = videos["vp9.webm"].read_bytes()
    ours = decode_video(data, 0, pp, MediaLimits())
    assert ours.pixel_values.shape == (6, 3, 40, 24)
    frames, meta = oracle_decode(data)
    processor = AutoProcessor.from_pretrained(str(edited), backend="torchvision").video_processor
    expected = processor(videos=[frames], video_metadata=[meta], return_tensors="pt")["pixel_values_videos"][0]
    assert torch.equal(ours.pixel_values, expected)


def test_sampling_is_transformers_rule():
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor
    from transformers.video_utils import VideoMetadata

    processor = InternVLVideoProcessor()
    for total in (1, 2, 7, 8, 23, 30, 97, 1000, 12345):
        for n in (1, 2, 3, 4, 7, 8, 16, 32):
            if n > total:
                assert sample_indices(total, n) == list(range(total))
                continue
            for shift in (True, 0.0, 0.5):
                expected = processor.sample_frames(
                    VideoMetadata(total_num_frames=total, fps=30.0), num_frames=n, initial_shift=shift
                )
                assert sample_indices(total, n, shift) == expected.tolist(), (total, n, shift)


def test_async_decodes_run_concurrently_and_agree(videos, video_decoder):
    data = {name: videos[name].read_bytes() for name in ("h264.mp4", "vp9.webm", "mjpeg.avi")}

    async def main():
        return await asyncio.gather(*(video_decoder.decode(d, 4) for d in data.values()))

    results = asyncio.run(main())
    for (name, d), got in zip(data.items(), results):
        assert torch.equal(got.pixel_values, video_decoder.decode_sync(d, 4).pixel_values), name


def test_decode_video_function_without_a_pool(videos, media_pp, video_decoder):
    data = videos["h264.mkv"].read_bytes()
    once = decode_video(data, 4, media_pp[1], MediaLimits())
    pooled = decode_video(data, 4, media_pp[1], MediaLimits(), decoder=video_decoder)
    assert torch.equal(once.pixel_values, pooled.pixel_values) and once.indices == pooled.indices
