"""A model pretrained at one site, reused at another: ancestor fallback, coverage, continued pretraining (--init).

The "foreign" model is a tiny BEHRT pretrained on the even person ids of Eunomia (min_count 50, so it lacks
codes the other half uses); the "site" is the odd person ids.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from omop_behrt.behrt.checkpoint import ResumeError
from omop_behrt.cli.main import main
from omop_behrt.vectors.embed import embed_cohort, index_sequences
from omop_behrt.events import EventDir
from omop_behrt.vocab.fallback import apply, coverage, fallback_map, replace, token_counts, unknown_tokens
from omop_behrt.behrt.model import Behrt
from omop_behrt.behrt.continued import extend_vocabulary, init_weights
from omop_behrt.behrt.pretrain import pretrain
from omop_behrt.behrt.tokenizer import SPECIALS, UNK, TokenVocabulary, visit_table
from omop_behrt.vocab.mapping import map_events

torch.set_num_threads(1)
TINY = dict(progress=False, device="cpu", seed=0)
CUT = np.datetime64("2012-01-01", "us")


def _half(src: Path, dst: Path, parity: int) -> EventDir:
    """A copy of an event directory holding only the persons whose id has this parity."""
    shutil.copytree(src, dst)
    for f in [*(dst / "events").glob("*.parquet"), dst / "persons.parquet"]:
        t = pq.read_table(f)
        pq.write_table(t.filter(pc.equal(pc.bit_wise_and(t["subject_id"], 1), parity)), f)
    return EventDir.open(dst)


@pytest.fixture(scope="module")
def sites(eunomia_events, tmp_path_factory):
    """(foreign model dir, its event dir, the site's event dir)."""
    root = tmp_path_factory.mktemp("reuse")
    home, site = _half(eunomia_events.path, root / "home", 0), _half(eunomia_events.path, root / "site", 1)
    pretrain(home, "source", root / "foreign", "tiny", max_steps=12, min_count=50, log_every=1, **TINY)
    return root / "foreign", home, site


def _vocab_without(vocab: TokenVocabulary, drop: set[str]) -> TokenVocabulary:
    keep = [i for i, t in enumerate(vocab.tokens) if t not in drop]
    return TokenVocabulary([vocab.tokens[i] for i in keep], [vocab.counts[i] for i in keep], vocab.min_count,
                           vocab.persons)


def test_prefix_and_chapter_rules():
    v = TokenVocabulary(list(SPECIALS) + ["ICD10CM/I21", "ICD10CM/I2", "CALIBER_CHAPTER/Skin conditions"],
                        [0] * 5 + [40, 30, 20])
    toks = pa.array(["ICD10CM/I21.4", "ICD10CM/I25.1", "ICD10CM/J45", "CALIBER/Acne", "ICD10CM/I21", "SNOMED/1"])
    m = fallback_map(unknown_tokens(toks, v), v)
    assert dict(zip(m["token"].to_pylist(), m["fallback"].to_pylist())) == {
        "ICD10CM/I21.4": "ICD10CM/I21", "ICD10CM/I25.1": "ICD10CM/I2",
        "CALIBER/Acne": "CALIBER_CHAPTER/Skin conditions"}
    t = pa.table({"subject_id": pa.array(range(6), pa.int64()), "time": pa.array(range(6), pa.timestamp("us")),
                  "token": toks})
    ids = v.encode(replace(t, m)["token"])
    assert ids.tolist() == [5, 6, UNK, 7, 5, UNK]
    cov = coverage(t, v, m, min_count=1)
    assert (cov["in_model"], cov["fallback"], cov["unknown"]) == (1, 3, 2)
    assert cov["fallback_by_rule"] == {"concept_ancestor": 0, "icd_prefix": 2, "caliber_chapter": 1}
    assert coverage(t, v, m)["in_model"] is None           # counts below min_count (10) are never shown
    # before each subject's latest cut only: subjects 0-2 cut at time 2 (row 2 itself is at the cut), 3 at 9,
    # 4 and 5 have no cut (never counted); a null token is unknown
    t = t.set_column(2, "token", pa.array(["ICD10CM/I21.4", None, "ICD10CM/J45", "CALIBER/Acne", "ICD10CM/I21",
                                           "SNOMED/1"]))
    cut = pa.table({"subject_id": pa.array([0, 1, 2, 3, 3], pa.int64()),
                    "index_time": pa.array([2, 2, 2, 1, 9], pa.timestamp("us"))})
    cov = coverage(t, v, m, cutoff=cut, min_count=1)
    assert (cov["events"], cov["in_model"], cov["fallback"], cov["unknown"]) == (3, 0, 2, 1)
    assert cov["fallback_by_rule"] == {"concept_ancestor": 0, "icd_prefix": 1, "caliber_chapter": 1}
    counts = token_counts(t, cut)
    assert dict(zip(counts["token"].to_pylist(), zip(counts["n_all"].to_pylist(), counts["n"].to_pylist()))) == {
        "ICD10CM/I21.4": (1, 1), None: (1, 1), "ICD10CM/J45": (1, 0), "CALIBER/Acne": (1, 1), "ICD10CM/I21": (1, 0),
        "SNOMED/1": (1, 0)}
    assert coverage(None, v, m, counts=counts, min_count=1) == cov


def test_concept_ancestor_fallback_gives_the_ancestor_id(tiny_model, eunomia_events, eunomia_db):
    """Drop known descendants from the model's vocabulary: their events get the nearest known ancestor's id."""
    model = Behrt.load(tiny_model)
    con = duckdb.connect(str(eunomia_db), read_only=True)
    pairs = con.execute("""
        SELECT cd.vocabulary_id || '/' || cd.concept_code, ca.vocabulary_id || '/' || ca.concept_code,
               a.min_levels_of_separation
        FROM concept_ancestor a JOIN concept cd ON cd.concept_id = a.descendant_concept_id
        JOIN concept ca ON ca.concept_id = a.ancestor_concept_id
        WHERE a.min_levels_of_separation > 0""").fetchall()
    con.close()
    known = set(model.vocab.tokens)
    both = [p for p in pairs if p[0] in known and p[1] in known]
    assert both, "Eunomia should hold descendant/ancestor pairs both in the tiny model's vocabulary"
    drop = {p[0] for p in both} - {p[1] for p in both}            # descendants that are nobody's ancestor here
    model.vocab = _vocab_without(model.vocab, drop)
    tokens = map_events(eunomia_events, "source", progress=False).tokens
    unknown = set(tokens["token"].to_pylist()) - set(model.vocab.tokens)
    nearest = {}                                            # by hand: fewest levels, then the lower token id
    for d, a, _ in sorted((p for p in pairs if p[0] in unknown and p[1] in model.vocab.tokens),
                          key=lambda p: (p[2], model.vocab.tokens.index(p[1]))):
        nearest.setdefault(d, a)
    assert drop <= set(nearest)
    persons, visits = eunomia_events.persons(), visit_table(eunomia_events)
    subj = np.unique(tokens["subject_id"].to_numpy())
    cut = np.full(len(subj), np.datetime64("2100-01-01", "us")).astype(np.int64)
    on, _ = index_sequences(tokens, persons, visits, model, subj, cut, cdm=eunomia_db)
    off, _ = index_sequences(tokens, persons, visits, model, subj, cut, fallback=False)
    assert (on.input_ids == UNK).sum() < (off.input_ids == UNK).sum()
    replaced, _, mapping = apply(tokens, model.vocab, cdm=eunomia_db)
    assert dict(zip(mapping["token"].to_pylist(), mapping["fallback"].to_pylist())) == nearest
    was, now = model.vocab.encode(tokens["token"]), model.vocab.encode(replaced["token"])
    changed = was != now
    assert changed.any() and (was[changed] == UNK).all()
    want = np.array([model.vocab.tokens.index(nearest.get(t, "[UNK]")) for t in tokens["token"].to_pylist()])
    assert np.array_equal(now[changed], want[changed]) and np.array_equal(now, np.where(want != UNK, want, was))
    dropped_rows = int(pc.sum(pc.is_in(tokens["token"], pa.array(sorted(nearest)))).as_py())
    assert on.meta["coverage"]["fallback_by_rule"]["concept_ancestor"] == dropped_rows
    assert on.meta["coverage"]["fallback"] == dropped_rows and off.meta["coverage"]["fallback"] == 0


def test_embed_coverage_equals_an_independent_count(sites, eunomia_db):
    foreign, _, site = sites
    persons = site.persons()["subject_id"].to_numpy()
    index = pa.table({"cohort_definition_id": pa.array(np.zeros(len(persons)), pa.int64()),
                      "subject_id": pa.array(persons, pa.int64()),
                      "index_date": pa.array(np.full(len(persons), CUT))})
    on = embed_cohort(foreign, eunomia_db, index, progress=False, device="cpu")
    off = embed_cohort(foreign, eunomia_db, index, progress=False, device="cpu", fallback=False)
    # independently: the site's source tokens before the cut, against the foreign tokens.json
    tokens = map_events(site, "source", progress=False).tokens
    before = tokens.filter(pc.less(tokens["time"], pa.scalar(CUT, pa.timestamp("us"))))["token"].to_pylist()
    vocab = set(json.loads((foreign / "tokens.json").read_text())["tokens"])
    n_in = sum(t in vocab for t in before)
    cov_off, cov_on = off.provenance["coverage"], on.provenance["coverage"]
    assert cov_off["events"] == cov_on["events"] == len(before)
    assert cov_off["in_model"] == cov_on["in_model"] == n_in
    assert cov_off["unknown"] == len(before) - n_in and cov_off["fallback"] == 0
    assert cov_on["fallback"] + cov_on["unknown"] == len(before) - n_in
    assert cov_on["fallback"] > 0 and cov_on["share_in_model"] == round(n_in / len(before), 4)
    assert on.provenance["fallback"] and not off.provenance["fallback"]
    assert not np.allclose(on.vectors, off.vectors)


def test_init_continues_from_the_weights_and_extends_the_vocabulary(sites, tmp_path):
    foreign, _, site = sites
    init = pretrain(site, out=tmp_path / "cont", max_steps=3, log_every=1, init=foreign, **TINY)
    fresh = pretrain(site, "source", tmp_path / "fresh", "tiny", max_steps=3, log_every=1, **TINY)
    assert init["finished"] and fresh["finished"]
    first = [json.loads((tmp_path / m / "metrics.json").read_text())[0]["loss"] for m in ("cont", "fresh")]
    assert first[0] < first[1] - 0.2                        # step 0: the foreign weights already know the codes
    f_tokens = Behrt.load(foreign).vocab.tokens
    model = Behrt.load(tmp_path / "cont")
    meta = model.metadata
    added = model.vocab.tokens[len(f_tokens):]
    assert model.vocab.tokens[:len(f_tokens)] == f_tokens and len(added) > 0
    assert meta["vocab_extension"]["added_tokens"] == len(added) == model.config.vocab_size - len(f_tokens)
    assert meta["init_model"]["model_id"] == Behrt.load(foreign).metadata["model_id"]
    assert str(foreign) not in json.dumps(meta["init_model"]) + json.dumps(meta["vocab_extension"])


def test_init_weights_copy_foreign_rows_and_start_new_ones_at_the_mean(tiny_model):
    init = Behrt.load(tiny_model)
    local = TokenVocabulary(list(SPECIALS) + ["LOCAL/a", init.vocab.tokens[5]], [0] * 5 + [12, 15])
    tv = extend_vocabulary(init.vocab, local)
    assert tv.tokens == init.vocab.tokens + ["LOCAL/a"]
    from dataclasses import replace as dc_replace
    core = Behrt(dc_replace(init.config, vocab_size=len(tv)))
    init_weights(core, init, tv)
    w, w0 = core.embeddings.code.weight.detach(), init.embeddings.code.weight.detach()
    assert torch.equal(w[:len(init.vocab)], w0)
    codes = torch.as_tensor(np.asarray(init.vocab.counts) > 0)
    assert torch.allclose(w[-1], w0[codes].mean(0))
    assert torch.equal(core.blocks[0].mlp[0].weight, init.blocks[0].mlp[0].weight)


def test_resume_refuses_another_init_model_and_config_clashes(sites, tiny_model, tmp_path):
    foreign, _, site = sites
    kw = dict(max_steps=4, **TINY)
    pretrain(site, out=tmp_path / "m", init=foreign, stop_after=1, **kw)
    with pytest.raises(ResumeError, match="init_model"):
        pretrain(site, out=tmp_path / "m", init=tiny_model, resume=True, **kw)
    with pytest.raises(ValueError, match="hidden 288"):
        pretrain(site, out=tmp_path / "x", init=foreign, config="behrt", **kw)
    assert main(["pretrain", "--events", str(site.path), "--out", str(tmp_path / "y"), "--init", str(foreign),
                 "--vocab", "concept", "--quiet"]) != 0


def test_finetune_records_the_coverage_of_its_sequences(sites, tmp_path):
    from omop_behrt.evaluation.heads import FineTunedBehrt
    foreign, _, site = sites
    model = Behrt.load(foreign)
    tokens = map_events(site, "source", progress=False).tokens
    subj = np.unique(tokens["subject_id"].to_numpy())[:80]
    cut = np.full(len(subj), CUT).astype(np.int64)
    seqs, order = index_sequences(tokens, site.persons(), visit_table(site), model, subj, cut)
    X, y = seqs.select(order), np.arange(len(subj)) % 2
    est = FineTunedBehrt(foreign, epochs=1, min_steps=1, device="cpu").fit(X, y)
    assert est.coverage_ == seqs.meta["coverage"] and est.coverage_["events"] > 0
    assert FineTunedBehrt.load(est.save(tmp_path / "head")).coverage_ == est.coverage_
