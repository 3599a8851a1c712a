"""ServiceServer's start and stop: whatever step fails, what the server owns is released, its telemetry is
flushed, and `*_stopped` is logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from internvl_serve.common import service_lifecycle
from internvl_serve.common.service_lifecycle import ServiceServer
from internvl_serve.common.telemetry import Telemetry
from internvl_testing.servers import fake_service_config

CONFIG = fake_service_config()


class RecordingTelemetry(Telemetry):
    def __init__(self):
        base = Telemetry.disabled()
        super().__init__(base.tracer_provider, base.meter_provider)
        self.shutdowns = 0

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.shutdowns += 1


class FakeServer(ServiceServer):
    kind = "fake"

    def __init__(self, fail: str = ""):
        super().__init__(CONFIG, ["fake.v1.FakeService"])
        self.fail = fail
        self.closed = 0

    async def load(self) -> None:
        if self.fail == "load":
            raise RuntimeError("bad checkpoint")

    async def drain(self, grace_s: float) -> None:
        if self.fail == "drain":
            raise RuntimeError("drain failed")
        await super().drain(grace_s)

    async def close(self) -> None:
        self.closed += 1
        if self.fail == "close":
            raise RuntimeError("close failed")


@pytest.fixture
def telemetry(monkeypatch):
    recording = RecordingTelemetry()
    monkeypatch.setattr(service_lifecycle, "setup_telemetry", lambda settings, prometheus: recording)
    return recording


def test_a_failed_load_releases_everything_and_flushes_telemetry(telemetry):
    async def main():
        server = FakeServer("load")
        with pytest.raises(RuntimeError, match="bad checkpoint"):
            await server.start()
        return server

    server = asyncio.run(main())
    assert server.closed == 1 and telemetry.shutdowns == 1


@pytest.mark.parametrize("fail", ["", "drain", "close"])
def test_stop_flushes_telemetry_and_logs_stopped_whatever_fails(telemetry, caplog, fail):
    async def main():
        server = FakeServer(fail)
        await server.start()
        if fail:
            with pytest.raises(RuntimeError, match=f"{fail} failed"):
                await server.stop()
        else:
            await server.stop()
        return server

    with caplog.at_level(logging.INFO, logger="internvl_serve.fake"):
        server = asyncio.run(main())
    assert server.closed == 1 and telemetry.shutdowns == 1
    assert [r.getMessage() for r in caplog.records if r.name == "internvl_serve.fake"][-1] == "fake_stopped"


def test_a_server_given_its_telemetry_leaves_it_to_the_caller(telemetry):
    given = RecordingTelemetry()

    class Given(FakeServer):
        def __init__(self):
            ServiceServer.__init__(self, CONFIG, ["fake.v1.FakeService"], given)
            self.fail, self.closed = "", 0

    async def main():
        server = Given()
        await server.start()
        await server.stop()

    asyncio.run(main())
    assert given.shutdowns == 0 and telemetry.shutdowns == 0
