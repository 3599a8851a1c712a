"""`internvl-serve encoder` + `internvl-serve decoder` as processes: health, reflection, a real request,
and SIGTERM that lets an in-flight stream finish before the decoder exits."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from internvl_serve.stack.processes import ServiceProcess
from internvl_testing.generate_requests import generate_request, stream_request


def test_decoder_process_serves_and_drains_on_sigterm(tiny_model_dir, media_dir, tmp_path):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from internvl_serve.pb.internvl.v1 import generation_service_pb2_grpc as pb_grpc

    encoder = ServiceProcess("encoder", ["--model", str(tiny_model_dir)], log_path=tmp_path / "encoder.log")
    decoder = ServiceProcess(
        "decoder",
        ["--model", str(tiny_model_dir), "--encoder", encoder.address, "--grace-s", "20"],
        log_path=tmp_path / "decoder.log",
    )
    try:
        encoder.wait_healthy()
        decoder.wait_healthy()
        with grpc.insecure_channel(decoder.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service="internvl.v1.GenerationService")).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert "internvl.v1.GenerationService" in ProtoReflectionDescriptorDatabase(channel).get_services()
            stub = pb_grpc.GenerationServiceStub(channel)
            chat = [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "url": str(media_dir / "view.jpg")},
                        {"type": "text", "text": "Describe this image."},
                    ],
                }
            ]
            assert stub.Generate(generate_request(chat, max_new_tokens=4)).usage.output_tokens >= 1

            # An in-flight stream started before SIGTERM runs to its end.
            text_chat = [{"role": "user", "content": [{"type": "text", "text": "a long story"}]}]
            call = stub.GenerateStream(stream_request(text_chat, max_new_tokens=60, ignore_eos=True))
            first = next(call)
            stopper = threading.Thread(target=decoder.stop)
            stopper.start()
            rest = list(call)
            stopper.join()
            assert rest[-1].finish_reason != 0 and len(first.token_ids) + sum(len(d.token_ids) for d in rest) == 60
        assert decoder.proc.returncode == 0
        assert b"decoder_stopped" in (tmp_path / "decoder.log").read_bytes()
    finally:
        decoder.stop()
        encoder.stop()
