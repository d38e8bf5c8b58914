#!/usr/bin/env bash
# Check again, after new tests, the mutants a sampled run left alive (survived, or reached by no test):
#
#   bench/mutation/rerun.sh tokenizer          # in the workspace bench/mutation.sh left (MUTATION_WORK/<name>)
#
# The workspace's tests and config are replaced by the repository's, the source is left as it was (the same mutants),
# the map of tests is widened again (bench/mutation/sample.py), and the module's "(sample)" score in
# bench/results/mutation.json is written anew over the same sample: only the mutants left alive (or whose worker
# crashed) are run again. Keep the config the sample ran with: mutmut forgets every result when its config changes
# (a rerun then finds nothing alive), and a changed source means new mutants: run the sample again instead.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
module=$1
w=${MUTATION_WORK:-/tmp/omop-behrt-mutation}/$module
[ -d "$w/mutants" ] || { echo "no workspace $w: run MUTATION_SAMPLE=N bench/mutation.sh $module first" >&2; exit 2; }
cfg=$ROOT/bench/mutation/sample/$module.cfg
[ -f "$cfg" ] || cfg=$ROOT/bench/mutation/$module.cfg
rm -rf "$w/tests" "$w/mutants/tests" && cp -r "$ROOT/tests" "$w/tests" && cp -r "$ROOT/tests" "$w/mutants/tests"
cp "$cfg" "$w/setup.cfg" && cp "$cfg" "$w/mutants/setup.cfg"
find "$w" -name __pycache__ -prune -exec rm -rf {} +
# mutmut maps the new tests (a filter that matches no mutant stops it there), then the map is widened
(cd "$w" && "$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" 'no-such-mutant' >/dev/null 2>&1) || true
names=$(cd "$w" && "$PY" "$ROOT/bench/mutation/sample.py" --alive)
[ -n "$names" ] || { echo "$module: no mutant left alive"; exit 0; }
start=$(date +%s)
# shellcheck disable=SC2086
(cd "$w" && "$PY" -m mutmut run --max-children "${MUTATION_JOBS:-2}" $names) || echo "mutmut ended with $?" >&2
prev=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['modules'][sys.argv[2] + ' (sample)']['sample'])" \
       "$ROOT/bench/results/mutation.json" "$module")
MUTANTS="sample of $prev, rerun of the mutants left alive after new tests" SAMPLED=$prev \
  "$PY" "$ROOT/bench/mutation/score.py" "$module" "$w" "$cfg" "$ROOT/bench/results/mutation.json" \
  "$(( $(date +%s) - start ))"
