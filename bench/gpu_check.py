"""The GPU check's steps and report (``bench/gpu_check.sh`` installs the wheels, then runs this).

In order, each step timed, its output kept, and skipped once the budget is spent:

1. the environment (torch, CUDA device, memory);
2. the memory plan (``enhance --describe`` for the card's memory), then ``bench/train_step.py`` for
   GenHancer stage 1 and stage 2 at micro-batch 2 and at the largest the plan says fits (half of it
   if that runs out of memory), each in its own process: the paper-sized oai224 configuration on
   CUDA, the tiny preset on the CPU; planned against measured peak for each;
3. last, so a short lease measures first, the tiny chain on the device as a smoke test:
   ``enhance --preset tiny`` for every method, ``llava-train --preset tiny`` on GenHancer's
   export, ``leaderboard --preset tiny`` on both.

Everything lands in one folder: ``gpu_check.json`` (every number), ``gpu_check.md`` (the tables),
``gpu_check.log`` (each command's output)::

    python bench/gpu_check.py --device cuda --out $OUT
    python bench/gpu_check.py --device cpu --out /tmp/rehearsal --methods genhancer   # rehearsal
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("genhancer", "diva", "dcr", "naive-contrastive")
CLI = {"enhance": "enhance.cli", "llava-train": "llava_integration.cli", "leaderboard": "eval.cli"}
_RUN_CLI = "import sys, importlib; sys.exit(importlib.import_module(sys.argv[1]).main(sys.argv[2:]))"
#: A short tiny run: enough steps to train, checkpoint and export on every method.
TINY_SETS = (
    "data.toyworld_size=64",
    "data.num_workers=0",
    "stage1.steps=4",
    "stage1.global_batch_size=8",
    "stage1.per_device_batch_size=8",
    "stage2.steps=4",
    "stage2.global_batch_size=8",
    "stage2.per_device_batch_size=8",
    "checkpoint.every=4",
    "logging.every=2",
)
LLAVA_SETS = (
    "pretrain.steps=4",
    "finetune.steps=4",
    "data.toy_pretrain_size=64",
    "data.toy_finetune_size=64",
    "data.toy_eval_size=16",
    "data.num_workers=0",
)


class Check:
    def __init__(self, out: Path, device: str, budget_s: float):
        self.out, self.device, self.budget_s = out, device, budget_s
        self.start = time.monotonic()
        self.steps: list[dict] = []
        self.log = open(out / "gpu_check.log", "a")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.env.get("PYTHONPATH", ""), str(REPO)]))
        if device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def run(self, name: str, argv: list[str], timeout: float | None = None) -> dict:
        """One command: rc, seconds, its last JSON line (when it prints one); skipped when the
        budget is spent."""
        step: dict = {"step": name}
        left = self.left()
        if left < 5:
            step["status"] = "skipped: time budget spent"
            self.steps.append(step)
            return step
        self.log.write(f"\n===== {name}: {' '.join(argv)}\n")
        self.log.flush()
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                cwd=REPO,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=min(timeout or left, left),
            )
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
        step.update(seconds=round(time.monotonic() - t0, 1), rc=rc, status="ok" if rc == 0 else "failed")
        self.log.write(stdout + "\n" + stderr[-20000:] + "\n")
        self.log.flush()
        step["result"] = _last_json(stdout)
        if rc != 0:
            step["error"] = stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""
        self.steps.append(step)
        return step

    def cli(self, name: str, prog: str, *args: str, timeout: float | None = None) -> dict:
        return self.run(name, [sys.executable, "-c", _RUN_CLI, CLI[prog], *args], timeout)


def _last_json(text: str):
    """The JSON document a command printed last (a one-line object, or an indented one at the end)."""
    text = text.strip()
    for line in reversed(text.splitlines()):
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    start = text.rfind("\n{")
    for candidate in (text, text[start + 1 :] if start >= 0 else ""):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None


def environment(device: str) -> dict:
    import platform

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    env["wheels_installed"] = os.environ.get("GPU_CHECK_WHEELS", "").split()
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda
        )
    for name in ("transformers", "diffusers", "peft", "accelerate", "open_clip", "datasets", "lmms_eval"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # a missing package is what this step reports
            env[name] = f"missing ({type(exc).__name__})"
    return env


def tiny_chain(check: Check, work: Path, methods: list[str]) -> None:
    for m in methods:
        check.cli(f"tiny enhance --method {m}", "enhance", "--preset", "tiny", "--method", m,
                  "--output-dir", str(work / f"enhance-{m}"), *_sets(TINY_SETS))  # fmt: skip
    tower = work / "enhance-genhancer" / "export"
    check.cli("tiny llava-train", "llava-train", "--preset", "tiny", "--vision-tower", str(tower / "vision_tower"),
              "--output-dir", str(work / "llava"), *_sets(LLAVA_SETS))  # fmt: skip
    check.cli("tiny leaderboard", "leaderboard", "--preset", "tiny", "--clip", f"enhanced={tower / 'hf'}",
              "--mllm", f"enhanced={work / 'llava' / 'final'}", "--limit", "8",
              "--output-dir", str(work / "board"))  # fmt: skip


def _sets(items) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def train_steps(check: Check, device: str, plan: dict | None, max_batch: int | None) -> None:
    """Each stage at micro-batch 2 and at the largest the plan says fits (capped by ``max_batch``);
    when that one runs out of memory, half of it. Separate processes, so an OOM loses nothing else."""
    size = ["--size", "oai224", "--vae-dtype", "auto"] if device == "cuda" else ["--preset", "tiny"]
    steps = ["--steps", "5", "--warmup", "2"] if device == "cuda" else ["--steps", "2", "--warmup", "1"]
    for stage in (1, 2):
        planned = ((plan or {}).get("memory_plan") or {}).get(f"stage{stage}") or {}
        largest = planned.get("max_micro_batch") or 4
        if max_batch:
            largest = min(largest, max_batch)
        for batch in dict.fromkeys([2, max(largest, 2)]):
            argv = [
                sys.executable,
                "bench/train_step.py",
                *size,
                "--stage",
                str(stage),
                "--batch",
                str(batch),
            ]
            step = check.run(f"train_step genhancer stage {stage} batch {batch}", [*argv, *steps, "--json"])
            if batch != 2 and step.get("rc") not in (0, None) and "OutOfMemory" in step.get("error", ""):
                half = max(batch // 2, 2)
                argv[-1] = str(half)
                check.run(f"train_step genhancer stage {stage} batch {half}", [*argv, *steps, "--json"])


def memory_plan(check: Check, device: str, gpu_gib: float) -> dict:
    preset = "openai-clip-l14-224" if device == "cuda" else "tiny"
    sets = [] if device == "cuda" else ["--set", "train.mixed_precision=no"]
    return check.cli("memory plan (enhance --describe)", "enhance", "--preset", preset, "--describe",
                     "--gpu-memory", str(gpu_gib), *sets)  # fmt: skip


def compare(steps: list[dict], plan: dict | None) -> list[dict]:
    """Planned (without the CUDA context term) against torch's measured peak, per stage and batch."""
    from genhancer.runtime.memory import GIB

    rows = []
    for step in steps:
        name, r = step["step"], step.get("result")
        if not name.startswith("train_step genhancer stage") or not r:
            continue
        stage = int(name.split("stage ")[1].split()[0])
        planned = ((plan or {}).get("memory_plan") or {}).get(f"stage{stage}")
        row = {"stage": stage, "batch": r["batch"], "images_per_s": round(r["images_per_s"], 2),
               "step_s": round(r["step_s"], 4), "mfu": round(r["mfu"], 3) if r.get("mfu") else None}  # fmt: skip
        measured = r.get("peak_memory_gb")
        row["measured_peak_gib"] = round(measured * 1e9 / GIB, 2) if measured is not None else None
        if planned:
            per_sample = planned["activations_per_sample_gib"]
            fixed = planned["total_gib"] - planned["overhead_gib"] - per_sample * planned["micro_batch"]
            row["planned_gib"] = round(fixed + per_sample * r["batch"], 2)
            row["plan_max_micro_batch"] = planned.get("max_micro_batch")
            if measured is not None:
                row["measured_over_planned"] = round(row["measured_peak_gib"] / row["planned_gib"], 3)
        if "vs_paper_table7" in r:
            row["ours_s_per_100_iters"] = round(r["vs_paper_table7"]["ours_s_per_100"], 2)
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# GPU check",
        "",
        f"{env.get('gpu', 'cpu')} · torch {env['torch']} · python {env['python']} · "
        f"{report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    for s in report["steps"]:
        status = s["status"] + (f" ({s['error']})" if s.get("error") else "")
        lines.append(f"| {s['step']} | {status} | {s.get('seconds', '')} |")
    if report["train_and_memory"]:
        lines += [
            "",
            "| stage | batch | images/s | step s | MFU | planned GiB (no context) | measured peak GiB | measured / planned | plan's max batch | s / 100 it (paper Table 7: 20.55) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["train_and_memory"]:
            lines.append(
                f"| {r['stage']} | {r['batch']} | {r['images_per_s']} | {r['step_s']} | {r['mfu']} | {r.get('planned_gib')} | "
                f"{r['measured_peak_gib']} | {r.get('measured_over_planned')} | {r.get('plan_max_micro_batch')} | "
                f"{r.get('ours_s_per_100_iters', '')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu-check"))
    p.add_argument("--methods", default=",".join(METHODS), help="methods of the tiny chain")
    p.add_argument("--budget-s", type=float, default=450.0, help="steps after this are skipped")
    p.add_argument("--max-batch", type=int, default=None, help="cap of the largest-batch search")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    check = Check(out, args.device, args.budget_s)
    env = environment(args.device)
    if args.device == "cuda" and "gpu" not in env:
        print(
            "gpu_check: --device cuda but torch sees no GPU (use --device cpu to rehearse)", file=sys.stderr
        )
        return 2
    # measurements first (a short lease may end before the smoke test); each step is skipped once
    # the budget is spent
    plan = memory_plan(check, args.device, env.get("gpu_memory_gib", 16.0)).get("result")
    train_steps(check, args.device, plan, args.max_batch)
    tiny_chain(check, work, [m for m in args.methods.split(",") if m])
    report = {
        "environment": env,
        "budget_s": args.budget_s,
        "seconds": round(time.monotonic() - check.start, 1),
        "steps": check.steps,
        "train_and_memory": compare(check.steps, plan),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in check.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
