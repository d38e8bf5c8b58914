"""Benchmark `omop-behrt demo` end to end: wall time per phase and in total, on idle cores and under load.

Each run is a fresh subprocess into a fresh output folder, pinned to ``--cores`` CPUs (taskset). ``--load N``
starts N busy background processes on the same cores for the loaded run (load average ~N). With ``--before
REV`` the same runs are made with the demo as it was at git revision REV (a temporary git worktree, imported
through PYTHONPATH) and the ratio is reported. Phases come from the demo's own stamps (``[  12.3 s] [4/7]
pretrain ...``). Targets (issue 11): <= 120 s idle on 2 cores, <= 300 s at load average 4. Prints a table and
writes bench/out/demo.json (demo<tag>.json with --tag).

    python bench/demo.py [--cores 2] [--load 4] [--before 388b5c7] [--runs idle,loaded] [--tag _x]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[\s*([\d.]+) s\] \[(\d)/7\] (\w+)", re.M)
TARGETS = {"idle": 120.0, "loaded": 300.0}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def worktree(rev: str, where: Path) -> Path:
    """A detached worktree of ``rev``, importable from PYTHONPATH (old layouts: symlinked data folders)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True,
                   capture_output=True)
    for name in ("adapters", "sql", "vocab_maps"):          # the package finds these next to its modules
        link = where / "omop_behrt" / name
        if (where / name).exists() and not link.exists():
            link.symlink_to(Path("..") / name)
    return where


def phases(stdout: str, total: float) -> dict[str, float]:
    """Seconds per demo phase from its stamps (each phase ends where the next starts; the last at ``total``)."""
    marks = [(float(t), name) for t, _, name in STAMP.findall(stdout)]
    done = re.search(r"demo finished in ([\d.]+) s", stdout)
    end = float(done.group(1)) if done else total
    return {name: round((marks[i + 1][0] if i + 1 < len(marks) else end) - t, 1) for i, (t, name) in enumerate(marks)}


def busy(n: int, cores: str) -> list[subprocess.Popen]:
    """``n`` processes that spin forever on ``cores`` (the load)."""
    return [subprocess.Popen(["taskset", "-c", cores, sys.executable, "-c", "while True: pass"])
            for _ in range(n)]


def run_demo(label: str, pythonpath: str | None, cores: str, load: int, work: Path) -> dict:
    """One demo run in a fresh folder; wall time, phases, the load before and after."""
    out = work / f"demo-{label}-{'loaded' if load else 'idle'}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    spinners = busy(load, cores)
    try:
        if load:
            time.sleep(20)                                  # let the load average climb towards `load`
        load_before = os.getloadavg()
        t = time.perf_counter()
        p = subprocess.run(["taskset", "-c", cores, sys.executable, "-m", "omop_behrt", "demo", "--out", str(out)],
                           env=env, cwd=work, capture_output=True, text=True)
        wall = time.perf_counter() - t
        load_after = os.getloadavg()
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    if p.returncode != 0:
        raise RuntimeError(f"demo ({label}, load {load}) failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    auroc = dict(re.findall(r"^(\S+(?: \([^)]*\))?)\s+([\d.]+) \([\d.]+-[\d.]+\)", p.stdout, re.M))
    return {"code": label, "load": load, "wall_s": round(wall, 1), "phases_s": phases(p.stdout, wall),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
            "auroc": {k: float(v) for k, v in auroc.items()},
            "progress_updates": p.stderr.count("\n") + p.stderr.count("\r")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2, help="run on CPUs 0..cores-1 (default 2)")
    ap.add_argument("--load", type=int, default=4, help="busy background processes for the loaded run (default 4)")
    ap.add_argument("--before", help="also run the demo at this git revision (e.g. the commit before the change)")
    ap.add_argument("--runs", default="idle,loaded", help="which of idle, loaded (default both)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name (demo<tag>.json)")
    args = ap.parse_args()
    cores = f"0-{args.cores - 1}"
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="omop-behrt-bench-demo-"))
    codes: list[tuple[str, str | None]] = [("now", None)]
    rows = []
    try:
        if args.before:
            codes.insert(0, (f"before {args.before}", str(worktree(args.before, work / "before"))))
        for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
            for label, path in codes:
                row = run_demo(label.split()[0], path, cores, args.load if run == "loaded" else 0, work)
                row["code"], row["run"] = label, run
                rows.append(row)
                print(f"  {label:<18} {run:<7} {row['wall_s']:>7.1f} s  {row['phases_s']}", file=sys.stderr,
                      flush=True)
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "before")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    names = list(dict.fromkeys(k for r in rows for k in r["phases_s"]))
    print(f"{'code':<18} {'run':<7} {'load 1m':>7} " + " ".join(f"{n[:9]:>9}" for n in names) + f" {'total':>8}")
    for r in rows:
        print(f"{r['code']:<18} {r['run']:<7} {r['load_before'][0]:>7.2f} "
              + " ".join(f"{r['phases_s'].get(n, float('nan')):>9.1f}" for n in names) + f" {r['wall_s']:>8.1f}")
    for run in ("idle", "loaded"):
        now = [r for r in rows if r["run"] == run and r["code"] == "now"]
        old = [r for r in rows if r["run"] == run and r["code"] != "now"]
        if now:
            verdict = "meets" if now[0]["wall_s"] <= TARGETS[run] else "MISSES"
            ratio = f", {old[0]['wall_s'] / now[0]['wall_s']:.1f}x faster than before" if old else ""
            print(f"{run}: {now[0]['wall_s']:.1f} s, {verdict} the {TARGETS[run]:.0f} s target{ratio}")
    machine = {"nproc": os.cpu_count(), "cores_used": args.cores, "cpu": cpu_model(), "platform": platform.platform(),
               "python": platform.python_version(), "load_before_bench": [round(x, 2) for x in os.getloadavg()]}
    (args.out / f"demo{args.tag}.json").write_text(json.dumps({"machine": machine, "targets_s": TARGETS,
                                                    "before": args.before, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
