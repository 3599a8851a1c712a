"""The public gRPC contract (proto/internvl/v1) and its generated Python stubs (clients/pb).

Invariants: the checked-in stubs are exactly what `python scripts/gen_proto.py` makes; the protos pass
buf-STANDARD-style lint rules plus "everything has a comment"; the names and field numbers fixed in
DESIGN.md section 3 exist unchanged; messages survive a serialize/parse round trip and the service
stubs work over a real channel.
"""

from __future__ import annotations

import importlib.util
import re
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import descriptor_pb2

from internvl_serve.clients.pb.internvl.v1 import (
    generation_service_pb2,
    generation_service_pb2_grpc,
    media_pb2,
    vision_encoder_service_pb2,
    vision_encoder_service_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STUBS_DIR = REPO_ROOT / "clients" / "pb"
REGENERATE = "python scripts/gen_proto.py"

FDP = descriptor_pb2.FieldDescriptorProto
PASCAL_CASE = re.compile(r"^[A-Z][a-zA-Z0-9]*$")
LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def _gen_proto() -> ModuleType:
    """scripts/gen_proto.py as a module; fails (never skips) without the grpcio-tools dev dependency."""
    try:
        import grpc_tools.protoc  # noqa: F401
    except ImportError as exc:  # pragma: no cover - only on a broken dev install
        pytest.fail(f"grpcio-tools is a dev dependency and must be installed (pip install -e '.[dev]'): {exc}")
    spec = importlib.util.spec_from_file_location("gen_proto", REPO_ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


# --- 1. stubs are current ---------------------------------------------------------------------


def test_checked_in_stubs_are_exactly_what_the_generator_makes(tmp_path: Path) -> None:
    gen_proto = _gen_proto()
    gen_proto.generate(tmp_path / "pb")
    fresh, checked_in = _tree(tmp_path / "pb"), _tree(STUBS_DIR)
    stale = sorted(name for name in fresh.keys() | checked_in.keys() if fresh.get(name) != checked_in.get(name))
    assert not stale, (
        f"clients/pb/ is out of date with proto/ (differs: {', '.join(stale)}). "
        f"Run `{REGENERATE}` from the repository root and commit the result."
    )


# --- 2. lint (buf STANDARD + COMMENTS, over descriptors with source info) ----------------------


def _leading_comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}


def _lint_message(msg, path, scope, comments, problems) -> None:
    name = f"{scope}.{msg.name}"
    if not PASCAL_CASE.match(msg.name):
        problems.append(f"message {name}: name is not PascalCase")
    if not comments.get(path):
        problems.append(f"message {name}: no leading comment")
    for i, field in enumerate(msg.field):
        if not LOWER_SNAKE.match(field.name):
            problems.append(f"field {name}.{field.name}: name is not lower_snake_case")
        if field.label == FDP.LABEL_REQUIRED:
            problems.append(f"field {name}.{field.name}: `required` is not allowed")
        if not comments.get(path + (2, i)):
            problems.append(f"field {name}.{field.name}: no leading comment")
    for i, oneof in enumerate(msg.oneof_decl):
        synthetic = any(f.proto3_optional and f.oneof_index == i for f in msg.field)
        if synthetic:
            continue
        if not LOWER_SNAKE.match(oneof.name):
            problems.append(f"oneof {name}.{oneof.name}: name is not lower_snake_case")
        if not comments.get(path + (8, i)):
            problems.append(f"oneof {name}.{oneof.name}: no leading comment")
    for i, nested in enumerate(msg.nested_type):
        if not nested.options.map_entry:
            _lint_message(nested, path + (3, i), name, comments, problems)
    for i, enum in enumerate(msg.enum_type):
        _lint_enum(enum, path + (4, i), name, comments, problems)


def _lint_enum(enum, path, scope, comments, problems) -> None:
    name = f"{scope}.{enum.name}"
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    if not PASCAL_CASE.match(enum.name):
        problems.append(f"enum {name}: name is not PascalCase")
    if not comments.get(path):
        problems.append(f"enum {name}: no leading comment")
    if not enum.value or enum.value[0].number != 0 or enum.value[0].name != prefix + "UNSPECIFIED":
        problems.append(f"enum {name}: first value must be {prefix}UNSPECIFIED = 0")
    if enum.options.allow_alias:
        problems.append(f"enum {name}: allow_alias is not allowed")
    for i, value in enumerate(enum.value):
        if not UPPER_SNAKE.match(value.name) or not value.name.startswith(prefix):
            problems.append(f"enum value {value.name}: must be UPPER_SNAKE_CASE prefixed with {prefix}")
        if not comments.get(path + (2, i)):
            problems.append(f"enum value {value.name}: no leading comment")


def lint(files: list[descriptor_pb2.FileDescriptorProto], package: str = "internvl.v1") -> list[str]:
    """Every violation found in the given files, as readable strings (empty when clean)."""
    problems: list[str] = []
    rpc_types: dict[str, list[str]] = {}
    for file in files:
        comments = _leading_comments(file)
        directory, _, base = file.name.rpartition("/")
        if file.package != package:
            problems.append(f"{file.name}: package is {file.package!r}, expected {package!r}")
        if directory != package.replace(".", "/"):
            problems.append(f"{file.name}: must live in {package.replace('.', '/')}/ for package {package}")
        if not re.match(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*\.proto$", base):
            problems.append(f"{file.name}: file name is not lower_snake_case")
        if file.syntax != "proto3":
            problems.append(f"{file.name}: syntax is {file.syntax!r}, expected proto3")
        if not re.search(r"\.v\d+((alpha|beta)\d*)?$", file.package):
            problems.append(f"{file.name}: package {file.package} has no version suffix")
        for i, msg in enumerate(file.message_type):
            _lint_message(msg, (4, i), file.package, comments, problems)
        for i, enum in enumerate(file.enum_type):
            _lint_enum(enum, (5, i), file.package, comments, problems)
        for i, service in enumerate(file.service):
            if not PASCAL_CASE.match(service.name) or not service.name.endswith("Service"):
                problems.append(f"service {service.name}: must be PascalCase and end with Service")
            if not comments.get((6, i)):
                problems.append(f"service {service.name}: no leading comment")
            for j, rpc in enumerate(service.method):
                where = f"rpc {service.name}.{rpc.name}"
                if not PASCAL_CASE.match(rpc.name):
                    problems.append(f"{where}: name is not PascalCase")
                if not comments.get((6, i, 2, j)):
                    problems.append(f"{where}: no leading comment")
                request, response = rpc.input_type.rsplit(".", 1)[-1], rpc.output_type.rsplit(".", 1)[-1]
                if request != f"{rpc.name}Request":
                    problems.append(f"{where}: request type {request} must be named {rpc.name}Request")
                if response != f"{rpc.name}Response":
                    problems.append(f"{where}: response type {response} must be named {rpc.name}Response")
                if rpc.input_type == rpc.output_type:
                    problems.append(f"{where}: request and response are the same type")
                for type_name in (rpc.input_type, rpc.output_type):
                    rpc_types.setdefault(type_name, []).append(where)
    for type_name, users in sorted(rpc_types.items()):
        if len(users) > 1:
            problems.append(f"{type_name} is used by more than one RPC: {', '.join(users)}")
    return problems


def _compile(proto_root: Path, tmp_path: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    out = tmp_path / "descriptors.binpb"
    _gen_proto().build_descriptor_set(out, proto_root=proto_root)
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return [f for f in fds.file if not f.name.startswith("google/")]


def test_protos_pass_lint(tmp_path: Path) -> None:
    files = _compile(REPO_ROOT / "proto", tmp_path)
    assert sorted(f.name for f in files) == [
        "internvl/v1/generation_service.proto",
        "internvl/v1/media.proto",
        "internvl/v1/vision_encoder_service.proto",
    ]
    assert lint(files) == []


def test_lint_reports_each_kind_of_violation(tmp_path: Path) -> None:
    # The lint above must be able to fail: a small proto that breaks each rule once.
    bad = tmp_path / "proto" / "internvl" / "v1" / "Bad_File.proto"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        'syntax = "proto3";\npackage internvl.v1;\n'
        "// ok\nenum Color { COLOR_NONE = 0; RED = 1; }\n"
        "message lower_msg { string BadField = 1; }\n"
        "// ok\nmessage Shared { oneof Choice { string a = 1; } }\n"
        "// ok\nservice Things {\n  rpc Get(Shared) returns (Shared);\n}\n"
    )
    problems = "\n".join(lint(_compile(tmp_path / "proto", tmp_path)))
    for expected in (
        "file name is not lower_snake_case",
        "first value must be COLOR_UNSPECIFIED = 0",
        "enum value RED: must be UPPER_SNAKE_CASE prefixed with COLOR_",
        "enum value COLOR_NONE: no leading comment",
        "message internvl.v1.lower_msg: name is not PascalCase",
        "message internvl.v1.lower_msg: no leading comment",
        "field internvl.v1.lower_msg.BadField: name is not lower_snake_case",
        "oneof internvl.v1.Shared.Choice: name is not lower_snake_case",
        "service Things: must be PascalCase and end with Service",
        "rpc Things.Get: no leading comment",
        "request type Shared must be named GetRequest",
        "request and response are the same type",
        "internvl.v1.Shared is used by more than one RPC",
    ):
        assert expected in problems


# --- 3. the names and numbers DESIGN.md fixes -------------------------------------------------

# message -> field -> (number, type, repeated, oneof). Types: scalar names or full message/enum names.
DESIGN_FIELDS: dict[str, dict[str, tuple[int, str, bool, str | None]]] = {
    "Image": {"data": (1, "bytes", False, None)},
    "Video": {"data": (1, "bytes", False, None), "num_frames": (2, "uint32", False, None)},
    "Media": {
        "image": (1, ".internvl.v1.Image", False, "source"),
        "video": (2, ".internvl.v1.Video", False, "source"),
        "media_id": (3, "string", False, "source"),
    },
    "Tensor": {"dtype": (1, "string", False, None), "shape": (2, "int64", True, None), "data": (3, "bytes", False, None)},
    "EncodeRequest": {"media": (1, ".internvl.v1.Media", True, None), "return_embeddings": (2, "bool", False, None)},
    "EncodedMedia": {
        "media_id": (1, "string", False, None),
        "num_tiles": (2, "uint32", False, None),
        "num_tokens": (3, "uint32", False, None),
        "cache_hit": (4, "bool", False, None),
        "embeddings": (5, ".internvl.v1.Tensor", False, None),
    },
    "EncodeResponse": {"media": (1, ".internvl.v1.EncodedMedia", True, None), "model": (2, "string", False, None)},
    "Part": {"text": (1, "string", False, "content"), "media": (2, ".internvl.v1.Media", False, "content")},
    "Message": {"role": (1, "string", False, None), "content": (2, ".internvl.v1.Part", True, None)},
    "SamplingParams": {
        "max_new_tokens": (1, "uint32", False, None),
        "temperature": (2, "float", False, None),
        "top_p": (3, "float", False, None),
        "top_k": (4, "uint32", False, None),
        "seed": (5, "uint64", False, None),
        "stop": (6, "string", True, None),
        "ignore_eos": (7, "bool", False, None),
        "repetition_penalty": (8, "float", False, None),
    },
    "GenerateRequest": {
        "messages": (1, ".internvl.v1.Message", True, None),
        "sampling": (2, ".internvl.v1.SamplingParams", False, None),
    },
    "GenerateStreamRequest": {
        "messages": (1, ".internvl.v1.Message", True, None),
        "sampling": (2, ".internvl.v1.SamplingParams", False, None),
    },
    "Usage": {
        "input_tokens": (1, "uint32", False, None),
        "output_tokens": (2, "uint32", False, None),
        "image_tokens": (3, "uint32", False, None),
        "media_cache_hits": (4, "uint32", False, None),
    },
    **{
        name: {
            "text": (1, "string", False, None),
            "token_ids": (2, "uint32", True, None),
            "finish_reason": (3, ".internvl.v1.FinishReason", False, None),
            "usage": (4, ".internvl.v1.Usage", False, None),
        }
        for name in ("GenerateResponse", "GenerateStreamResponse")
    },
}

# Where each contract type lives, i.e. the Python module clients import it from.
MODULE_OF = {
    **dict.fromkeys(["Image", "Video", "Media", "Tensor"], media_pb2),
    **dict.fromkeys(["EncodeRequest", "EncodedMedia", "EncodeResponse"], vision_encoder_service_pb2),
    **dict.fromkeys(
        ["Part", "Message", "SamplingParams", "GenerateRequest", "GenerateStreamRequest", "Usage"]
        + ["GenerateResponse", "GenerateStreamResponse"],
        generation_service_pb2,
    ),
}


def _message_proto(name: str) -> descriptor_pb2.DescriptorProto:
    descriptor = MODULE_OF[name].DESCRIPTOR.message_types_by_name[name]
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _signature(msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto):
    scalar = FDP.Type.Name(field.type).removeprefix("TYPE_").lower()
    type_name = field.type_name if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM) else scalar
    in_real_oneof = field.HasField("oneof_index") and not field.proto3_optional
    oneof = msg.oneof_decl[field.oneof_index].name if in_real_oneof else None
    return (field.number, type_name, field.label == FDP.LABEL_REPEATED, oneof)


@pytest.mark.parametrize("message", sorted(DESIGN_FIELDS))
def test_design_fields_keep_their_names_numbers_and_types(message: str) -> None:
    msg = _message_proto(message)
    actual = {f.name: _signature(msg, f) for f in msg.field}
    for field, expected in DESIGN_FIELDS[message].items():
        assert actual.get(field) == expected, f"{message}.{field}: DESIGN.md fixes {expected}, found {actual.get(field)}"


def test_seed_is_optional_so_unset_differs_from_zero() -> None:
    seed = next(f for f in _message_proto("SamplingParams").field if f.name == "seed")
    assert seed.proto3_optional


def test_finish_reason_values() -> None:
    values = {v.name: v.number for v in generation_service_pb2.FinishReason.DESCRIPTOR.values}
    assert values == {"FINISH_REASON_UNSPECIFIED": 0, "FINISH_REASON_STOP": 1, "FINISH_REASON_LENGTH": 2}


@pytest.mark.parametrize(
    ("module", "service", "rpc", "request_type", "response_type", "server_streaming"),
    [
        (vision_encoder_service_pb2, "VisionEncoderService", "Encode", "EncodeRequest", "EncodeResponse", False),
        (generation_service_pb2, "GenerationService", "Generate", "GenerateRequest", "GenerateResponse", False),
        (
            generation_service_pb2,
            "GenerationService",
            "GenerateStream",
            "GenerateStreamRequest",
            "GenerateStreamResponse",
            True,
        ),
    ],
)
def test_design_rpcs(module, service, rpc, request_type, response_type, server_streaming) -> None:
    method = module.DESCRIPTOR.services_by_name[service].methods_by_name[rpc]
    assert method.full_name == f"internvl.v1.{service}.{rpc}"
    assert (method.input_type.full_name, method.output_type.full_name) == (
        f"internvl.v1.{request_type}",
        f"internvl.v1.{response_type}",
    )
    assert (method.client_streaming, method.server_streaming) == (False, server_streaming)


# --- 4. round trip and a live channel ---------------------------------------------------------


def _request() -> generation_service_pb2.GenerateRequest:
    gen = generation_service_pb2
    return gen.GenerateRequest(
        messages=[
            gen.Message(role="system", content=[gen.Part(text="Answer briefly.")]),
            gen.Message(
                role="user",
                content=[
                    gen.Part(media=media_pb2.Media(image=media_pb2.Image(data=b"\x89PNG\r\n\x1a\n..."))),
                    gen.Part(media=media_pb2.Media(video=media_pb2.Video(data=b"\x00\x00\x00\x18ftyp", num_frames=8))),
                    gen.Part(media=media_pb2.Media(media_id="sha256:abc")),
                    gen.Part(text="What is in these?"),
                ],
            ),
        ],
        sampling=gen.SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, top_k=40, seed=0, stop=["\n\n"]),
        request_id="req-1",
    )


def test_generate_request_round_trip() -> None:
    request = _request()
    parsed = generation_service_pb2.GenerateRequest.FromString(request.SerializeToString())
    assert parsed == request
    sources = [p.media.WhichOneof("source") for p in parsed.messages[1].content if p.WhichOneof("content") == "media"]
    assert sources == ["image", "video", "media_id"]
    assert parsed.sampling.HasField("seed") and parsed.sampling.seed == 0
    assert not generation_service_pb2.SamplingParams().HasField("seed")


class _FakeGeneration(generation_service_pb2_grpc.GenerationServiceServicer):
    def Generate(self, request, context):
        return generation_service_pb2.GenerateResponse(
            text=request.messages[-1].content[-1].text[::-1],
            finish_reason=generation_service_pb2.FINISH_REASON_STOP,
            request_id=request.request_id,
        )

    def GenerateStream(self, request, context):
        for word in ("a", "b"):
            yield generation_service_pb2.GenerateStreamResponse(text=word, request_id=request.request_id)
        yield generation_service_pb2.GenerateStreamResponse(
            finish_reason=generation_service_pb2.FINISH_REASON_LENGTH,
            usage=generation_service_pb2.Usage(output_tokens=2),
        )


class _FakeEncoder(vision_encoder_service_pb2_grpc.VisionEncoderServiceServicer):
    def Encode(self, request, context):
        return vision_encoder_service_pb2.EncodeResponse(
            media=[vision_encoder_service_pb2.EncodedMedia(media_id=f"id{i}") for i, _ in enumerate(request.media)]
        )


def test_generated_stubs_serve_and_call_over_a_channel() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    generation_service_pb2_grpc.add_GenerationServiceServicer_to_server(_FakeGeneration(), server)
    vision_encoder_service_pb2_grpc.add_VisionEncoderServiceServicer_to_server(_FakeEncoder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            generation = generation_service_pb2_grpc.GenerationServiceStub(channel)
            reply = generation.Generate(_request(), timeout=10)
            assert (reply.text, reply.request_id) == ("?eseht ni si tahW", "req-1")
            stream_request = generation_service_pb2.GenerateStreamRequest(messages=_request().messages)
            chunks = list(generation.GenerateStream(stream_request, timeout=10))
            assert "".join(c.text for c in chunks) == "ab"
            assert chunks[-1].finish_reason == generation_service_pb2.FINISH_REASON_LENGTH
            encoder = vision_encoder_service_pb2_grpc.VisionEncoderServiceStub(channel)
            encoded = encoder.Encode(vision_encoder_service_pb2.EncodeRequest(media=[media_pb2.Media(media_id="x")] * 2))
            assert [m.media_id for m in encoded.media] == ["id0", "id1"]
    finally:
        server.stop(grace=None)
