"""`internvl-serve up` splits the machine's cores between the encoder and the decoder."""

from __future__ import annotations

import pytest

from internvl_serve.stack.local_stack import split_cores


@pytest.mark.parametrize("cores, split", [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (1, 3)), (8, (2, 6))])
def test_split(cores, split):
    assert split_cores(cores) == split


def test_every_core_is_used_once_from_four_cores():
    for cores in range(4, 65):
        encoder, decoder = split_cores(cores)
        assert encoder >= 1 and decoder >= 1 and encoder + decoder == cores


def test_both_services_take_the_flag():
    from internvl_serve.cli import build_parser

    parser = build_parser()
    for name in ("encoder", "decoder"):
        args = parser.parse_args([name, "--model", "m", "--num-threads", "3"])
        config = args.run.args[0](args)  # the subcommand's config builder
        assert config.num_threads == 3
