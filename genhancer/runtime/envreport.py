"""genhancer-env: the environment report to paste into a bug report.

Prints Python, the platform, the versions of the packages this toolkit is built on (torch with its
CUDA and cuDNN, transformers, diffusers, peft, accelerate, lmms-eval, open_clip, gradio, deepspeed
when present), the GPUs, and how the installed packages differ from the lock file
(``requirements/lock-py311-linux-x86_64.txt``, which ``make`` installs).

    genhancer-env                 # human-readable report
    genhancer-env --json          # the same as one JSON object
    genhancer-env --lock FILE     # compare against another lock file
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

# The distributions a bug report needs first, in the order they are printed.
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "diffusers",
    "peft",
    "accelerate",
    "datasets",
    "lmms-eval",
    "open-clip-torch",
    "gradio",
    "deepspeed",
    "safetensors",
    "filelock",
    "numpy",
)
LOCK_NAME = "requirements/lock-py311-linux-x86_64.txt"
# Installed only by pip/venv themselves or by the project's own editable install.
_IGNORED = {"pip", "genhancer"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 name normalisation, so ``open_clip_torch`` and ``open-clip-torch`` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` pin in a pip/uv requirements lock."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[normalize(name)] = dist.version
    return out


def lock_diff(locked: dict[str, str], installed: dict[str, str]) -> dict[str, list]:
    """What differs between a lock and an environment: changed versions, missing and extra packages."""
    changed = [
        {"package": n, "locked": v, "installed": installed[n]}
        for n, v in sorted(locked.items())
        if n in installed and installed[n] != v
    ]
    missing = sorted(n for n in locked if n not in installed)
    extra = sorted(n for n in installed if n not in locked and n not in _IGNORED)
    return {"changed": changed, "missing": missing, "extra": extra}


def default_lock() -> Path | None:
    """The lock of the checkout this package runs from (editable installs), if there is one."""
    cand = Path(__file__).resolve().parents[2] / LOCK_NAME
    return cand if cand.is_file() else None


def gpu_info() -> dict:
    try:
        import torch
    except Exception as e:  # a broken torch is itself the most useful line of the report
        return {"error": f"torch does not import: {type(e).__name__}: {e}"}
    info: dict = {
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append(
                {
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                }
            )
    return info


def collect(lock: Path | None) -> dict:
    installed = installed_versions()
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": {n: installed.get(n) for n in KEY_PACKAGES},
        "gpu": gpu_info(),
        "lock": str(lock) if lock else None,
    }
    if lock is not None:
        report["lock_diff"] = lock_diff(read_lock(lock), installed)
    return report


def format_report(r: dict) -> str:
    lines = [f"python      {r['python']}  ({r['platform']})"]
    for name, version in r["packages"].items():
        lines.append(f"{name:<16s}{version or '-'}")
    g = r["gpu"]
    if "error" in g:
        lines.append(f"gpu         {g['error']}")
    else:
        lines.append(f"torch cuda  build {g['cuda_build'] or 'none (CPU)'}, cudnn {g['cudnn'] or '-'}")
        devices = ", ".join(
            f"{d['name']} ({d['memory_gib']} GiB, sm {d['capability']})" for d in g["devices"]
        )
        lines.append(f"gpus        {devices or 'none visible'}")
    if r["lock"] is None:
        lines.append("lock        not found (pass --lock FILE to compare)")
    else:
        d = r["lock_diff"]
        n = len(d["changed"]) + len(d["missing"]) + len(d["extra"])
        lines.append(f"lock        {r['lock']}: {'matches' if n == 0 else f'{n} difference(s)'}")
        for c in d["changed"]:
            lines.append(f"  changed   {c['package']} {c['locked']} -> {c['installed']}")
        for m in d["missing"]:
            lines.append(f"  missing   {m}")
        for e in d["extra"]:
            lines.append(f"  extra     {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="genhancer-env", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--lock",
        type=Path,
        default=None,
        help=f"lock file to compare with (default: the checkout's {LOCK_NAME})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    lock = args.lock if args.lock is not None else default_lock()
    if lock is not None and not lock.is_file():
        print(f"genhancer-env: error: --lock {lock}: no such file", file=sys.stderr)
        return 2
    r = collect(lock)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
