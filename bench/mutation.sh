#!/usr/bin/env bash
# Mutation testing of the core modules (issue 17) with mutmut 3.8.1: slow, so not in CI.
#
#   pip install mutmut==3.8.1          # into the project's .venv; not a project dependency
#   bench/mutation.sh events choices   # the modules with a bench/mutation/<name>.cfg (default: all of them)
#
# Each module runs alone, in a workspace outside the repository (MUTATION_WORK, default /tmp/omop-behrt-mutation),
# holding a plain-layout copy of the package (adapters/ and sql/ inside omop_behrt/, so every import resolves to
# the mutated copy), the tests, and bench/mutation/<name>.cfg as its setup.cfg: the mutants of that one module
# only, checked with only its fast tests. The score (killed / checked, survivors by name) of each module goes to
# bench/results/mutation.json. MUTATION_JOBS (default 2) tests in parallel; MUTATION_TIMEOUT (s) per module;
# MUTATION_MUTANTS: mutmut's name patterns to run only some mutants, e.g. on a busy machine
#   MUTATION_MUTANTS='omop_behrt.events.x_validate* omop_behrt.events.x_conform*' bench/mutation.sh events
# MUTATION_SAMPLE=N: a uniform random sample of N of the module's mutants (MUTATION_SEED, default 17), scored as an
# estimate of the whole module's score with its 95% Wilson interval (mutant sampling: the whole set of a module whose
# mutants each need an extraction or a model would take hours):
#   MUTATION_SAMPLE=80 bench/mutation.sh omop
# A module's sample runs with bench/mutation/sample/<name>.cfg where one exists: the tests that reach the functions its
# default config leaves out (the extraction itself, a model's embedding).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${MUTATION_WORK:-/tmp/omop-behrt-mutation}
OUT=$ROOT/bench/results/mutation.json
if [ $# -eq 0 ]; then set -- $(cd "$ROOT/bench/mutation" && ls *.cfg | sed 's/\.cfg$//'); fi
"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut missing: $PY -m pip install mutmut==3.8.1" >&2; exit 2; }
for module in "$@"; do
  cfg=$ROOT/bench/mutation/$module.cfg
  # a sample covers the whole module, so it may need more of the tests (bench/mutation/sample/<name>.cfg)
  if [ -n "${MUTATION_SAMPLE:-}" ] && [ -f "$ROOT/bench/mutation/sample/$module.cfg" ]; then
    cfg=$ROOT/bench/mutation/sample/$module.cfg
  fi
  [ -f "$cfg" ] || { echo "no $cfg" >&2; exit 2; }
  w=$WORK/$module
  rm -rf "$w" && mkdir -p "$w"
  cp -r "$ROOT/omop_behrt" "$w/omop_behrt"
  cp -r "$ROOT/adapters" "$w/omop_behrt/adapters"
  cp -r "$ROOT/sql" "$w/omop_behrt/sql"
  [ -d "$ROOT/vocab_maps" ] && cp -r "$ROOT/vocab_maps" "$w/omop_behrt/vocab_maps"
  cp -r "$ROOT/tests" "$w/tests"
  cp "$ROOT/pyproject.toml" "$w/pyproject.toml"          # pytest's settings; it holds no [tool.mutmut]
  cp "$cfg" "$w/setup.cfg"
  find "$w" -name __pycache__ -prune -exec rm -rf {} +
  start=$(date +%s)
  patterns=${MUTATION_MUTANTS:-}
  if [ -n "${MUTATION_SAMPLE:-}" ]; then
    # a first run only generates the mutants and maps tests to functions (its filter matches no mutant, so it
    # stops there); the sample is drawn from the names it generated, and the second run reuses that map
    (cd "$w" && "$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" 'no-such-mutant' >/dev/null 2>&1) || true
    patterns=$(cd "$w" && "$PY" "$ROOT/bench/mutation/sample.py" "${MUTATION_SAMPLE}" "${MUTATION_SEED:-17}")
    patterns_shown="sample of ${MUTATION_SAMPLE}, seed ${MUTATION_SEED:-17}"
  fi
  # shellcheck disable=SC2086   # the patterns are words on purpose
  (cd "$w" && timeout "${MUTATION_TIMEOUT:-3600}" "$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" \
     $patterns) || \
    echo "mutmut run for $module ended with $? (a partial score follows)" >&2
  MUTANTS="${patterns_shown:-${MUTATION_MUTANTS:-all}}" SAMPLED="${MUTATION_SAMPLE:-}" \
    "$PY" "$ROOT/bench/mutation/score.py" "$module" "$w" "$cfg" "$OUT" "$(( $(date +%s) - start ))"
done
