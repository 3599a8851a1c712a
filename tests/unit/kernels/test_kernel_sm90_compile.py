"""The kernels compile for an H100 (sm_90) at the InternVL3 shapes, without a GPU.

The interpreter never runs triton's compiler, so code-generation errors, shared memory over the limit
or tile shapes the tensor cores reject would otherwise first show up on a (scarce) GPU machine. Runs
in a subprocess: this session's triton is in interpreter mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from internvl_testing.sm90_compile import H100_SMEM_BYTES

SCRIPT = Path(__file__).parents[2] / "internvl_testing" / "sm90_compile.py"


def _ptxas_available() -> bool:
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


@pytest.mark.skipif(not _ptxas_available(), reason="this triton build ships no ptxas")
def test_every_launch_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kernels = {row["kernel"] for row in rows}
    assert kernels == {"_write_kv_cache_kernel", "_prefill_kernel", "_decode_split_kernel", "_decode_merge_kernel"}
    for row in rows:
        assert row["shared_bytes"] <= H100_SMEM_BYTES, row
        if row["kernel"] in ("_prefill_kernel", "_decode_split_kernel"):
            assert row["tensor_core_ops"] > 0, row  # tl.dot must land on the tensor cores
            assert row["local_stores"] == 0, row  # no register spills
