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
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${MUTATION_WORK:-/tmp/omop-behrt-mutation}
OUT=$ROOT/bench/results/mutation.json
if [ $# -eq 0 ]; then set -- $(cd "$ROOT/bench/mutation" && ls *.cfg | sed 's/\.cfg$//'); fi
"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut missing: $PY -m pip install mutmut==3.8.1" >&2; exit 2; }
for module in "$@"; do
  cfg=$ROOT/bench/mutation/$module.cfg
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
  # shellcheck disable=SC2086   # the patterns are words on purpose
  (cd "$w" && timeout "${MUTATION_TIMEOUT:-3600}" "$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" \
     ${MUTATION_MUTANTS:-}) || \
    echo "mutmut run for $module ended with $? (a partial score follows)" >&2
  MUTANTS="${MUTATION_MUTANTS:-all}" \
    "$PY" "$ROOT/bench/mutation/score.py" "$module" "$w" "$cfg" "$OUT" "$(( $(date +%s) - start ))"
done
