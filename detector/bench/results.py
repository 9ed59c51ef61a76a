"""What every benchmark script shares: a description of the machine and writing NAME.json + NAME.md (the
fastest-of-N rate of a call is detector/timing.py's, which the server's warm-up uses too)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def machine() -> str:
    import torch

    device = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {device}"


def stamp(result: dict) -> dict:
    """Add the machine and the date to ``result`` (call before writing them into a report)."""
    result["machine"] = machine()
    result["date"] = time.strftime("%Y-%m-%d")
    return result


def write_results(out: Path, name: str, result: dict, lines: list[str]) -> None:
    """``result`` as docs/benchmarks/NAME.json, ``lines`` as NAME.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (name + '.md')}")
