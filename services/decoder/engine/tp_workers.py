"""Tensor-parallel worker processes: the decoder is rank 0 (it schedules and samples); it starts ranks
1..N-1 itself, one process each (spawned, so each has its own CUDA context).

Control plane: a pipe per worker. Rank 0 sends each step's StepInputs down every pipe before running the
step itself; every rank then runs the same forward on its shard, meeting in the all-reduces (gloo on CPU,
NCCL on CUDA). A worker blocks on its pipe between steps, so an idle decoder needs no collective timeout;
a parent that dies closes the pipe (and PR_SET_PDEATHSIG kills the worker too).

A worker that dies is fatal: the watcher thread reports it and the decoder goes NOT_SERVING and exits
non-zero (service/server.py), never hangs.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
from collections.abc import Callable
from datetime import timedelta

import torch

from internvl_serve.common.logs import log_event
from internvl_serve.decoder.config import DecoderConfig
from internvl_serve.decoder.engine.tensor_parallel import TPShard

logger = logging.getLogger(__name__)


def rank_device(config: DecoderConfig, rank: int) -> torch.device:
    """Rank r runs on the configured device's index + r (CUDA), or the CPU."""
    base = config.torch_device()
    if base.type != "cuda":
        return base
    return torch.device("cuda", (base.index or 0) + rank)


def rank_threads(config: DecoderConfig) -> int:
    """torch threads per rank on the CPU: --num-threads, else the cores shared out."""
    return config.num_threads or max(1, (os.cpu_count() or 1) // config.tensor_parallel_size)


def init_group(config: DecoderConfig, rank: int, init_method: str) -> TPShard:
    import torch.distributed as dist

    device = rank_device(config, rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=config.tensor_parallel_size,
        timeout=timedelta(seconds=config.tp_timeout_s),
    )
    return TPShard(rank, config.tensor_parallel_size)


_NO_LOGITS = torch.empty(0, dtype=torch.int64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _packed(value):
    """Tensors as (dtype, numpy array): plain pickling of numpy is ~30x faster than torch's tensor reduction
    over a pipe (fd passing), and a CUDA tensor would unpickle onto rank 0's device."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        return (
            "tensor",
            str(t.dtype).removeprefix("torch."),
            t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy(),
        )
    return value


def _unpacked(value):
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "tensor":
        _, dtype, array = value
        t = torch.from_numpy(array)
        return t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return value


def pack_step(inputs) -> dict:
    """StepInputs -> picklable plain values (the worker's unpack_step rebuilds it)."""
    meta = {
        f.name: _packed(getattr(inputs.meta, f.name)) for f in dataclasses.fields(inputs.meta) if f.name != "cpu_blocks"
    }
    fields = {f.name: _packed(getattr(inputs, f.name)) for f in dataclasses.fields(inputs) if f.name != "meta"}
    return {"fields": fields, "meta": meta}


def unpack_step(message: dict):
    from internvl_serve.decoder.engine.attention import AttentionMetadata
    from internvl_serve.decoder.engine.model_runner import StepInputs

    meta = AttentionMetadata(**{k: _unpacked(v) for k, v in message["meta"].items()})
    return StepInputs(**{k: _unpacked(v) for k, v in message["fields"].items()}, meta=meta)


class TPWorkers:
    """Ranks 1..N-1, started by rank 0 before it joins the group itself."""

    def __init__(self, config: DecoderConfig):
        self.init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.Process] = []
        for rank in range(1, config.tensor_parallel_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(config, rank, self.init_method, child), name=f"internvl-tp-rank{rank}"
            )
            proc.daemon = True
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
            log_event(logger, "decoder.tp_worker_started", rank=rank, pid=proc.pid)
        self._closing = False
        self._on_failure: Callable[[str], None] | None = None

    def wait_loaded(self) -> int:
        """Until every worker has its shard; the fewest KV blocks any of them could hold."""
        blocks = []
        for rank, (conn, proc) in enumerate(zip(self.conns, self.procs), 1):
            while not conn.poll(1.0):
                if not proc.is_alive():
                    raise RuntimeError(f"tensor-parallel rank {rank} exited with {proc.exitcode} while loading")
            kind, value = conn.recv()
            if kind != "loaded":
                raise RuntimeError(f"tensor-parallel rank {rank} failed to load: {value}")
            blocks.append(value)
        return min(blocks)

    def start_caches(self, num_blocks: int) -> None:
        for conn in self.conns:
            conn.send(num_blocks)

    def send_step(self, inputs) -> None:
        """Hand a step to every worker (rank 0 then runs it too); a dead worker is an error here."""
        message = pack_step(dataclasses.replace(inputs, logits_indices=_NO_LOGITS))  # rank 0 alone samples
        for rank, conn in enumerate(self.conns, 1):
            try:
                conn.send(message)
            except (BrokenPipeError, ConnectionError, EOFError) as exc:
                raise RuntimeError(f"tensor-parallel rank {rank} is gone ({exc})") from None

    def watch(self, on_failure: Callable[[str], None]) -> None:
        """Call on_failure(reason) (from any thread) when a worker exits while the decoder runs, or when
        report_failure() is called: the group is out of step and cannot recover."""
        self._on_failure = on_failure

        def run() -> None:
            sentinels = {p.sentinel: rank for rank, p in enumerate(self.procs, 1)}
            ready = multiprocessing.connection.wait(list(sentinels))
            if self._closing:
                return
            rank = sentinels[ready[0]]
            on_failure(f"tensor-parallel rank {rank} exited (code {self.procs[rank - 1].exitcode})")

        threading.Thread(target=run, name="tp-watch", daemon=True).start()

    def report_failure(self, reason: str) -> None:
        """Rank 0's own step failed after the workers got it: they wait in collectives it will not join."""
        if self._on_failure is not None and not self._closing:
            self._on_failure(reason)

    def close(self, timeout_s: float = 10.0) -> None:
        self._closing = True
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, ConnectionError, EOFError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends the worker
        pass


def worker_main(config: DecoderConfig, rank: int, init_method: str, conn) -> None:
    """Rank `rank`: join the group, load this rank's shard, then run every step rank 0 sends."""
    from internvl_serve.common.logs import setup_logging
    from internvl_serve.decoder.engine.loaded_model import load_shard
    from internvl_serve.decoder.engine.model_runner import ModelRunner

    _die_with_parent()
    # Ctrl-C or a group SIGTERM reach every process: rank 0 drains and then ends the workers (pipe, PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(config.log_level)
    torch.set_num_threads(rank_threads(config))
    try:
        shard = init_group(config, rank, init_method)
        model, kv_spec, max_blocks = load_shard(config, shard)
        conn.send(("loaded", max_blocks))
    except Exception as exc:  # reported to rank 0, which refuses to start
        logger.exception("tensor-parallel rank %d failed to load", rank)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    from internvl_serve.decoder.engine.kv_cache import KVCache

    try:
        num_blocks = conn.recv()
    except EOFError:  # rank 0 gave up before its engine started
        return
    if not isinstance(num_blocks, int):
        return
    device = rank_device(config, rank)
    runner = ModelRunner(model, KVCache(kv_spec, num_blocks, device), device)
    while True:
        try:
            inputs = conn.recv()
        except EOFError:  # rank 0 is gone
            break
        if inputs is None:
            break
        runner.execute(unpack_step(inputs))
    import torch.distributed as dist

    dist.destroy_process_group()
