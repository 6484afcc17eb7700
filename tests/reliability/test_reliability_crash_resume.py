"""SIGKILL a real ``enhance`` / ``llava-train`` subprocess at seeded random moments (including while
a checkpoint's ``.<name>.tmp`` folder is being written), resume with ``--resume``, repeat: the final
checkpoint, the exports and the logged losses are bit-identical to an uninterrupted run.

The subprocess is the real CLI (``enhance.cli.main`` / ``llava_integration.cli.main``) with one test
hook: after each checkpoint payload is written it sleeps ``GENHANCER_TEST_CKPT_PAUSE`` seconds, so
the half-written window is wide enough to hit on a loaded machine. The sleep changes no numbers.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testkit import subprocess_env

from genhancer.runtime import checkpoint as ckpt

RUNNER = """
import os, sys, time
import genhancer.runtime.checkpoint as c
_real, _pause = c.write_payload, float(os.environ.get("GENHANCER_TEST_CKPT_PAUSE", "0"))
def _slow(*a, **k):
    _real(*a, **k)
    time.sleep(_pause)
c.write_payload = _slow
if sys.argv[1] == "enhance":
    from enhance.cli import main
else:
    from llava_integration.cli import main
sys.exit(main(sys.argv[2:]))
"""

PAUSE = "0.25"


def _start(tool: str, args: list[str], out: Path, log: Path) -> subprocess.Popen:
    resume = ["--resume"] if (out / "config.yaml").exists() else []
    env = subprocess_env()
    env["GENHANCER_TEST_CKPT_PAUSE"] = PAUSE
    with open(log, "a") as f:
        return subprocess.Popen(
            [sys.executable, "-c", RUNNER, tool, *args, "--output-dir", str(out), *resume],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=f,
        )


def _tmp_dirs(root: Path) -> set[tuple[str, int]]:
    try:
        return {
            (e.name, e.stat().st_ino)
            for e in os.scandir(root)
            if e.name.startswith(".") and e.name.endswith(".tmp")
        }
    except FileNotFoundError:
        return set()


LEFTOVER = "left-by-a-kill"


def _mark_leftovers(root: Path) -> None:
    """Tag the temp folders a killed attempt left behind. The next attempt's ``ckpt.begin`` replaces
    the one it rewrites by a fresh folder, often under the same name *and inode number*, so the tag,
    not (name, inode), tells the two apart."""
    for name, _ in _tmp_dirs(root):
        (root / name / LEFTOVER).touch()


def _fresh_tmp_names(root: Path) -> set[str]:
    """Temp folders begun by the running attempt (see :func:`_mark_leftovers`)."""
    return {name for name, _ in _tmp_dirs(root) if not (root / name / LEFTOVER).exists()}


def run_straight(tool: str, args: list[str], out: Path) -> float:
    log = out.parent / f"{out.name}.log"
    t0 = time.monotonic()
    p = _start(tool, args, out, log)
    assert p.wait(timeout=600) == 0, log.read_text()[-3000:]
    return time.monotonic() - t0


def run_with_kills(tool: str, args: list[str], out: Path, plan: list[tuple[str, float]]) -> dict:
    """Run ``plan`` (("tmp", k): SIGKILL when the attempt begins its k-th checkpoint temp folder;
    ("delay", s): SIGKILL s seconds after start), resuming after each kill, then run to the end.

    ``stats["killed_in"]`` lists, per kill, the checkpoint names the run folder showed right after
    it: the newest complete one (or None) and any half-written temp folders."""
    log = out.parent / f"{out.name}.log"
    root = out / "checkpoints"
    stats = {"kills": 0, "tmp_kills": 0, "attempts": 0, "killed_in": []}
    for step in [*plan, None]:
        stats["attempts"] += 1
        _mark_leftovers(root)
        t0 = time.monotonic()
        p = _start(tool, args, out, log)
        new: set[str] = set()
        while p.poll() is None:
            if step is not None:
                kind, value = step
                if kind == "tmp":
                    new |= _fresh_tmp_names(root)
                    hit = len(new) >= value
                else:
                    hit = time.monotonic() - t0 >= value
                if hit:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
                    stats["kills"] += 1
                    tmp = sorted(name for name, _ in _tmp_dirs(root))
                    if tmp:
                        stats["tmp_kills"] += 1  # a half-written checkpoint was left behind
                    done = ckpt.latest_checkpoint(root)
                    stats["killed_in"].append((done.name if done else None, tmp))
                    break
            if time.monotonic() - t0 > 600:
                p.kill()
                raise AssertionError("subprocess hung")
            time.sleep(0.005)
        if p.returncode == 0:
            return stats  # finished before the trigger: the plan is over
        assert p.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        latest = ckpt.latest_checkpoint(root)
        if latest is not None:  # the newest complete checkpoint always loads
            ckpt.load_weights(latest)
            ckpt.read_state(latest)
    raise AssertionError(f"the final attempt did not finish: {log.read_text()[-3000:]}")


def make_plan(seed: int, n: int, wall: float) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        if i % 2 == 0:
            plan.append(("tmp", rng.randint(1, 3)))
        else:
            plan.append(("delay", rng.uniform(0.3, 1.0) * wall))
    return plan


def _losses(run_dir: Path) -> dict[tuple[str, int], float]:
    """The last logged loss per (stage, step); a step re-run after a kill is logged again."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by SIGKILL
        out[(r["stage"], r["step"])] = r["loss"]
    return out


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _dir_tensors(d: Path) -> dict[str, dict]:
    files = sorted(d.rglob("*.safetensors"))
    assert files, d
    return {str(f.relative_to(d)): load_file(f) for f in files}


def _assert_enhance_identical(a: Path, b: Path, last: str) -> None:
    assert _same_tensors(
        ckpt.load_weights(a / "checkpoints" / last), ckpt.load_weights(b / "checkpoints" / last)
    )
    for sub in ("hf", "vision_tower", "denoiser"):
        ta, tb = _dir_tensors(a / "export" / sub), _dir_tensors(b / "export" / sub)
        assert ta.keys() == tb.keys()
        assert all(_same_tensors(ta[k], tb[k]) for k in ta), sub
    assert _losses(a) == _losses(b)


def _assert_stage1_identical(a: Path, b: Path, last: str) -> None:
    assert _same_tensors(
        ckpt.load_weights(a / "checkpoints" / last), ckpt.load_weights(b / "checkpoints" / last)
    )
    assert _losses(a) == _losses(b)


def test_enhance_sigkill_in_checkpoint_write_then_resume_is_identical(tmp_path, enhance_cli_args):
    """Default-suite variant: SIGKILL while stage1_step2 is half written, resume, compare with an
    uninterrupted run of the same command line in a subprocess with the same thread count (float
    reductions differ between 1 and 2 threads, so an in-process run would not be bit-comparable)."""
    args = enhance_cli_args("train.stages=[1]", "stage1.steps=3", "checkpoint.keep_last=20")
    run_straight("enhance", args, tmp_path / "straight")
    stats = run_with_kills("enhance", args, tmp_path / "killed", [("tmp", 2)])
    assert stats["kills"] == 1 and stats["tmp_kills"] == 1, stats
    _assert_stage1_identical(tmp_path / "straight", tmp_path / "killed", "stage1_step0000003")


class _Crash(Exception):
    pass


def test_resume_from_the_end_of_stage1_gives_identical_stage2(tmp_path, tiny_enhance_config, monkeypatch):
    from enhance.train import run

    overrides = ("stage1.steps=2", "stage2.steps=2", "checkpoint.keep_last=20", "logging.preview_count=0")
    run(tiny_enhance_config(*overrides), tmp_path / "straight")
    real_save = ckpt.save_training_state

    def crashing_save(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if path is not None and path.name == "stage1_step0000002":
            raise _Crash  # what a SIGKILL anywhere before stage2_step0000001 is committed leaves
        return path

    monkeypatch.setattr(ckpt, "save_training_state", crashing_save)
    with pytest.raises(_Crash):
        run(tiny_enhance_config(*overrides), tmp_path / "killed")
    monkeypatch.setattr(ckpt, "save_training_state", real_save)
    run(tiny_enhance_config(*overrides), tmp_path / "killed", resume=True)
    a = ckpt.load_weights(tmp_path / "straight" / "checkpoints" / "stage2_step0000002")
    b = ckpt.load_weights(tmp_path / "killed" / "checkpoints" / "stage2_step0000002")
    assert _same_tensors(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_enhance_sigkill_at_random_moments_then_resume_is_identical(tmp_path, enhance_cli_args, seed):
    """Both stages (3 + 3 steps, a checkpoint every step), up to six kills: two fixed ones first,
    while stage1_step2 is half written, then while stage2_step1 is (the resume starts stage 2 afresh
    from the end of stage 1, LoRA init included), then up to four at seeded random moments of stage 2
    and the export (the plan ends early when an attempt finishes before its trigger). ``("tmp", k)``
    counts the checkpoints an attempt begins, so the fixed kills land where they should however
    loaded the machine is; seeded delays alone often skip stage 2. The final stage-2 checkpoint,
    every logged loss and the exports (HF model, vision tower, denoiser) are bit-identical to the
    uninterrupted run: stage 2's LoRA A is drawn from its own seeded stream (``train.seed + 2``),
    whatever the global RNG went through before."""
    args = enhance_cli_args("stage1.steps=3", "stage2.steps=3", "checkpoint.keep_last=20")
    wall = run_straight("enhance", args, tmp_path / "straight")
    plan = [("tmp", 2), ("tmp", 3), *make_plan(seed, 4, wall)]
    stats = run_with_kills("enhance", args, tmp_path / "killed", plan)
    assert stats["killed_in"][:2] == [
        ("stage1_step0000001", [".stage1_step0000002.tmp"]),
        ("stage1_step0000003", [".stage2_step0000001.tmp"]),
    ], stats
    a, b = tmp_path / "straight", tmp_path / "killed"
    assert list(_losses(a)) == [("stage1", i) for i in (1, 2, 3)] + [("stage2", i) for i in (1, 2, 3)]
    _assert_enhance_identical(a, b, "stage2_step0000003")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_llava_train_sigkill_at_random_moments_then_resume_is_identical(tmp_path, llava_cli_args, seed):
    args = llava_cli_args("pretrain.steps=2", "finetune.steps=3", "checkpoint.keep_last=20")
    wall = run_straight("llava-train", args, tmp_path / "straight")
    stats = run_with_kills("llava-train", args, tmp_path / "killed", make_plan(seed, 4, wall))
    assert stats["tmp_kills"] >= 1, stats
    a, b = tmp_path / "straight", tmp_path / "killed"
    last = "finetune_step0000003"
    assert _same_tensors(
        ckpt.load_weights(a / "checkpoints" / last), ckpt.load_weights(b / "checkpoints" / last)
    )
    assert _same_tensors(
        load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    )
    assert _losses(a) == _losses(b)


def test_a_crash_mid_checkpoint_does_not_log_a_step_twice(tmp_path, tiny_enhance_config, monkeypatch):
    import genhancer.runtime.trainer as trainer
    from enhance.train import run

    overrides = ("train.stages=[1]", "stage1.steps=3", "logging.preview_count=0")
    real_commit = ckpt.commit

    def crashing_commit(root, name, state):
        if name == "stage1_step0000002":
            raise _Crash  # a SIGKILL while the checkpoint of step 2 is being written
        return real_commit(root, name, state)

    monkeypatch.setattr(trainer.ckpt, "commit", crashing_commit)
    with pytest.raises(_Crash):
        run(tiny_enhance_config(*overrides), tmp_path)
    monkeypatch.setattr(trainer.ckpt, "commit", real_commit)
    run(tiny_enhance_config(*overrides), tmp_path, resume=True)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("stage1", 1), ("stage1", 2), ("stage1", 3)]
