"""Kill loop: SIGKILL `bytelm train --resume` at random moments and check every restart resumes.

A tiny run saves every step (`--train.save_every 1`), so saves take a large share of the
wall time and random kills land in every phase of a save, mid-save included. Each
iteration starts `python -m bytelm.cli train ... --resume` in its own process group, waits
for the first save of its own, sleeps a random time, reads the pointer (`latest`), kills the
whole group with SIGKILL and reads the pointer again. It then checks that

  (a) the run directory and its `checkpoint` path load (`load_model`) and the trainer state
      a resume reads is there (`find_resumable` + `load_trainer_state`);
  (b) the next start prints `resume: continuing from ... (step S)` with S equal to the
      pointer's newest step after the kill (and so >= the one seen before it), and never
      restarts from step 0 once a save completed.

The kill moment is classified from what the dead process left in the run directory:
a `.checkpoint-*.tmp-*` directory (writing a step directory), a step directory newer than
the pointer (renamed in, not committed), `.latest.tmp-*` (writing the pointer), a symlink
naming an older step than the pointer (committed, symlink not moved), `.checkpoint.tmp-*`
(the new symlink before its rename), `.trash-*` or more step directories than kept
(deleting old ones), else "between saves" (training, or the save's first calls).

    python -m benchmarks.kill_loop --runs 50 [--max-wait 2.0] [--seed 0] [--keep-tmp]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import write_results
from bytelm.checkpoint import ALIAS, POINTER, STEP_DIR, read_pointer, step_dirs

RESUME = re.compile(r"resume: continuing from (\S+) \(step (\d+)\)")
FRESH = "resume: nothing to resume"
KEEP = 2  # train.keep_checkpoints (the default)


def make_corpus(root: Path) -> Path:
    """A few text files (~60 KB in all) of deterministic, vaguely English text."""
    rng = random.Random(1234)
    words = (
        "the a checkpoint survives crash at any instant pointer rename fsync directory "
        "model train step resume kill save durable temporary file byte patch latent "
        "encoder decoder loss gradient optimizer scheduler random state of and to in"
    ).split()
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(6):
        lines = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(160)]
        (corpus / f"doc{i}.txt").write_text("\n".join(lines) + "\n")
    return corpus


def newest_step(names: list[str]) -> int:
    """The step of the newest name in a pointer (-1 for none)."""
    return int(STEP_DIR.fullmatch(names[0])[1]) if names else -1


def classify(run: Path) -> str:
    """Where in a save the process died, from what it left in the run directory."""
    names = [p.name for p in run.iterdir()]
    pointer = read_pointer(run)
    committed = newest_step(pointer)
    steps = step_dirs(run)
    alias = run / ALIAS
    target = os.readlink(alias) if alias.is_symlink() else None
    if any(n.startswith(".checkpoint-") and ".tmp-" in n for n in names):
        return "writing step dir"
    if steps and int(STEP_DIR.fullmatch(steps[0])[1]) > committed:
        return "renamed, not committed"
    if any(n.startswith(f".{POINTER}.tmp-") for n in names):
        return "writing pointer"
    if pointer and target != pointer[0]:
        return "committed, symlink old"
    if any(n.startswith(f".{ALIAS}.tmp-") for n in names):
        return "new symlink, not renamed"
    if any(n.startswith(".trash-") for n in names) or len(steps) > len(pointer):
        return "deleting old step dirs"
    return "between saves"


def check_loadable(run: Path) -> str:
    """'' when the run directory and its `checkpoint` path load and resume, else the error.
    Run in a fresh interpreter (`--check`), so that it loads with the code the training
    process ran, even when the working tree changes during the loop."""
    from bytelm.checkpoint import find_resumable, load_model, load_trainer_state

    try:
        load_model(run)
        load_model(run / ALIAS)
        found = find_resumable(run)
        if found is None:
            return "find_resumable: nothing to resume"
        load_trainer_state(found[0])
    except Exception as e:  # noqa: BLE001 - any failure is what this loop reports
        return f"{type(e).__name__}: {e}"
    return ""


def listing(run: Path) -> str:
    out = []
    for p in sorted(run.iterdir()):
        if p.is_symlink():
            out.append(f"{p.name} -> {os.readlink(p)}")
        elif p.is_dir():
            out.append(f"{p.name}/[{' '.join(sorted(q.name for q in p.iterdir()))}]")
        else:
            out.append(p.name)
    return "; ".join(out) + f"; latest={read_pointer(run)}"


class Proc:
    """One `bytelm train --resume` in its own session, stdout and stderr to files."""

    def __init__(self, cmd: list[str], log: Path):
        self.log, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        self.t0 = time.perf_counter()
        with open(self.log, "w") as out, open(self.err, "w") as err:
            self.p = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)

    def resume_line(self, timeout: float) -> tuple[int | None, str]:
        """(resumed step, 0 for a fresh start, None on failure; the line or the error)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for line in self.log.read_text().splitlines():
                m = RESUME.search(line)
                if m:
                    return int(m[2]), line
                if line.startswith(FRESH):
                    return 0, line
            if self.p.poll() is not None:
                tail = self.err.read_text().strip().splitlines()[-3:]
                return None, f"exited {self.p.returncode} before a resume line: {' | '.join(tail)}"
            time.sleep(0.01)
        return None, f"no resume line within {timeout:.0f} s"

    def kill(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=50, help="how many kills")
    ap.add_argument("--max-wait", type=float, default=2.0, help="kill U(0, this) s after a save")
    ap.add_argument("--budget", type=float, default=0, help="stop killing after this many s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (run, logs)")
    ap.add_argument("--check", metavar="RUN_DIR", help=argparse.SUPPRESS)  # (a), one run dir
    args = ap.parse_args(argv)
    if args.check:
        err = check_loadable(Path(args.check))
        print(err or "OK")
        return 1 if err else 0

    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="bytelm-kill-loop-"))
    corpus, run, cache = make_corpus(root), root / "run", root / "cache"
    cmd = [sys.executable, "-m", "bytelm.cli", "train", "--preset", "tiny", "--resume"]
    cmd += ["--data.sources", str(corpus / "*.txt"), "--data.split", "tail"]
    cmd += ["--data.cache_dir", str(cache), "--train.out_dir", str(run)]
    cmd += ["--train.save_every", "1", "--train.eval_every", "1000"]
    cmd += ["--train.steps", "1000000", "--train.progress", "false"]
    print("kill loop:", " ".join(cmd), flush=True)

    rows, failures = [], []
    t_start = time.perf_counter()
    proc = Proc(cmd, root / "start-00")
    step, line = proc.resume_line(120)
    if step != 0:
        failures.append(f"first start: expected a fresh start, got {line!r}")
    for i in range(args.runs):
        t_iter = time.perf_counter()
        if step is None:
            break
        startup = time.perf_counter() - proc.t0
        # wait for a save of this process's own: the pointer names a step past the resumed one
        deadline = time.perf_counter() + 120
        while newest_step(read_pointer(run)) <= step and proc.p.poll() is None:
            if time.perf_counter() > deadline:
                break
            time.sleep(0.005)
        if proc.p.poll() is not None or time.perf_counter() > deadline:
            failures.append(f"run {i}: no save of its own (exit {proc.p.poll()})")
            proc.kill()
            break
        wait = rng.uniform(0.0, args.max_wait)
        time.sleep(wait)
        before = newest_step(read_pointer(run))
        proc.kill()
        after = newest_step(read_pointer(run))
        phase = classify(run)
        on_disk = listing(run)
        # (a) on a snapshot of the run directory as the kill left it, checked in a fresh
        # interpreter alongside the next start, whose resume line is verdict (b)
        snap = root / f"snap-{i:02d}"
        shutil.copytree(run, snap, symlinks=True)
        check = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.kill_loop", "--check", str(snap)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proc = Proc(cmd, root / f"start-{i + 1:02d}")
        step, line = proc.resume_line(120)
        report = check.communicate()[0].strip().splitlines()
        err = "" if report[-1:] == ["OK"] else " | ".join(report[-3:]) or "no output"
        if not err:
            shutil.rmtree(snap, ignore_errors=True)
        ok = step is not None and step >= before and step == after
        if err:
            failures.append(f"run {i}: unloadable after the kill: {err}; on disk: {on_disk}")
        if not ok:
            failures.append(
                f"run {i}: committed before/after kill {before}/{after}, next start: {line!r}; "
                f"on disk at the kill: {on_disk}"
            )
        rows.append(
            {
                "run": i,
                "wait_s": round(wait, 3),
                "committed_before": before,
                "committed_after": after,
                "resumed_step": step if step is not None else "FAIL",
                "resumed_ok": "yes" if ok else "NO",
                "loadable": "yes" if not err else "NO",
                "phase_at_kill": phase,
                "startup_s": round(startup, 2),
                "iter_s": round(time.perf_counter() - t_iter, 2),
            }
        )
        print(
            f"[{i}] wait {wait:.2f}s committed {before}->{after} resumed {step} "
            f"{'ok' if ok else 'FAIL'} {'loadable' if not err else 'UNLOADABLE'} ({phase})",
            flush=True,
        )
        if args.budget and time.perf_counter() - t_start > args.budget:
            break
    proc.kill()
    total = time.perf_counter() - t_start

    n = len(rows)
    resumed = sum(r["resumed_ok"] == "yes" for r in rows)
    unloadable = sum(r["loadable"] == "NO" for r in rows)
    phases = Counter(r["phase_at_kill"] for r in rows)
    mid_save = n - phases.get("between saves", 0)
    between_commits = sum(r["committed_after"] > r["committed_before"] for r in rows)
    summary = (
        f"Summary: {n} runs killed (SIGKILL to the process group); {resumed}/{n} next starts "
        f"resumed from the last committed step (the pointer's newest after the kill, which is "
        f">= the one read before it); {unloadable} unloadable; {mid_save} kills mid-save "
        f"(anything but 'between saves'); in {between_commits} a save committed between the "
        f"pointer read and the kill. No start after the first save restarted from step 0: "
        f"{'true' if all(r['resumed_step'] not in (0, 'FAIL') for r in rows) else 'FALSE'}.\n\n"
        "Kill moment (from what the dead process left in the run directory): "
        + ", ".join(f"{k}: {v}" for k, v in phases.most_common())
        + f".\n\nSeconds per iteration: {total / max(n, 1):.2f} on average ({total:.0f} s in all, "
        "a start of `bytelm train` included); startup_s is from Popen to the resume line "
        "(for run 0, the fresh start). Kills wait U(0, "
        f"{args.max_wait}) s after the process's own first save; the tiny preset saves every "
        "step.\n\nCommand: `python -m benchmarks.kill_loop --runs "
        f"{args.runs}" + (f" --budget {args.budget:g}" if args.budget else "") + "`"
    )
    if failures:
        summary += "\n\nFailures:\n\n" + "\n".join(f"- {f}" for f in failures)
    print(summary)
    if rows:
        path = write_results("kill_loop", rows, "Kill loop: SIGKILL during training", summary)
        print("wrote", path)
    if args.keep_tmp or failures:
        print("kept", root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
