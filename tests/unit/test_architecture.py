"""The layering the design names, checked on the source: every import of every file (read with `ast`, so
imports nested in functions or under TYPE_CHECKING count, and text in strings does not), and a size limit.

Folders and the import names they are installed as (setup.py):

    services/          internvl_serve            (encoder, decoder, common, ... below it)
    kernels/           internvl_serve.kernels
    clients/           internvl_serve.clients
    proto/pb/          internvl_serve.pb         (generated stubs: not read)

Rules:
- kernels/ imports nothing of ours outside internvl_serve.kernels;
- the encoder never imports the decoder, nor the decoder the encoder;
- clients/ imports nothing from the services (only internvl_serve.clients and internvl_serve.pb);
- services/common imports neither the encoder nor the decoder;
- nothing under services/ imports internvl_serve.clients;
- the decoder's engine core (services/decoder/engine/) imports neither the decoder's gRPC service
  (internvl_serve.decoder.service), nor the generated stubs (internvl_serve.pb), nor grpc;
- the decoder's gRPC service (services/decoder/service/) uses only the engine's public API: it imports
  internvl_serve.decoder.engine and the names in its __all__, never a submodule of it;
- no source file (.py, .sh, .js) under services/, kernels/, clients/, benchmarks/ or scripts/ is over 400 lines
  (installed packages, node_modules/ of clients/node, are not ours and not read).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = "internvl_serve"
# folder (relative to the repository) -> the package it is installed as; the longest match wins
PACKAGES = {
    "services": ROOT,
    "kernels": f"{ROOT}.kernels",
    "clients": f"{ROOT}.clients",
    "proto/pb": f"{ROOT}.pb",
}
SOURCE_DIRS = ("services", "kernels", "clients", "benchmarks", "scripts")
GENERATED = ("proto/pb",)
MAX_LINES = 400
LINE_COUNTED = (".py", ".sh", ".js")
NOT_OURS = ("__pycache__", "node_modules")  # folders skipped wherever they are


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository, with "/"
    line: int
    name: str  # the absolute dotted name imported ("pkg.mod", or "pkg.mod.name" for `from pkg.mod import name`)
    text: str  # the statement as written

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def module_name(path: str) -> str | None:
    """The dotted module a file is installed as (None: not part of the package, e.g. benchmarks/)."""
    folder = max((f for f in PACKAGES if _under(path, f)), key=len, default=None)
    if folder is None:
        return None
    parts = list(PurePosixPath(path).relative_to(folder).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGES[folder], *parts])


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports_of(path: str, source: str) -> list[Import]:
    """Every import in `source` (the file at repository path `path`), relative ones made absolute."""
    tree = ast.parse(source, filename=path)
    module = module_name(path)
    is_package = PurePosixPath(path).name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        text = ast.get_source_segment(source, node) if isinstance(node, (ast.Import, ast.ImportFrom)) else None
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name, text or alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                if module is None:
                    raise AssertionError(f"{path}:{node.lineno}: a relative import outside any package: {text}")
                package = module.split(".") if is_package else module.split(".")[:-1]
                keep = len(package) - (node.level - 1)
                if keep < 1:
                    raise AssertionError(f"{path}:{node.lineno}: a relative import above {ROOT}: {text}")
                base = ".".join(package[:keep] + ([node.module] if node.module else []))
            for alias in node.names:
                name = base if alias.name == "*" else f"{base}.{alias.name}"
                found.append(Import(path, node.lineno, name, text or f"from {base} import {alias.name}"))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            # importlib.import_module("x.y") / __import__("x.y") with a literal name
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            target = node.args[0].value
            if called in ("import_module", "__import__") and isinstance(target, str) and not target.startswith("."):
                found.append(Import(path, node.lineno, target, ast.get_source_segment(source, node) or target))
    return found


@dataclass(frozen=True)
class Rule:
    folder: str  # applies to files under this repository folder
    why: str
    forbidden: tuple[str, ...] = ()  # these names (and everything below them)
    allowed_ours: tuple[str, ...] | None = None  # if set: of internvl_serve.*, only these (and below)
    public_only: tuple[str, ...] = ()  # packages imported only as themselves or the names in their __all__

    def breaks(self, imp: Import) -> bool:
        if any(_matches(imp.name, f) for f in self.forbidden):
            return True
        for package in self.public_only:
            if _matches(imp.name, package) and imp.name != package:
                head = imp.name[len(package) + 1 :].split(".")[0]
                if head not in public_names(package) or imp.name != f"{package}.{head}":
                    return True
        if self.allowed_ours is not None and _matches(imp.name, ROOT):
            return not any(_matches(imp.name, a) for a in self.allowed_ours)
        return False


RULES = (
    Rule(
        "kernels",
        "kernels/ depends on nothing of ours outside internvl_serve.kernels",
        allowed_ours=(f"{ROOT}.kernels",),
    ),
    Rule("services/encoder", "the encoder never imports the decoder", forbidden=(f"{ROOT}.decoder",)),
    Rule("services/decoder", "the decoder never imports the encoder", forbidden=(f"{ROOT}.encoder",)),
    Rule("clients", "clients/ imports nothing from the services", allowed_ours=(f"{ROOT}.clients", f"{ROOT}.pb")),
    Rule(
        "services/common",
        "services/common imports neither the encoder nor the decoder",
        forbidden=(f"{ROOT}.encoder", f"{ROOT}.decoder"),
    ),
    Rule("services", "the services never import the client library", forbidden=(f"{ROOT}.clients",)),
    Rule(
        "services/decoder/engine",
        "the engine core knows nothing of gRPC or the decoder's service",
        forbidden=(f"{ROOT}.decoder.service", f"{ROOT}.pb", "grpc"),
    ),
    Rule(
        "services/decoder/service",
        "the decoder's service uses only the engine's public API (internvl_serve.decoder.engine's __all__)",
        public_only=(f"{ROOT}.decoder.engine",),
    ),
)


def public_names(package: str) -> frozenset[str]:
    """The `__all__` of one of our packages, read from its __init__.py in the tree."""
    folder = next(f for f, pkg in PACKAGES.items() if _matches(package, pkg))
    rel = package[len(PACKAGES[folder]) :].lstrip(".").replace(".", "/")
    init = REPO / folder / rel / "__init__.py"
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    raise AssertionError(f"{init} has no __all__: the rule on {package}'s public API cannot be checked")


def violations(path: str, source: str) -> list[str]:
    """Each broken rule in one file, as 'file:line: import  (why)'."""
    out = []
    if path.endswith(".py"):
        rules = [r for r in RULES if _under(path, r.folder)]
        for imp in imports_of(path, source):
            out += [f"{imp}  -> {imp.name} ({rule.why})" for rule in rules if rule.breaks(imp)]
    lines = len(source.splitlines())
    if path.endswith(LINE_COUNTED) and any(_under(path, d) for d in SOURCE_DIRS) and lines > MAX_LINES:
        out.append(f"{path}: {lines} lines (at most {MAX_LINES}: split the file)")
    return out


def source_files() -> list[str]:
    files = []
    for folder in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(REPO / folder):
            dirnames[:] = sorted(d for d in dirnames if d not in NOT_OURS)  # never walk into node_modules
            for name in sorted(filenames):
                rel = (Path(dirpath) / name).relative_to(REPO).as_posix()
                if rel.endswith(LINE_COUNTED) and not any(_under(rel, g) for g in GENERATED):
                    files.append(rel)
    return files


def test_the_layering_holds_on_the_tree():
    files = source_files()
    python = [f for f in files if f.endswith(".py")]
    assert len(python) > 50, f"only {len(python)} Python files found under {SOURCE_DIRS} in {REPO}"
    assert {f.split("/")[0] for f in python} >= {"services", "kernels", "clients"}
    assert not [f for f in files if set(f.split("/")) & set(NOT_OURS)]
    scanned_imports = 0
    broken = []
    for path in files:
        source = (REPO / path).read_text(encoding="utf-8")
        if path.endswith(".py"):
            scanned_imports += len(imports_of(path, source))
        broken += violations(path, source)
    assert scanned_imports > 100, f"only {scanned_imports} imports read from {len(python)} files"
    assert not broken, "architecture rules broken:\n" + "\n".join(broken)


# --- the checker itself: it must see what it is meant to see ---


def test_module_names_follow_the_package_layout():
    assert module_name("services/encoder/engine.py") == "internvl_serve.encoder.engine"
    assert module_name("services/__init__.py") == "internvl_serve"
    assert module_name("kernels/api.py") == "internvl_serve.kernels.api"
    assert module_name("clients/__init__.py") == "internvl_serve.clients"
    assert module_name("proto/pb/internvl/v1/media_pb2.py") == "internvl_serve.pb.internvl.v1.media_pb2"
    assert module_name("benchmarks/report.py") is None


def test_relative_and_nested_imports_are_resolved():
    source = "from . import checks\nfrom .config import X\n\ndef f():\n    from ..common.logs import log_event\n"
    names = [(i.line, i.name) for i in imports_of("kernels/api.py", source)]
    assert sorted(names) == [
        (1, "internvl_serve.kernels.checks"),
        (2, "internvl_serve.kernels.config.X"),
        (5, "internvl_serve.common.logs.log_event"),
    ]
    pkg = [i.name for i in imports_of("services/decoder/engine/__init__.py", "from .scheduler import S\n")]
    assert pkg == ["internvl_serve.decoder.engine.scheduler.S"]


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("kernels/fake.py", "def f():\n    from ..decoder.engine import x\n", "kernels/fake.py:2:"),
        ("kernels/fake.py", "import internvl_serve.common.logs\n", "internvl_serve.common.logs"),
        ("services/encoder/fake.py", "from internvl_serve.decoder.engine import kv_cache\n", "internvl_serve.decoder"),
        ("services/encoder/fake.py", "from internvl_serve import decoder\n", "from internvl_serve import decoder"),
        ("services/decoder/fake.py", "import internvl_serve.encoder.engine as e\n", "internvl_serve.encoder"),
        ("clients/fake.py", "from internvl_serve.common.errors import E\n", "clients/fake.py:1:"),
        ("services/common/fake.py", "if x:\n    from ..encoder import config\n", "internvl_serve.encoder.config"),
        ("services/stack/fake.py", "from internvl_serve.clients import InternVLClient\n", "client library"),
        ("services/decoder/engine/fake.py", "import grpc.aio\n", "grpc.aio"),
        ("services/decoder/engine/fake.py", "from internvl_serve.pb.internvl.v1 import media_pb2\n", "pb"),
        ("services/decoder/engine/fake.py", "from ..service.servicer import S\n", "internvl_serve.decoder.service"),
        ("services/decoder/engine/fake.py", "importlib.import_module('grpc')\n", "grpc"),
        ("services/decoder/service/fake.py", "from ..engine import engine_loop\n", "public API"),
        (
            "services/decoder/service/fake.py",
            "from internvl_serve.decoder.engine.request import Usage\n",
            "internvl_serve.decoder.engine.request.Usage",
        ),
        ("services/decoder/service/fake.py", "import internvl_serve.decoder.engine.scheduler\n", "public API"),
        ("services/decoder/service/fake.py", "from internvl_serve.decoder.engine.Engine import x\n", "public API"),
        ("scripts/fake.sh", "echo\n" * (MAX_LINES + 1), f"{MAX_LINES + 1} lines"),
        ("clients/node/src/fake.js", "f();\n" * (MAX_LINES + 1), f"{MAX_LINES + 1} lines"),
    ],
)
def test_the_checker_reports_a_violation(path, source, expected):
    found = violations(path, source)
    assert found and any(expected in v for v in found), found


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("kernels/fake.py", "from .config import X\nimport torch\nimport triton.language as tl\n"),
        ("clients/fake.py", "from internvl_serve.pb.internvl.v1 import media_pb2\nfrom . import errors\nimport grpc\n"),
        ("services/encoder/fake.py", "from internvl_serve.common.logs import log_event\nfrom ..kernels import api\n"),
        ("services/stack/fake.py", "print('from internvl_serve.clients import InternVLClient')\n"),  # a string only
        ("services/decoder/service/fake.py", "import grpc\nfrom ..engine import Engine, SamplingParams\n"),
        ("services/decoder/service/fake.py", "import internvl_serve.decoder.engine as engine\n"),
        ("services/decoder/service/fake.py", "from internvl_serve.decoder.config import DecoderConfig\n"),
        ("services/decoder/engine/fake.py", "from .scheduler import S\nfrom internvl_serve.kernels import api\n"),
        ("benchmarks/fake.py", "import internvl_serve.clients\n" * MAX_LINES),
    ],
)
def test_the_checker_accepts_what_the_rules_allow(path, source):
    assert violations(path, source) == []
