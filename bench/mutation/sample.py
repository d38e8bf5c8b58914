"""Print a uniform random sample of a mutmut workspace's mutant names (for ``MUTATION_SAMPLE=N bench/mutation.sh``).

Run inside the workspace after mutmut generated its mutants: the names are the keys of ``mutants/**/*.meta``.
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


def main() -> int:
    n, seed = int(sys.argv[1]), int(sys.argv[2])
    names = mutant_names(Path.cwd())
    if not names:
        print("sample.py: no mutants generated (did mutmut's first run fail?)", file=sys.stderr)
        return 2
    print(" ".join(random.Random(seed).sample(names, min(n, len(names)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
