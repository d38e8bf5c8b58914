"""bench/peers.py's counts stage: count features at index dates, omop-behrt's CountFeatures against MEDS-Tab 0.2.0.

Run through ``python bench/peers.py --stages counts`` (see its docstring); the data, the children and the
cell-by-cell comparison (with counts recomputed in DuckDB, and MEDS-Tab's behaviour modelled) live here.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from peers import build_omop_folder, run_child

CHILD_COUNTS_OURS = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq, scipy.sparse as sp
from omop_behrt.evaluation.baselines import CountFeatures
data, labels, out = sys.argv[1:4]
codes = pq.read_table(data, columns=["subject_id", "time", "code"])
ix = pq.read_table(labels)
index = pa.table({"subject_id": ix["subject_id"], "index_date": ix["prediction_time"]})
cf = CountFeatures(windows=(365, None), min_rows=1)
X = cf.fit_transform((codes, index))
sp.save_npz(out + "/ours.npz", X.tocsr())
open(out + "/ours_features.json", "w").write(json.dumps(cf.features_))
"""
#: MEDS-Tab 0.2.0's own steps, as its README runs them: describe the codes, then tabularize the time series at
#: the label times only (``input_label_dir``): code/count over 365 days and all history, every code kept
CHILD_MEDS_TAB_DESCRIBE = """
import sys
from MEDS_tabular_automl.scripts.describe_codes import main
data, labels, out = sys.argv[1:4]
sys.argv = ["meds-tab-describe", "input_dir=" + data, "output_dir=" + out]
main()
"""
CHILD_MEDS_TAB_TABULARIZE = """
import sys
from MEDS_tabular_automl.scripts.tabularize_time_series import main
data, labels, out = sys.argv[1:4]
sys.argv = ["meds-tab-tabularize-time-series", "input_dir=" + data, "output_dir=" + out, "input_label_dir=" + labels,
            "tabularization.aggs=[code/count]", "tabularization.window_sizes=[365d,full]",
            "tabularization.min_code_inclusion_count=1", "do_overwrite=True"]
main()
"""
#: (untimed) MEDS-Tab's matrices as (row, window, code, count) with its own helpers for the column names
CHILD_MEDS_TAB_DUMP = """
import sys
import numpy as np, polars as pl
from pathlib import Path
from MEDS_tabular_automl.describe_codes import get_feature_columns
from MEDS_tabular_automl.utils import get_feature_names, load_matrix
data, labels, out = sys.argv[1:4]
names = get_feature_names("code/count", get_feature_columns(out + "/metadata/codes.parquet"))
parts = []
for w in ("365d", "full"):
    m = load_matrix(next(Path(out, "tabularize").rglob(w + "/code/count.npz"))).tocoo()
    parts.append(pl.DataFrame({"row": m.row.astype(np.int64), "win": w,
                               "code": [names[c][: -len("/code")] for c in m.col], "count": m.data.astype(np.int64)}))
pl.concat(parts).write_parquet(out + "/meds_tab_cells.parquet")
"""


def build_meds_tab_input(copies: int, work: Path) -> dict:
    """Eunomia x ``copies`` -> MEDS by our extract (untimed) -> ``data/train/0.parquet`` (timed rows only, the
    MEDS core columns, sorted) and ``labels/train/0.parquet``: one index time per subject, noon of the day halfway
    through its record (noon: no event shares the instant, so "before" means the same for both tools)."""
    from omop_behrt.adapters import omop
    build_omop_folder(copies, work / "omop")
    omop.extract(str(work / "omop"), None, meds_out=str(work / "meds"), progress=False)
    (work / "data" / "train").mkdir(parents=True)
    (work / "labels" / "train").mkdir(parents=True)
    con = duckdb.connect()
    files = [str(f) for f in sorted((work / "meds" / "data").rglob("*.parquet"))]
    con.execute(f"CREATE VIEW m AS SELECT subject_id, time, code, numeric_value FROM read_parquet({files!r}) "
                "WHERE time IS NOT NULL")
    con.execute(f"COPY (SELECT * FROM m ORDER BY subject_id, time, code) TO '{work / 'data/train/0.parquet'}' "
                "(FORMAT PARQUET)")
    con.execute(f"""COPY (SELECT subject_id, CAST(date_trunc('day', min(time) + (max(time) - min(time)) / 2)
                          + INTERVAL 12 HOUR AS TIMESTAMP) AS prediction_time, hash(subject_id) % 2 = 0 AS boolean_value
                          FROM m GROUP BY subject_id HAVING max(time) > min(time) ORDER BY subject_id)
                    TO '{work / 'labels/train/0.parquet'}' (FORMAT PARQUET)""")
    rows, subjects = con.execute("SELECT COUNT(*), COUNT(DISTINCT subject_id) FROM m").fetchone()
    return {"events": rows, "subjects": subjects,
            "index_rows": pq.ParquetFile(work / "labels/train/0.parquet").metadata.num_rows}


def compare_counts(work: Path) -> dict:
    """Counts recomputed here (DuckDB, events strictly before the index time; 365d: not before index - 365 days)
    against ours (presence) and MEDS-Tab (counts), cell by cell; a few examples of each kind of difference."""
    import numpy as np
    import scipy.sparse as sp
    con = duckdb.connect()
    con.execute(f"CREATE VIEW e AS SELECT * FROM '{work / 'data/train/0.parquet'}'")
    con.execute("CREATE TABLE ix AS SELECT file_row_number AS row, * "
                f"FROM read_parquet('{work / 'labels/train/0.parquet'}', file_row_number=true)")
    con.execute("""CREATE TABLE truth AS
        SELECT ix.row, w.win, e.code, COUNT(*) AS n FROM ix JOIN e USING (subject_id),
               (VALUES ('365d', 365), ('full', NULL)) w(win, days)
        WHERE e.time < ix.prediction_time
          AND (w.days IS NULL OR e.time >= ix.prediction_time - INTERVAL 365 DAY) GROUP BY ALL""")
    X = sp.load_npz(work / "ours" / "ours.npz").tocoo()
    feats = json.loads((work / "ours" / "ours_features.json").read_text())
    tag = np.array([f.split(":", 1)[0] for f in feats])
    code = np.array([f.split(":", 1)[1] for f in feats], dtype=object)
    con.register("ours_raw", {"row": X.row.astype(np.int64), "win": np.where(tag[X.col] == "all", "full", "365d"),
                              "code": code[X.col], "v": X.data})
    con.execute(f"CREATE VIEW tab AS SELECT * FROM '{work / 'meds_tab' / 'meds_tab_cells.parquet'}'")
    out = {"truth_cells": con.execute("SELECT COUNT(*) FROM truth").fetchone()[0]}
    for name, view, val in (("omop-behrt", "ours_raw", "v"), ("meds-tab", "tab", "count")):
        q = f"""SELECT coalesce(t.row, o.row) row, coalesce(t.win, o.win) win, coalesce(t.code, o.code) code,
                       t.n truth, o.{val} tool FROM truth t FULL JOIN {view} o USING (row, win, code)
                WHERE t.n IS NULL OR o.row IS NULL OR ({'FALSE' if val == 'v' else 'o.count <> t.n'})"""
        diff = con.execute(f"SELECT win, CASE WHEN truth IS NULL THEN 'extra' WHEN tool IS NULL THEN 'missing' "
                           f"ELSE 'count differs' END kind, COUNT(*) FROM ({q}) GROUP BY ALL ORDER BY ALL").fetchall()
        examples = con.execute(f"SELECT * FROM ({q}) ORDER BY row, win, code LIMIT 5").fetchall()
        out[name] = {"cells": con.execute(f"SELECT COUNT(*) FROM {view}").fetchone()[0],
                     "differences": [list(d) for d in diff], "examples": [list(map(str, x)) for x in examples]}
    # MEDS-Tab's behaviour, modelled: the last code (in code order) of each (subject, time) group is not counted
    # (so a lone event never is), and windows end at the last event time at or before the index time (as-of join)
    con.execute("""CREATE TABLE modelled AS
        WITH ev AS (SELECT *, row_number() OVER (PARTITION BY subject_id, time ORDER BY code) rn,
                           COUNT(*) OVER (PARTITION BY subject_id, time) cnt FROM e),
             last AS (SELECT ix.row, ix.subject_id, max(e.time) t FROM ix JOIN e USING (subject_id)
                      WHERE e.time <= ix.prediction_time GROUP BY ALL)
        SELECT last.row, w.win, ev.code, COUNT(*) n FROM last JOIN ev USING (subject_id),
               (VALUES ('365d', 365), ('full', NULL)) w(win, days)
        WHERE ev.rn < ev.cnt AND ev.time <= last.t AND (w.days IS NULL OR ev.time > last.t - INTERVAL 365 DAY)
        GROUP BY ALL""")
    q = ("SELECT coalesce(x.win, t.win) win, coalesce(x.row, t.row) row, coalesce(x.code, t.code) code, x.n, "
         "t.count FROM modelled x FULL JOIN tab t USING (row, win, code) "
         "WHERE x.n IS NULL OR t.count IS NULL OR x.n <> t.count")
    out["meds-tab"]["modelled_cells"] = con.execute("SELECT COUNT(*) FROM modelled").fetchone()[0]
    out["meds-tab"]["differences_from_model"] = [list(d) for d in con.execute(
        f"SELECT win, COUNT(*) FROM ({q}) GROUP BY ALL ORDER BY ALL").fetchall()]
    out["meds-tab"]["model_examples"] = [list(map(str, x)) for x in con.execute(
        f"SELECT * FROM ({q}) ORDER BY row, win, code LIMIT 5").fetchall()]
    return out


def counts_stage(args) -> dict | None:
    """Count features at index dates: omop-behrt's CountFeatures against MEDS-Tab 0.2.0 (describe + tabularize
    at the label times), Eunomia x1 and x``--copies``, alternating, cells compared with counts recomputed here."""
    peer_python = args.meds_tab_venv / "bin" / "python"
    if not peer_python.exists():
        print(f"no MEDS-Tab environment at {args.meds_tab_venv}: python3 -m venv {args.meds_tab_venv} && "
              f"{args.meds_tab_venv}/bin/pip install meds-tab==0.2.0", file=sys.stderr)
        return None
    result = {"stage": "counts", "rounds": args.rounds, "sizes": {}}
    for copies in sorted({1, args.copies}):
        work = Path(tempfile.mkdtemp(prefix="bench-peers-counts-"))
        try:
            size = build_meds_tab_input(copies, work)
            data, labels = str(work / "data"), str(work / "labels")
            runs, loads = {"omop-behrt": [], "meds-tab": []}, []
            for r in range(args.rounds):
                for name in (("omop-behrt", "meds-tab") if r % 2 == 0 else ("meds-tab", "omop-behrt")):
                    dst = work / ("ours" if name == "omop-behrt" else "meds_tab")
                    shutil.rmtree(dst, ignore_errors=True)
                    dst.mkdir()
                    loads.append(os.getloadavg()[0])
                    if name == "omop-behrt":
                        res = run_child(sys.executable, CHILD_COUNTS_OURS, data, labels, str(dst))
                    else:
                        steps = [run_child(str(peer_python), c, data, labels, str(dst))
                                 for c in (CHILD_MEDS_TAB_DESCRIBE, CHILD_MEDS_TAB_TABULARIZE)]
                        res = {"seconds": round(sum(x["seconds"] for x in steps), 2),
                               "cpu_s": round(sum(x["cpu_s"] for x in steps), 2),
                               "peak_rss_mb": max(x["peak_rss_mb"] for x in steps),
                               "describe_s": steps[0]["seconds"], "tabularize_s": steps[1]["seconds"]}
                    res["load"] = round(loads[-1], 2)
                    runs[name].append(res)
                    print(f"x{copies} round {r + 1} {name:<11} {res['seconds']:>7.2f} s  cpu {res['cpu_s']:>6.2f} s  "
                          f"{res['peak_rss_mb']:>5} MB  load {loads[-1]:.2f}", flush=True)
            run_child(str(peer_python), CHILD_MEDS_TAB_DUMP, data, labels, str(work / "meds_tab"))
            cmp = compare_counts(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        med = {n: statistics.median(x["seconds"] for x in v) for n, v in runs.items()}
        cpu = {n: statistics.median(x["cpu_s"] for x in v) for n, v in runs.items()}
        rss = {n: statistics.median(x["peak_rss_mb"] for x in v) for n, v in runs.items()}
        result["sizes"][f"x{copies}"] = {
            **size, "copies": copies, "median_s": med, "median_cpu_s": cpu, "median_peak_rss_mb": rss, "runs": runs,
            "min_max_s": {n: [min(x["seconds"] for x in v), max(x["seconds"] for x in v)] for n, v in runs.items()},
            "ratio_peer_over_ours": round(med["meds-tab"] / med["omop-behrt"], 2),
            "cpu_ratio_peer_over_ours": round(cpu["meds-tab"] / cpu["omop-behrt"], 2), "target_ratio": 4.0,
            "compare": cmp, "load_average": [round(min(loads), 2), round(max(loads), 2)]}
    print(f"\n{'stage':<7} {'data':<6} {'index rows':>10} {'tool':<11} {'median s':>9} {'cpu s':>7} {'peak MB':>8} "
          f"{'MEDS-Tab / tool':>16} {'(cpu)':>6}  load")
    for key, v in result["sizes"].items():
        for n in v["runs"]:
            print(f"{'counts':<7} {key:<6} {v['index_rows']:>10,} {n:<11} {v['median_s'][n]:>9.2f} "
                  f"{v['median_cpu_s'][n]:>7.2f} {v['median_peak_rss_mb'][n]:>8.0f} "
                  f"{v['median_s']['meds-tab'] / v['median_s'][n]:>15.2f}x "
                  f"{v['median_cpu_s']['meds-tab'] / v['median_cpu_s'][n]:>5.2f}x  {v['load_average']}")
        for n in ("omop-behrt", "meds-tab"):
            c = v["compare"][n]
            print(f"  {key} {n}: {c['cells']:,} cells vs {v['compare']['truth_cells']:,} recomputed; "
                  f"differences {c['differences']}; e.g. {c['examples'][:3]}")
        m = v["compare"]["meds-tab"]
        print(f"  {key} meds-tab vs its behaviour modelled (last code of each time dropped, windows ending at the "
              f"last event): {m['modelled_cells']:,} cells modelled, differences {m['differences_from_model']}, "
              f"e.g. {m['model_examples'][:3]}")
    return result
