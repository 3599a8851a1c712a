"""The `internvl-serve encoder` process: health, reflection, a real request, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internvl_testing.encode_requests import image, request
from internvl_testing.media import image_bytes, noise_image
from internvl_testing.redis_server import free_port

SERVICE = "internvl.v1.VisionEncoderService"


def _serve(tiny_model_dir, redis_url, port):
    exe = Path(sys.executable).with_name("internvl-serve")
    return subprocess.Popen(
        [str(exe), "encoder", "--model", str(tiny_model_dir), "--port", str(port), "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "INTERNVL_LOG_LEVEL": "INFO"},
    )


def _wait_serving(channel, timeout=90.0):
    stub = health_pb2_grpc.HealthStub(channel)
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            seen.append(status)
            if status == health_pb2.HealthCheckResponse.SERVING:
                return seen
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"encoder not SERVING after {timeout}s (saw {seen})")


def test_encoder_process_serves_and_stops_on_sigterm(tiny_model_dir, redis_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from internvl_serve.pb.internvl.v1 import vision_encoder_service_pb2_grpc as pb_grpc

    port = free_port()
    proc = _serve(tiny_model_dir, redis_server.url, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_serving(channel)
            health = health_pb2_grpc.HealthStub(channel)
            named = health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status
            assert named == health_pb2.HealthCheckResponse.SERVING
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert SERVICE in services and "grpc.health.v1.Health" in services
            item = (
                pb_grpc.VisionEncoderServiceStub(channel)
                .Encode(request(image(image_bytes(noise_image(50, 50, 1), "PNG"))))
                .media[0]
            )
            assert item.num_tokens == 16
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
        assert b"encoder_stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
