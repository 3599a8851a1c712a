"""The decoder engine on the tiny checkpoint, with media embeddings from the oracle (no encoder service).

`run_engine(test, **overrides)` builds a fresh Engine on the shared runtime with DecoderConfig overrides,
runs `await test(engine)` in a new event loop, and then checks the invariant every test must leave behind:
no request queued or running and the block pool back to full.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from internvl_serve.oracle.embeddings import media_embeddings
from internvl_testing.engine_testing import MAX_NEW


@pytest.fixture(scope="session")
def chats(model_card_chats):
    return model_card_chats


@pytest.fixture(scope="session")
def media(oracle, chats):
    return {name: media_embeddings(oracle, chat) for name, chat in chats.items()}


@pytest.fixture(scope="session")
def expected(oracle, chats):
    """transformers' greedy tokens for each chat alone."""
    return {name: oracle.generate(chat, max_new_tokens=MAX_NEW)[0] for name, chat in chats.items()}


@pytest.fixture(scope="session")
def runtime(tiny_model_dir):
    from internvl_serve.decoder.config import DecoderConfig
    from internvl_serve.decoder.engine import load_model

    return load_model(
        DecoderConfig(model=str(tiny_model_dir), num_kv_blocks=256, max_num_seqs=8, max_tokens_per_step=512)
    )


@pytest.fixture
def run_engine(runtime):
    from internvl_serve.decoder.engine import Engine

    def run(test, runtime_=None, **overrides):
        rt = runtime_ or runtime
        config = dataclasses.replace(rt.config, **overrides)

        async def main():
            engine = Engine(rt, config)
            try:
                result = await test(engine)
                await asyncio.sleep(0)  # let cancelled tasks run their cleanup
                stats = engine.stats()
                assert (stats.num_running, stats.num_waiting) == (0, 0), stats
                assert engine.num_free_blocks == engine.num_total_blocks, stats
                assert engine.block_manager.num_sequences == 0
                return result
            finally:
                await engine.close()

        return asyncio.run(main())

    return run


@pytest.fixture
def request_for(chats, media):
    from internvl_serve.decoder.engine import GenerationRequest, SamplingParams

    def make(name, **sampling):
        sampling.setdefault("max_new_tokens", MAX_NEW)
        return GenerationRequest(chats[name], media[name], SamplingParams(**sampling), request_id=name)

    return make
