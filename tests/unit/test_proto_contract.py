"""The public gRPC contract (proto/internvl/v1) and its generated Python stubs (proto/pb).

Invariants: the checked-in stubs are exactly what `python scripts/gen_proto.py` makes; the protos pass
buf-STANDARD-style lint rules plus "everything has a comment"; the names and field numbers fixed in
DESIGN.md section 3 exist unchanged; the generated modules import; messages survive a round trip.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from internvl_serve.pb.internvl.v1 import (
    generation_service_pb2,
    generation_service_pb2_grpc,  # noqa: F401  (importing it is part of the contract)
    media_pb2,
    vision_encoder_service_pb2,
    vision_encoder_service_pb2_grpc,  # noqa: F401
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STUBS_DIR = REPO_ROOT / "proto" / "pb"
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
        f"proto/pb/ is out of date with proto/ (differs: {', '.join(stale)}). "
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

# The contract block of DESIGN.md section 3, verbatim. It is compiled on its own and every message,
# field, enum value and RPC in it must exist in proto/ with the same number, type, label and oneof.
DESIGN_CONTRACT = """
service VisionEncoderService {
  rpc Encode(EncodeRequest) returns (EncodeResponse);
}
service GenerationService {
  rpc Generate(GenerateRequest) returns (GenerateResponse);
  rpc GenerateStream(GenerateStreamRequest) returns (stream GenerateStreamResponse);
}

message Image { bytes data = 1; }                        // encoded file: JPEG, PNG, WebP, GIF, BMP, TIFF
message Video { bytes data = 1; uint32 num_frames = 2; }  // container bytes (MP4, WebM, MKV, ...); 0 = server default
message Media { oneof source { Image image = 1; Video video = 2; string media_id = 3; } }
message Tensor { string dtype = 1; repeated int64 shape = 2; bytes data = 3; }   // "bfloat16"|"float16"|"float32", row-major, little-endian

message EncodeRequest  { repeated Media media = 1; bool return_embeddings = 2; }
message EncodedMedia   { string media_id = 1; uint32 num_tiles = 2; uint32 num_tokens = 3; bool cache_hit = 4; Tensor embeddings = 5; }
message EncodeResponse { repeated EncodedMedia media = 1; string model = 2; }

message Part    { oneof content { string text = 1; Media media = 2; } }
message Message { string role = 1; repeated Part content = 2; }      // role: system | user | assistant
message SamplingParams {
  uint32 max_new_tokens = 1;      // 0 = server default
  float temperature = 2;          // 0 = greedy
  float top_p = 3; uint32 top_k = 4; optional uint64 seed = 5;
  repeated string stop = 6; bool ignore_eos = 7; float repetition_penalty = 8;
}
message GenerateRequest        { repeated Message messages = 1; SamplingParams sampling = 2; }
message GenerateStreamRequest  { repeated Message messages = 1; SamplingParams sampling = 2; }
enum FinishReason { FINISH_REASON_UNSPECIFIED = 0; FINISH_REASON_STOP = 1; FINISH_REASON_LENGTH = 2; }
message Usage { uint32 input_tokens = 1; uint32 output_tokens = 2; uint32 image_tokens = 3; uint32 media_cache_hits = 4; }
message GenerateResponse       { string text = 1; repeated uint32 token_ids = 2; FinishReason finish_reason = 3; Usage usage = 4; }
message GenerateStreamResponse { string text = 1; repeated uint32 token_ids = 2; FinishReason finish_reason = 3; Usage usage = 4; } // text/token_ids are the delta; finish_reason and usage on the last message
"""  # noqa: E501 (DESIGN.md's block, verbatim)

# Where each contract type lives, i.e. the Python module clients import it from.
MODULE_OF = {
    "media.proto": (media_pb2, ["Image", "Video", "Media", "Tensor"]),
    "vision_encoder_service.proto": (vision_encoder_service_pb2, ["EncodeRequest", "EncodedMedia", "EncodeResponse"]),
    "generation_service.proto": (
        generation_service_pb2,
        ["Part", "Message", "SamplingParams", "GenerateRequest", "GenerateStreamRequest", "FinishReason", "Usage"]
        + ["GenerateResponse", "GenerateStreamResponse"],
    ),
}


def _field_signature(msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto) -> tuple:
    in_real_oneof = field.HasField("oneof_index") and not field.proto3_optional
    oneof = msg.oneof_decl[field.oneof_index].name if in_real_oneof else None
    kind = (FDP.Type.Name(field.type), field.type_name, FDP.Label.Name(field.label))
    return (field.number, *kind, oneof, field.proto3_optional)


def _shipped_types() -> dict[str, object]:
    """Every top-level message, enum and service of the shipped stubs, by name, as descriptor protos."""
    found: dict[str, object] = {}
    for module in (media_pb2, vision_encoder_service_pb2, generation_service_pb2):
        file = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        found.update({t.name: t for t in [*file.message_type, *file.enum_type, *file.service]})
    return found


def test_design_contract_is_kept(tmp_path: Path) -> None:
    design_root = tmp_path / "design"
    (design_root / "design.proto").parent.mkdir(parents=True)
    (design_root / "design.proto").write_text(f'syntax = "proto3";\npackage internvl.v1;\n{DESIGN_CONTRACT}')
    (design,) = _compile(design_root, tmp_path)
    shipped = _shipped_types()
    problems = []
    for msg in design.message_type:
        ours = shipped.get(msg.name)
        actual = {f.name: _field_signature(ours, f) for f in ours.field} if ours else {}
        for field in msg.field:
            expected = _field_signature(msg, field)
            if actual.get(field.name) != expected:
                problems.append(f"{msg.name}.{field.name}: DESIGN {expected}, got {actual.get(field.name)}")
    for enum in design.enum_type:
        ours = shipped.get(enum.name)
        if not ours or not {(v.name, v.number) for v in enum.value} <= {(v.name, v.number) for v in ours.value}:
            problems.append(f"enum {enum.name}: DESIGN values {[(v.name, v.number) for v in enum.value]} missing")
    for service in design.service:
        ours = {m.name: m for m in shipped[service.name].method} if service.name in shipped else {}
        for rpc in service.method:
            if ours.get(rpc.name) != rpc:
                problems.append(f"rpc {service.name}.{rpc.name}: DESIGN {rpc}, got {ours.get(rpc.name)}")
    assert problems == [], "names/numbers fixed by DESIGN.md changed:\n" + "\n".join(problems)


@pytest.mark.parametrize("file_name", sorted(MODULE_OF))
def test_contract_types_live_in_their_documented_module(file_name: str) -> None:
    module, names = MODULE_OF[file_name]
    assert module.DESCRIPTOR.name == f"internvl/v1/{file_name}"
    for name in names:
        assert getattr(module, name).DESCRIPTOR.full_name == f"internvl.v1.{name}"


def test_design_contract_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys.modules[__name__], "DESIGN_CONTRACT", DESIGN_CONTRACT.replace("media_id = 3", "media_id = 4")
    )
    with pytest.raises(AssertionError, match=r"Media\.media_id: DESIGN"):
        test_design_contract_is_kept(tmp_path)


# --- 4. round trip -----------------------------------------------------------------------------


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
