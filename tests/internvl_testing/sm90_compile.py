"""Compile kernel launches for sm_90 on a machine without a GPU (ptxas ships with triton).

Runs in its own process without TRITON_INTERPRET (triton fixes interpreter-vs-compiler at import):
`record_launches` captures the wrappers' real launches instead of running them, and `compile_sm90`
specializes the arguments the way the JIT does (16-byte divisibility of pointers and of ints) and
compiles them to a cubin. This catches what the interpreter cannot: code-generation errors, shared
memory over the H100 limit, tile shapes the tensor cores reject.
"""

from __future__ import annotations

import contextlib

import torch

H100_SMEM_BYTES = 232448  # 227 KiB usable per block on sm_90

_TORCH_TO_TRITON = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}


@contextlib.contextmanager
def record_launches():
    """Launches become records (kernel, grid, args, kwargs); CPU tensors pass the device check."""
    from triton.runtime.jit import JITFunction

    from internvl_serve.kernels import checks

    calls: list[tuple] = []

    def getitem(self, grid):
        return lambda *args, **kwargs: calls.append((self, grid, args, kwargs))

    saved = JITFunction.__getitem__, checks.use_triton
    JITFunction.__getitem__ = getitem
    checks.use_triton = lambda device: True
    try:
        yield calls
    finally:
        JITFunction.__getitem__, checks.use_triton = saved


def compile_sm90(fn, args: tuple, kwargs: dict):
    """Compile one recorded launch for sm_90; returns triton's CompiledKernel (asm and metadata)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(fn.arg_names, args)) | kwargs
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(fn.arg_names):
        value = values[name]
        if name in kwargs:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TORCH_TO_TRITON[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{name}: cannot specialize {type(value)}")
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def _launches(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> list[tuple]:
    """Every kernel launch the wrappers make at one model shape (tiny lengths: only metadata matters)."""
    from internvl_serve.kernels import decode_attention, prefill_attention, write_kv_cache

    k_cache = torch.zeros(64, 16, num_kv_heads, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    block_tables = torch.zeros(4, 16, dtype=torch.int32)
    seq_lens = torch.full((4,), 200, dtype=torch.int32)
    cu = torch.tensor([0, 10, 20, 30, 40], dtype=torch.int32)
    q = torch.zeros(40, num_q_heads, head_dim, dtype=dtype)
    kv = torch.zeros(40, num_kv_heads, head_dim, dtype=dtype)
    with record_launches() as calls:
        write_kv_cache(kv, kv, k_cache, v_cache, torch.arange(40))
        prefill_attention(q, k_cache, v_cache, cu, seq_lens, block_tables, 0.1)
        decode_attention(q[:4], k_cache, v_cache, seq_lens, block_tables, 0.1, num_splits=1)
        decode_attention(q[:4], k_cache, v_cache, seq_lens, block_tables, 0.1, num_splits=8)
    return calls


def main() -> None:
    """Compile every launch at the InternVL3 shapes; print one JSON line per kernel."""
    import json
    import time

    shapes = [(40, 8, 128, torch.bfloat16), (14, 2, 64, torch.bfloat16), (40, 8, 128, torch.float16)]
    for num_q_heads, num_kv_heads, head_dim, dtype in shapes:
        for fn, grid, args, kwargs in _launches(num_q_heads, num_kv_heads, head_dim, dtype):
            start = time.perf_counter()
            compiled = compile_sm90(fn, args, kwargs)
            ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
            print(
                json.dumps(
                    {
                        "kernel": fn.__name__,
                        "shape": [num_q_heads, num_kv_heads, head_dim, str(dtype)],
                        "shared_bytes": compiled.metadata.shared,
                        "tensor_core_ops": ttgir.count("warp_group_dot ") + ptx.count("mma.sync"),
                        "async_copies": ttgir.count("async_copy_global_to_local"),
                        "local_stores": ptx.count("st.local"),
                        "seconds": round(time.perf_counter() - start, 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    main()
