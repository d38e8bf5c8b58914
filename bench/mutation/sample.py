"""Print a uniform random sample of a mutmut workspace's mutant names (for ``MUTATION_SAMPLE=N bench/mutation.sh``),
or with ``--alive`` the mutants its last run left alive (for bench/mutation/rerun.sh).

Run inside the workspace after mutmut generated its mutants: the names are the keys of ``mutants/**/*.meta``.
It also widens mutmut's map of tests: each sampled mutant is checked by every selected test.
mutmut ties a test to the functions called while that test runs, so a test that only reads what a module-scoped
fixture extracted (and calls nothing of the module itself) would never run against a mutant.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def mutant_names(work: Path) -> list[str]:
    """Every mutant mutmut generated in ``work``, sorted (so a seed always draws the same sample)."""
    names: list[str] = []
    for meta in (work / "mutants").rglob("*.meta"):
        names += json.loads(meta.read_text()).get("exit_code_by_key", {})
    return sorted(names)


def widen_test_map(work: Path) -> int:
    """Give every function of the mutated module every selected test (those mutmut timed); returns how many."""
    path = work / "mutants" / "mutmut-stats.json"
    stats = json.loads(path.read_text())
    every = sorted(stats["duration_by_test"])
    functions = set(stats["tests_by_mangled_function_name"]) | {
        name.partition("__mutmut_")[0] for name in mutant_names(work)}        # mutmut's own mangling
    stats["tests_by_mangled_function_name"] = {k: every for k in sorted(functions)}
    path.write_text(json.dumps(stats))
    return len(every)


def alive(work: Path) -> list[str]:
    """The mutants of the last run that survived, that no test reached, or whose worker crashed (a fork of a process
    that had run torch: no verdict); rerun.sh checks them again."""
    from mutmut.stats import status_by_exit_code
    names: list[str] = []
    for meta in (work / "mutants").rglob("*.meta"):
        names += [k for k, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items()
                  if code is not None and status_by_exit_code[code] in ("survived", "no tests", "segfault")]
    return sorted(names)


def main() -> int:
    if sys.argv[1:] == ["--alive"]:
        widen_test_map(Path.cwd())
        print(" ".join(alive(Path.cwd())))
        return 0
    n, seed = int(sys.argv[1]), int(sys.argv[2])
    widen_test_map(Path.cwd())
    names = mutant_names(Path.cwd())
    if not names:
        print("sample.py: no mutants generated (did mutmut's first run fail?)", file=sys.stderr)
        return 2
    print(" ".join(random.Random(seed).sample(names, min(n, len(names)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
