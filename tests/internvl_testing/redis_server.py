"""The tests' redis-server: the package's RedisProcess (a real server on a free loopback port)."""

from internvl_serve.stack.processes import RedisProcess as RedisServer
from internvl_serve.stack.processes import free_port

__all__ = ["RedisServer", "free_port"]
