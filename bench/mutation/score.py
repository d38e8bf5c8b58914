"""Score of one mutmut run: mutants killed / checked, per status, and the survivors' names -> bench/results JSON."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def score(work: Path) -> dict:
    """Read the ``.meta`` files mutmut wrote under ``work/mutants`` (exit code of the tests per mutant)."""
    status: dict[str, str] = {}
    for meta in sorted((work / "mutants").rglob("*.meta")):
        for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
            status[name] = status_by_exit_code[code]
    counts = Counter(status.values())
    killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
    checked = killed + counts["survived"] + counts["suspicious"]
    reached = checked + counts["no tests"]
    return {"mutants": len(status), "checked": checked, "killed": killed,
            "score": round(killed / checked, 4) if checked else None,
            "score_with_untested": round(killed / reached, 4) if reached else None,
            "by_status": dict(sorted(counts.items())),
            "survived": sorted(k for k, v in status.items() if v == "survived"),
            "no_tests": sorted(k for k, v in status.items() if v == "no tests")}


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion: the whole module's score estimated from a random sample of mutants."""
    if n == 0:
        return (0.0, 1.0)
    p = killed / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (round((centre - half) / (1 + z * z / n), 4), round((centre + half) / (1 + z * z / n), 4))


def main() -> int:
    module, work, cfg, out, seconds = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
    row = score(work)
    row["config"] = cfg.read_text().split("[mutmut]", 1)[1].strip()
    row["mutants_run"] = os.environ.get("MUTANTS", "all")       # the name patterns given to mutmut run
    row["seconds"] = float(seconds)
    row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    sampled = os.environ.get("SAMPLED")
    if sampled:     # a random sample of the whole module: its score estimates the module's, with an interval
        row["sample"] = int(sampled)
        row["score_95ci"] = wilson(row["killed"], row["checked"])
        module = f"{module} (sample)"
    # two modules scored at once both land: the read-modify-write of the shared JSON is done under a lock
    from omop_behrt.events import write_json
    from omop_behrt.lock import exclusive_lock
    with exclusive_lock(out.with_name(out.name + ".lock"), 600, f"{out}: another score.py holds its lock"):
        res = json.loads(out.read_text()) if out.exists() else {"tool": "mutmut 3.8.1", "modules": {}}
        explained = res["modules"].get(module, {}).get("survivors_explained", {})
        kept = {k: v for k, v in explained.items() if k in row["survived"]}    # reasons of mutants still alive
        if kept:
            row["survivors_explained"] = kept
        res["modules"][module] = row
        write_json(res, out)
    print(f"{module}: {row['killed']}/{row['checked']} killed ({row['score']}; {row['score_with_untested']} counting "
          f"the {len(row['no_tests'])} mutants no selected test reaches), {len(row['survived'])} survived"
          f"{'; 95% interval ' + str(row['score_95ci']) if sampled else ''} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
