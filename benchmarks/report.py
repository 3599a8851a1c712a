"""Write one benchmark's section of docs/benchmarks.md (between its markers) and its JSON results."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure here is written by a script under `benchmarks/`, which measures our path and its baseline in
the same run on the same machine. Rerun a script to refresh its section; the other sections stay.
"""


def machine() -> str:
    import os

    import torch

    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()})"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}{gpu}, torch {torch.__version__}"


def write_section(name: str, markdown: str) -> None:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    doc = DOC.read_text() if DOC.exists() else HEADER
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"{begin}\n{markdown.rstrip()}\n\n_Measured {stamp} on {machine()}._\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(doc)


def write_json(out_dir: Path, name: str, results: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rss_bytes(pid: int) -> int:
    """A process's resident memory (Linux /proc), 0 when unknown."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def logged_event(log: Path, event: str) -> dict:
    """The last JSON log line of `event` in a service's log ({} if none)."""
    found = {}
    for line in log.read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in line:
            try:
                found = json.loads(line)
            except ValueError:
                pass
    return found
