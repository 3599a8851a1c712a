"""Load and faults together, on loopback only, bounded in time and count: N clients for T seconds against
two decoders and two encoders (real processes, one Redis), while Redis is killed and restarted, one
encoder is SIGKILLed and restarted, and one decoder is drained (SIGTERM) and restarted behind the other.

    python benchmarks/soak.py                       # tiny checkpoint, 8 clients, 90 s
    python benchmarks/soak.py --model DIR --clients 16 --duration-s 300

Reports requests sent, succeeded, failed by code (retryable or not), p50/p99 latency, the RSS growth of
the encoder and decoder that ran the whole time, and their KV blocks at the end (all free again), into
bench_out/soak.json and the "soak" section of docs/benchmarks.md. Targets: 0 non-retryable failures,
0 requests lost in the drain, RSS growth under 10%.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

from report import logged_event, rss_bytes, table, write_json, write_section
from soak_clients import KINDS, SoakClients

from internvl_serve.stack.processes import RedisProcess, ServiceProcess

# When each fault happens, as a share of the run.
SCHEDULE = [
    (0.15, "redis killed (SIGKILL)"),
    (0.30, "redis restarted"),
    (0.45, "encoder A killed (SIGKILL)"),
    (0.60, "encoder A restarted"),
    (0.70, "decoder A drained (SIGTERM) and restarted"),
]


class Stack:
    """Redis, encoders A and B, decoders A and B; B of each runs the whole time (RSS and KV measured there)."""

    def __init__(self, model: str, work: Path, threads: int):
        self.model, self.work, self.threads = model, work, threads
        self.redis = RedisProcess("--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru")
        self.encoders = {name: self._encoder(name) for name in "AB"}
        for e in self.encoders.values():
            e.wait_healthy(300)
        self.decoders = {name: self._decoder(name) for name in "AB"}
        for d in self.decoders.values():
            d.wait_healthy(300)

    def _encoder(self, name: str, port: int | None = None) -> ServiceProcess:
        args = ["--model", self.model, "--redis-url", self.redis.url, "--num-threads", str(self.threads)]
        args += ["--video-workers", "1", "--drain-notice-s", "0.5"]
        return ServiceProcess("encoder", args, port=port, log_path=self.work / f"encoder-{name}.log")

    def _decoder(self, name: str, port: int | None = None) -> ServiceProcess:
        encoders = ",".join(e.address for e in self.encoders.values())
        args = ["--model", self.model, "--encoder", encoders, "--redis-url", self.redis.url]
        args += ["--num-threads", str(self.threads), "--drain-notice-s", "0.5", "--grace-s", "30"]
        return ServiceProcess("decoder", args, port=port, log_path=self.work / f"decoder-{name}.log")

    @property
    def decoder_target(self) -> str:
        return "ipv4:" + ",".join(d.address for d in self.decoders.values())

    @property
    def encoder_target(self) -> str:
        return "ipv4:" + ",".join(e.address for e in self.encoders.values())

    def fault(self, what: str) -> dict:
        started = time.monotonic()
        extra = {}
        if what.startswith("redis killed"):
            self.redis.proc.send_signal(signal.SIGKILL)
            self.redis.proc.wait()
        elif what == "redis restarted":
            port = self.redis.port
            self.redis = RedisProcess("--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", port=port)
        elif what.startswith("encoder A killed"):
            self.encoders["A"].proc.send_signal(signal.SIGKILL)
            self.encoders["A"].proc.wait()
        elif what == "encoder A restarted":
            self.encoders["A"] = self._encoder("A2", port=self.encoders["A"].port)
            self.encoders["A"].wait_healthy(300)
        elif what.startswith("decoder A drained"):
            old = self.decoders["A"]
            old.proc.send_signal(signal.SIGTERM)
            extra["drained_exit_code"] = old.proc.wait(120)
            extra["drain_log"] = logged_event(self.work / "decoder-A.log", "decoder_draining")
            self.decoders["A"] = self._decoder("A2", port=old.port)
            self.decoders["A"].wait_healthy(300)
        return {"fault": what, "monotonic": started, "took_s": round(time.monotonic() - started, 2), **extra}

    def stop(self) -> dict:
        """SIGTERM everything; the long-lived decoder's drain report (its KV blocks)."""
        b = self.decoders["B"]
        b.proc.send_signal(signal.SIGTERM)
        b.proc.wait(120)
        report = logged_event(self.work / "decoder-B.log", "decoder_draining")
        for p in [*self.decoders.values(), *self.encoders.values()]:
            p.stop()
        self.redis.stop()
        return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint (default: a tiny random one, made here)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=90.0)
    parser.add_argument("--max-requests", type=int, default=20_000, help="bound on requests in all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per service process")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md (smoke runs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="internvl-soak-"))
    model = args.model
    if model is None:
        from internvl_serve.tiny_model.writer import make_tiny_model

        model = str(make_tiny_model(work / "model", "tiny", seed=0))
    stack = Stack(model, work, args.threads)
    events, rss = [], {}
    try:
        started = time.monotonic()
        clients = SoakClients(
            stack.decoder_target, stack.encoder_target, args.clients, started + args.duration_s, args.max_requests
        )
        clients.start()
        warm = threading.Timer(0.1 * args.duration_s, lambda: rss.update(_rss(stack, "start")))
        warm.start()
        for share, what in SCHEDULE:
            time.sleep(max(0.0, started + share * args.duration_s - time.monotonic()))
            events.append({"at_s": round(time.monotonic() - started, 1), **stack.fault(what)})
            print(f"  {events[-1]['at_s']:6.1f} s  {what}", flush=True)
        tally = clients.join()
        elapsed = time.monotonic() - started
        warm.join()
        rss.update(_rss(stack, "end"))
    finally:
        drain_b = stack.stop()
    results = _results(args, tally, elapsed, events, rss, drain_b)
    write_json(args.out, "soak", results)
    markdown = _markdown(results)
    if not args.no_docs:
        write_section("soak", markdown)
    print(markdown)
    return 0 if results["non_retryable_failures"] == 0 and results["failed_during_drain"] == 0 else 1


def _rss(stack: Stack, when: str) -> dict:
    return {
        f"{name} {when}": rss_bytes(p.proc.pid)
        for name, p in (("encoder", stack.encoders["B"]), ("decoder", stack.decoders["B"]))
    }


def _results(args, tally, elapsed: float, events: list[dict], rss: dict, drain_b: dict) -> dict:
    lat = sorted(tally.latencies_s)
    growth = {
        k: round(100 * (rss[f"{k} end"] / rss[f"{k} start"] - 1), 1)
        for k in ("encoder", "decoder")
        if rss.get(f"{k} start")
    }
    return {
        "model": args.model or "tiny (random weights, made by the script)",
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "sent": tally.sent,
        "succeeded": tally.outcomes["ok"],
        "expected": tally.outcomes["expected"],
        "failed_by_code": {c: n for c, n in tally.outcomes.items() if c not in ("ok", "expected")},
        "retryable_failures": tally.failed(retryable=True),
        "non_retryable_failures": tally.failed(retryable=False),
        "media_ids_resent": tally.resent,
        "failed_during_drain": _failed_during_drain(tally, events),
        "by_kind": {k: tally.by_kind[k] for k in KINDS},
        "p50_s": round(statistics.median(lat), 3) if lat else None,
        "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
        "rss_bytes": rss,
        "rss_growth_pct": growth,
        "kv_blocks_at_end": {k: drain_b.get(k) for k in ("kv_blocks_free", "kv_blocks_total", "finished_in_grace")},
        "events": events,
        "failures": tally.failures,
    }


def _failed_during_drain(tally, events: list[dict]) -> int:
    """Failures from the drain's start until 5 s after the drained decoder is back (target 0)."""
    drain = next((e for e in events if "drained_exit_code" in e), None)
    if drain is None:
        return 0
    start = drain["monotonic"]
    end = start + drain["took_s"] + 5.0
    return sum(1 for t in tally.failure_times if start <= t <= end)


def _markdown(r: dict) -> str:
    failed = ", ".join(f"{c} {n}" for c, n in sorted(r["failed_by_code"].items())) or "none"
    kv = r["kv_blocks_at_end"]
    rows = [
        ["requests sent", r["sent"]],
        ["succeeded", r["succeeded"]],
        ["cancelled / short deadline (asked for)", r["expected"]],
        ["failed, by code", failed],
        ["non-retryable failures (target 0)", r["non_retryable_failures"]],
        ["failures while decoder A drained and restarted (target 0)", r["failed_during_drain"]],
        ["media_ids resent after the cache loss", r["media_ids_resent"]],
        ["latency p50 / p99 (s)", f"{r['p50_s']} / {r['p99_s']}"],
        ["RSS growth, encoder B / decoder B (target < 10%)", " / ".join(f"{v}%" for v in r["rss_growth_pct"].values())],
        ["decoder B KV blocks free at the end", f"{kv['kv_blocks_free']} of {kv['kv_blocks_total']}"],
    ]
    drain = next((e for e in r["events"] if "drained_exit_code" in e), {})
    timeline = "; ".join(f"{e['at_s']} s {e['fault']}" for e in r["events"])
    return "\n".join(
        [
            f"## Soak (`benchmarks/soak.py`, {r['clients']} clients for {r['duration_s']} s, "
            "two decoders, two encoders)",
            "",
            f"Faults: {timeline}. The drained decoder exited {drain.get('drained_exit_code')} with every call "
            f"finished in its grace period: {drain.get('drain_log', {}).get('finished_in_grace')}.",
            "",
            table(["", "value"], rows),
            "",
            "Mix: " + ", ".join(f"{k} {n}" for k, n in r["by_kind"].items()) + ".",
            "",
            f"Checkpoint: {r['model']}. On the tiny random checkpoint these figures measure the serving machinery "
            "(failover, retries, caches, drains, cancellation) under faults, not model speed; latency is from the "
            "request's start to its answer, over the calls that succeeded. A request counts as failed only when "
            "the client library (with its own retries) gave up; cancelled streams and 50 ms deadlines are what "
            "the client asked for.",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
