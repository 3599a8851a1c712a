"""Prefix caching over the real stack (decoder -> encoder -> Redis): the second pass of the model card's
chats is served from cached KV blocks and stays token-exact; two images behind the same placeholder tokens
never share KV."""

from __future__ import annotations

import concurrent.futures

import pytest

from internvl_testing.generate_requests import generate_request
from internvl_testing.media import noise_image

MAX_NEW = 12
NAMES = ["text only", "one image", "several images", "video"]


def test_model_card_chats_twice_second_pass_from_cached_prefixes(gen_stub, engine, oracle, model_card_chats):
    expected = {n: oracle.generate(model_card_chats[n], max_new_tokens=MAX_NEW)[0] for n in NAMES}
    passes = []
    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(len(NAMES)) as pool:
            replies = pool.map(
                lambda n: gen_stub.Generate(generate_request(model_card_chats[n], max_new_tokens=MAX_NEW)), NAMES
            )
            passes.append(dict(zip(NAMES, replies, strict=True)))
    for name in NAMES:
        assert list(passes[0][name].token_ids) == list(passes[1][name].token_ids) == expected[name], name
        usage = passes[1][name].usage
        assert usage.cached_tokens == (usage.input_tokens - 1) // 16 * 16, name  # every full block but the last
        assert usage.media_cache_hits == (0 if name == "text only" else 1 + (name == "several images"))
    assert engine.stats().prefix_cache_hit_rate > 0


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins-stack")
    paths = []
    for seed in (21, 22):
        path = root / f"twin{seed}.jpg"
        noise_image(120, 80, seed).save(path, quality=90)
        paths.append(str(path))
    return paths


def test_two_same_size_images_with_the_same_question_never_share_kv(gen_stub, engine, oracle, twins):
    chats = [
        [{"role": "user", "content": [{"type": "image", "image": p}, {"type": "text", "text": "What is shown here?"}]}]
        for p in twins
    ]
    replies = [gen_stub.Generate(generate_request(chat, max_new_tokens=MAX_NEW)) for chat in chats]
    expected = [oracle.generate(chat, max_new_tokens=MAX_NEW)[0] for chat in chats]
    assert expected[0] != expected[1]
    assert [list(r.token_ids) for r in replies] == expected
    # The second prompt has the same tokens as the first; only full blocks before the image are reused.
    prompt = oracle.prepare(chats[1]).prompt_ids(0)
    first_image_position = prompt.index(engine.runtime.prompt_builder.context_image_id)
    assert replies[1].usage.input_tokens == replies[0].usage.input_tokens == len(prompt)
    assert replies[1].usage.cached_tokens == first_image_position // 16 * 16
