"""The tests' redis-server: the package's RedisProcess (a real server on a free loopback port), and built from
such servers a Redis Cluster (`RedisClusterServers`) and a Sentinel-managed master (`RedisSentinelServers`)."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from internvl_serve.stack.ports import is_free
from internvl_serve.stack.processes import RedisProcess as RedisServer
from internvl_serve.stack.processes import free_port

HOST = "127.0.0.1"

__all__ = ["RedisClusterServers", "RedisSentinelServers", "RedisServer", "free_port", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll until `predicate()` is truthy (an exception counts as not yet) and return its value."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f}s" + (f" (last error: {last!r})" if last else ""))


def free_cluster_port(taken: set[int]) -> int:
    """A port P below 55535 where P and its cluster bus port P+10000 are both free (and not in `taken`)."""
    for _ in range(500):
        port = random.randrange(20_000, 45_000)
        if not {port, port + 10_000} & taken and is_free(HOST, port) and is_free(HOST, port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def kill(server: RedisServer) -> None:
    """SIGKILL: the server dies without closing its connections politely."""
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)


def _text(reply) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class RedisClusterServers:
    """A Redis Cluster of `masters` masters (no replicas) on 127.0.0.1, slots spread by `redis-cli --cluster
    create`. A node keeps serving its slots while another is down (cluster-require-full-coverage no), and the
    others mark a dead node failed after about `node_timeout_ms`. `ports`: the nodes' ports (each with its
    bus port, +10000, free), chosen here when not given."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000, ports: list[int] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.nodes: list[RedisServer] = []
        try:
            taken = {p + d for p in ports or () for d in (0, 10_000)}
            for i in range(masters):
                port = ports[i] if ports and i < len(ports) else free_cluster_port(taken)
                taken |= {port, port + 10_000}
                self.nodes.append(
                    RedisServer(
                        *("--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / f"nodes-{port}.conf")),
                        *("--cluster-node-timeout", str(node_timeout_ms), "--cluster-require-full-coverage", "no"),
                        *("--dir", str(self.dir)),
                        port=port,
                    )
                )
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            wait_until(lambda: all(self._ok(node) for node in self.nodes), 30, "the cluster to form")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """One node's url: all a client is given."""
        return self.nodes[0].url

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc.poll() is None]

    def _ok(self, node: RedisServer) -> bool:
        info = node.client().execute_command("CLUSTER INFO")  # redis-py parses it into a dict
        return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(self.nodes)

    def keys_by_node(self, pattern: str = "*") -> dict[int, set[str]]:
        """Each live node's own keys (KEYS on a cluster node lists only its slots' keys), by port."""
        return {node.port: {_text(k) for k in node.client().keys(pattern)} for node in self.live()}

    def dbsize_by_node(self) -> dict[int, int]:
        return {node.port: node.client().dbsize() for node in self.live()}

    def kill(self, node: RedisServer) -> None:
        kill(node)

    def marked_failed(self, node: RedisServer) -> bool:
        """Whether every live node's view of the cluster flags `node` as failed."""
        for other in self.live():
            nodes = other.client().execute_command("CLUSTER NODES")  # parsed: {"host:port": {"flags": ...}}
            flags = [view["flags"].split(",") for name, view in nodes.items() if name.endswith(f":{node.port}")]
            if not flags or "fail" not in flags[0]:
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisSentinelServers:
    """A master, one replica of it, and one sentinel watching them as `service` (quorum 1), tuned to fail over
    a few seconds after the master dies."""

    def __init__(self, service: str = "mymaster", down_after_ms: int = 500, failover_timeout_ms: int = 2000):
        self.service = service
        self.dir = Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
        self.sentinel_proc: subprocess.Popen | None = None
        # --dir: a replica writes the master's snapshot (dump.rdb) to disk when it syncs
        self.master = RedisServer("--dir", str(self.dir))
        self.replica: RedisServer | None = None
        try:
            self.replica = RedisServer("--dir", str(self.dir), "--replicaof", "127.0.0.1", str(self.master.port))
            wait_until(self._replica_in_sync, 20, "the replica to sync")
            # the sentinel starts once the replica is attached: its first INFO of the master lists the replica
            self.sentinel_port = free_port()
            conf = self.dir / "sentinel.conf"
            conf.write_text(
                f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {service} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            )
            self.sentinel_proc = subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_until(self._replica_known, 30, "the sentinel to see the replica")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def sentinel(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=2.0)

    def master_port(self) -> int:
        """The port of the master the sentinel names now."""
        _, port = self.sentinel().sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def _replica_in_sync(self) -> bool:
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def _replica_known(self) -> bool:
        replicas = self.sentinel().sentinel_slaves(self.service)
        return any(int(r["port"]) == self.replica.port and r["flags"] == "slave" for r in replicas)

    def kill_master(self) -> None:
        kill(self.master)

    def stop(self) -> None:
        if self.sentinel_proc is not None and self.sentinel_proc.poll() is None:
            self.sentinel_proc.terminate()
            try:
                self.sentinel_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.sentinel_proc.kill()
                self.sentinel_proc.wait()
        for server in (self.replica, self.master):
            if server is not None:
                server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
