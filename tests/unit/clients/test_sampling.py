"""Sampling keyword arguments -> SamplingParams: every field, None = default, bad names and values refused."""

from __future__ import annotations

import pytest

from internvl_serve.clients.errors import InputError
from internvl_serve.clients.sampling import SAMPLING_KWARGS, sampling_params
from internvl_serve.pb.internvl.v1 import generation_service_pb2 as pb


def test_every_field_reaches_the_proto():
    params = sampling_params(
        max_new_tokens=12,
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        seed=0,
        stop=["\n\n", "END"],
        ignore_eos=True,
        repetition_penalty=1.1,
    )
    wire = pb.SamplingParams.FromString(params.SerializeToString())
    assert (wire.max_new_tokens, wire.top_k, wire.seed, list(wire.stop), wire.ignore_eos) == (
        12,
        40,
        0,
        ["\n\n", "END"],
        True,
    )
    assert wire.HasField("seed"), "seed=0 is a seed, not 'unset'"
    assert wire.temperature == pytest.approx(0.7) and wire.top_p == pytest.approx(0.9)
    assert wire.repetition_penalty == pytest.approx(1.1)


def test_nothing_or_none_means_server_defaults():
    assert sampling_params() == pb.SamplingParams()
    assert sampling_params(**dict.fromkeys(SAMPLING_KWARGS)) == pb.SamplingParams()
    assert not sampling_params(temperature=None).HasField("seed")


def test_a_single_stop_string():
    assert list(sampling_params(stop="###").stop) == ["###"]


def test_unknown_names_are_a_type_error_listing_the_accepted_ones():
    with pytest.raises(
        TypeError, match="unexpected sampling argument.*do_sample, max_tokens.*accepted: max_new_tokens"
    ):
        sampling_params(max_tokens=5, do_sample=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be between 0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
        ({"top_k": 1 << 40}, "top_k must be between"),
        ({"seed": -3}, "seed must be between 0"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"temperature": float("inf")}, "temperature must be"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"top_p": 1.5}, "top_p must be between 0 and 1"),
        ({"repetition_penalty": -1.0}, "repetition_penalty must be"),
        ({"ignore_eos": 1}, "ignore_eos must be True or False"),
        ({"stop": [""]}, "1 to 256 UTF-8 bytes"),
        ({"stop": ["é" * 129]}, "1 to 256 UTF-8 bytes"),
        ({"stop": ["x"] * 17}, "at most 16 stop strings"),
        ({"stop": [1]}, "stop must be a string or a list of strings"),
    ],
)
def test_bad_values_are_refused_on_the_client(kwargs, message):
    with pytest.raises(InputError, match=message):
        sampling_params(**kwargs)
