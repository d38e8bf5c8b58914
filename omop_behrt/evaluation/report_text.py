"""The HTML report's text-encoder parts: readable method labels and the "Text encoder" section.

Kept apart from :mod:`omop_behrt.evaluation.report` (which calls these) so the report module stays one idea.
Everything here reads the comparison's shareable results (``results["text"]``, from
:func:`omop_behrt.evaluation.comparison._text_provenance`, and each method's ``classifier`` choice): aggregates
only, no text and no person; row counts arrive already suppressed (``<10``) by
:func:`omop_behrt.evaluation.metrics.shareable_results`.
"""
from __future__ import annotations

import html

from omop_behrt.evaluation.comparison import CHOICE_RULE, TEXT_METHODS, choice_text
from omop_behrt.shareable import MIN_COUNT, count_text, suppressed

#: the section's heading (shown only when the results hold a text method)
TEXT_SECTION = "Text encoder"

#: what each method is, in words (the metrics table's second line under the name a user types)
METHOD_WORDS = {
    "embeddings-lr": "BEHRT patient vectors + logistic regression (linear probe)",
    "counts-lr": "code counts before the index date + logistic regression",
    "counts-gbm": "code counts + gradient boosting",
    "embeddings-counts": "BEHRT vectors ⊕ code counts; LR or GBM, the better on validation",
    "finetuned-pretrained": "BEHRT fine-tuned end to end from the pretrained weights",
    "finetuned-scratch": "BEHRT trained end to end from random weights",
    "text-lr": "record as text, language-model vectors + logistic regression",
    "text-counts": "text vectors ⊕ code counts; LR or GBM, the better on validation",
    "text-behrt": "text vectors ⊕ BEHRT vectors + logistic regression",
}

#: where a description came from (serialize.describe's ``origin``), in words
ORIGIN_WORDS = {"concept": "OMOP concept_name", "caliber": "CALIBER phenotype name", "given": "given descriptions",
                "source": "the extraction (FHIR coding.display or OMOP concept_name)"}
#: how notes join the record (serialize's ``notes`` option), in words
NOTES_WORDS = {"append": "appended to the record's text", "pooled": "embedded one by one and pooled with the record"}


def has_text(results: dict) -> bool:
    """Whether the results hold a text method (the report then has the Text encoder section)."""
    return any(m in TEXT_METHODS for m in results.get("methods") or {})


def line_style(name: str) -> str:
    """A method's line in the curve plots: dashed for the text methods, so nine curves stay apart."""
    return "--" if name in TEXT_METHODS else "-"


def method_label(name: str, m: dict) -> str:
    """The metrics table's method cell as HTML: the name, what it is, and for LR-or-GBM methods which was kept."""
    lines = [html.escape(name)]
    if name in METHOD_WORDS:
        lines.append(f"<span class='sub'>{html.escape(METHOD_WORDS[name])}</span>")
    choice = m.get("classifier")
    if isinstance(choice, dict) and choice.get("chosen"):
        lines.append(f"<span class='sub'><b>{html.escape(choice_text(choice))}</b></span>")
    return "<br>".join(lines)


def _pct(share) -> str:
    """A share as a percentage for the page (``97.3%``, ``<0.1%``), or ``not recorded``."""
    if not isinstance(share, (int, float)):
        return "not recorded"
    if 0 < share < 0.001:
        return "<0.1%"
    return f"{share * 100:.1f}%"


def _rows_share(part, total) -> str:
    """``12 rows (2.2%)`` from a shareable ``{"rows": n}``; a suppressed count stays ``<10`` with no share."""
    n = (part or {}).get("rows") if isinstance(part, dict) else None
    if n is None:
        return "not recorded"
    if not isinstance(n, int) or not isinstance(total, int) or not total:
        return f"{count_text(n)} rows"
    return f"{count_text(n)} rows ({_pct(n / total)})" if n else "none"


def _notes_text(notes, total) -> str:
    """How the notes were used and how many rows had one, or ``not used``."""
    if not isinstance(notes, dict):
        return "not used"
    mode = NOTES_WORDS.get(notes.get("mode"), str(notes.get("mode")))
    return f"{mode}; {_rows_share(notes.get('with_notes'), total)} with a note before the index date"


def text_rows(shown: dict, min_count: int = MIN_COUNT) -> list[list[str]]:
    """The Text encoder table: model, window, checksum, serialiser, grouping, coverage, truncation, time."""
    t = shown.get("text") or {}
    tm = t.get("text_model") or {}
    total = sum(v["rows"] for v in (shown.get("n") or {}).values()
                if isinstance(v, dict) and isinstance(v.get("rows"), int))
    cov = t.get("description_coverage") or {}
    by_origin = cov.get("event_share_by_origin") or {}
    pooling = tm.get("pooling") or t.get("pooling")
    rows = [["text model", f"{tm.get('name', '?')} ({tm.get('kind', '?')}, "
                           f"{f'{pooling} pooling' if pooling not in (None, 'model') else 'its own pooling'})"],
            ["vector size", str(tm.get("dims", "?"))],
            ["window", f"{tm['max_tokens']:,} tokens; a longer record is split into windows, each embedded, and "
                       f"the windows averaged (weighted by length)" if isinstance(tm.get("max_tokens"), int) else "?"],
            ["model checksum (sha256)", f"{str(tm['checksum'])[:12]}…" if tm.get("checksum") else "not recorded"],
            ["serialiser version", str(t.get("serializer_version", "?"))],
            ["grouping", {"domain": "by domain (conditions, drugs, procedures, measurements, visits)",
                          "visit": "by visit"}.get(t.get("group"), str(t.get("group", "?")))],
            ["what the text holds", str(t.get("index_rule", "?"))],
            ["events with a description", _pct(cov.get("event_share"))],
            ["codes with a description", _pct(cov.get("code_share"))]]
    for origin, share in by_origin.items():
        rows.append([f"… described by {ORIGIN_WORDS.get(origin, origin)}", f"{_pct(share)} of events"])
    rows += [["records cut to fit the serialiser's budget", _rows_share(t.get("truncated"), total)],
             ["records with no history before the index date", _rows_share(t.get("no_history"), total)],
             ["clinical notes", _notes_text(t.get("notes"), total)],
             ["time to serialise and embed", f"{t['seconds']:,.1f} s on {t.get('device') or '?'}"
              if isinstance(t.get("seconds"), (int, float)) else "not recorded"]]
    return rows


def text_section(shown: dict, table, how, min_count: int = MIN_COUNT) -> list[str]:
    """The section's HTML parts (heading, table, how to read it); ``table`` and ``how`` are the report's helpers."""
    choices = {n: m["classifier"] for n, m in (shown.get("methods") or {}).items()
               if isinstance(m, dict) and isinstance(m.get("classifier"), dict)}
    rows = text_rows(shown, min_count)
    if choices:
        rows.append(["classifier kept (LR or GBM)", "; ".join(f"{n}: {choice_text(c)}" for n, c in choices.items())
                     + f" (rule: {CHOICE_RULE})"])
    return [f"<h2>{TEXT_SECTION}</h2>", table(["", ""], rows),
            how("The text methods read each person's record before the index date written out as plain text (age, "
                "sex, then conditions, drugs, procedures, measurements and visits, each code replaced by its "
                "description, most recent first) and turned into a vector by a general-purpose language model, "
                "with no training on this site's data (Hegselmann et al.). Descriptions: a code with none is "
                "written as the code itself, which a language model reads poorly, so low coverage weakens the "
                f"text methods. Counts of fewer than {min_count} rows show as {suppressed(min_count)}. The texts "
                "themselves never leave the site and are not in this report.")]
