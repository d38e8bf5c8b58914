"""The coverage report of a vocabulary mapping: what was mapped, dropped or left unmapped, per domain.

Computed from the distinct keys (codes with their event and person counts) and the mapping, never from the
events again, so it costs nothing next to the mapping itself. Printed by ``omop-behrt vocab report`` and
stored as JSON with ``--json``.

What leaves the site (DESIGN.md): the report's shareable forms, :meth:`CoverageReport.table`,
:meth:`~CoverageReport.as_dict` and :meth:`~CoverageReport.write_json`, list no code seen in fewer than
``min_count`` persons (default 10; they say how many they leave out) and show every event or token count
between 1 and ``min_count - 1`` as ``"<10"`` (cell suppression: a count that small in a (domain,
vocabulary) row could be one person's record; the rows name no code, so totals stay exact). Person counts
are exact below twice ``min_count`` and a HyperLogLog estimate above (``~`` in the table,
``persons_exact: false`` in JSON): counting every code's persons exactly costs ten times the mapping, and the
estimate never exceeds the true count at sizes near min_count. ``show_rare_codes``
lifts both and marks the output as not shareable. The Python object itself (``top_unmapped``) is the
site-internal result and keeps the plain top list.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from omop_behrt.db.database import load_sql
from omop_behrt.events import write_json
from omop_behrt.shareable import shown_count

#: What the shareable forms of the report say about codes they leave out.
RARE_NOTE = "{n} codes seen in < {m} persons not shown"


@dataclass
class CoverageRow:
    """Counts for one (domain, source vocabulary): events and distinct codes by fate, tokens produced."""

    domain: str
    vocabulary: str
    events: int
    events_mapped: int
    events_dropped: int
    events_unmapped: int
    codes: int
    codes_mapped: int
    codes_dropped: int
    tokens: int
    distinct_tokens: int

    @property
    def pct_mapped(self) -> float:
        return 100.0 * self.events_mapped / self.events if self.events else 0.0


def _exact_persons(ctx: Any, keys: pa.Table, per_key: pa.Table, min_count: int, top: int,
                   show_rare_codes: bool) -> pa.Table:
    """per_key with n_persons counted exactly (``exact``) for the unmapped keys near min_count (whose count
    decides whether the report may list them); the others keep the estimate, at least twice min_count."""
    bound = {"min_count": int(min_count), "top": int(top), "all_top": bool(show_rare_codes)}
    cand = ctx.sql(load_sql("vocab/unmapped_persons.sql"), bound, pk=per_key)
    if cand.num_rows == 0:
        return ctx.sql("SELECT *, false AS exact FROM pk", pk=per_key)
    c = ctx.sql("SELECT key_id, domain, code, source_code, concept_id, source_concept_id FROM k "
                "SEMI JOIN cand USING (key_id)", k=keys, cand=cand)
    exact = ctx.sql(load_sql("vocab/key_persons.sql"), c=c)
    return ctx.sql("SELECT pk.* REPLACE (COALESCE(x.n_persons, pk.n_persons) AS n_persons), "
                   "x.key_id IS NOT NULL AS exact FROM pk LEFT JOIN x USING (key_id)", pk=per_key, x=exact)


#: Counts of patient records (suppressed below min_count in the shareable forms); code counts are not.
_EVENT_COUNTS = ("events", "events_mapped", "events_dropped", "events_unmapped", "tokens")


@dataclass
class CoverageReport:
    """Events and codes mapped per domain and source vocabulary, tokens produced, top unmapped codes.

    ``top_unmapped`` (the plain top list, codes of any person count) is for use inside the site;
    ``unmapped_listed`` is what the shareable forms list (each with its person count).
    """

    vocab: str
    rows: list[CoverageRow]
    by_member: dict[str, int]               # events decided (mapped or dropped) by each chain member
    top_unmapped: list[dict]                # {domain, code, source_code, events}: site-internal
    events: int = 0
    events_mapped: int = 0
    events_dropped: int = 0
    events_unmapped: int = 0
    tokens: int = 0
    distinct_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    min_count: int = 10
    show_rare_codes: bool = False
    unmapped_listed: list[dict] = field(default_factory=list)   # {domain, code, source_code, events, persons}
    rare_unmapped_codes: int = 0            # unmapped codes seen in < min_count persons (never listed by default)
    inferred: list[dict] = field(default_factory=list)          # codes read as ICD9CM / ICD10CM, per domain
    warnings: list[str] = field(default_factory=list)

    @property
    def pct_mapped(self) -> float:
        return 100.0 * self.events_mapped / self.events if self.events else 0.0

    @classmethod
    def from_mapping(cls, ctx: Any, keys: pa.Table, mapping: pa.Table, who: pa.Table, *, vocab: str,
                     n_tokens: int, top: int = 20, inferred: pa.Table | None = None, min_count: int = 10,
                     show_rare_codes: bool = False) -> "CoverageReport":
        """Build the report from the keys (with n_events, n_persons), the mapping, which member decided each
        key and, where codes were read as ICD, the :func:`omop_behrt.vocab.icd.infer_icd` rows."""
        per_key = ctx.sql(load_sql("vocab/coverage_keys.sql"), k=keys, m=mapping)
        rows_t = ctx.sql(load_sql("vocab/coverage_rows.sql"), pk=per_key, m=mapping)
        rows = [CoverageRow(**r) for r in rows_t.to_pylist()]
        members = ctx.sql("SELECT w.member, SUM(k.n_events) AS n FROM w JOIN k USING (key_id) "
                          "GROUP BY 1 ORDER BY 2 DESC, 1", w=who, k=keys).to_pylist()
        order = f"ORDER BY events DESC, domain, code, source_code LIMIT {int(top)}"
        unmapped = ctx.sql("SELECT domain, code, source_code, n_events AS events FROM pk "
                           f"WHERE status = 'unmapped' {order}", pk=per_key).to_pylist()
        pk = _exact_persons(ctx, keys, per_key, int(min_count), int(top), show_rare_codes)
        bound = {"floor": 0 if show_rare_codes else int(min_count), "min_count": int(min_count), "top": int(top)}
        listed = ctx.sql(load_sql("vocab/unmapped_listed.sql"), bound, pk=pk).to_pylist()
        rare = ctx.sql(load_sql("vocab/unmapped_rare.sql"), {"min_count": int(min_count)}, pk=pk).column("n")[0].as_py()
        distinct = ctx.sql("SELECT COUNT(DISTINCT token) AS n FROM m", m=mapping).column("n")[0].as_py()
        rep = cls(vocab=vocab, rows=rows, by_member={r["member"]: int(r["n"]) for r in members},
                  top_unmapped=unmapped, distinct_tokens=int(distinct), min_count=int(min_count),
                  show_rare_codes=bool(show_rare_codes), unmapped_listed=listed, rare_unmapped_codes=int(rare),
                  warnings=list(getattr(ctx, "warnings", [])))
        if inferred is not None and inferred.num_rows:
            rep.inferred = ctx.sql(load_sql("vocab/coverage_inferred.sql"), i=inferred, pk=per_key).to_pylist()
        rep.events = sum(r.events for r in rows)
        rep.events_mapped = sum(r.events_mapped for r in rows)
        rep.events_dropped = sum(r.events_dropped for r in rows)
        rep.events_unmapped = sum(r.events_unmapped for r in rows)
        rep.tokens = int(n_tokens)
        return rep

    def domain_totals(self) -> dict[str, dict[str, int]]:
        """Per domain: events, mapped, dropped, unmapped, tokens (summed over source vocabularies)."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            d = out.setdefault(r.domain, {"events": 0, "events_mapped": 0, "events_dropped": 0,
                                          "events_unmapped": 0, "codes": 0, "codes_mapped": 0, "tokens": 0})
            for k in d:
                d[k] += getattr(r, k)
        return out

    # -- shareable forms ---------------------------------------------------------------------------------
    def cell(self, n: int) -> "int | str":
        """A count as the shareable forms show it: ``"<10"`` for 1..min_count-1 (unless show_rare_codes)."""
        return n if self.show_rare_codes else shown_count(n, self.min_count)

    def _cells(self, d: dict, counts: tuple[str, ...] = _EVENT_COUNTS) -> dict:
        return {k: (self.cell(v) if k in counts else v) for k, v in d.items()}

    def rare_note(self) -> str:
        """The line that says how many unmapped codes the shareable forms leave out."""
        return RARE_NOTE.format(n=self.rare_unmapped_codes, m=self.min_count)

    def as_dict(self) -> dict:
        """The report as shareable JSON (see the module doc for what is left out)."""
        shown = self.cell(self.events_mapped) == self.events_mapped and self.cell(self.events) == self.events
        d = {"vocab": self.vocab, "min_count": self.min_count, "shareable": not self.show_rare_codes,
             "events": self.cell(self.events), "events_mapped": self.cell(self.events_mapped),
             "events_dropped": self.cell(self.events_dropped), "events_unmapped": self.cell(self.events_unmapped),
             "pct_mapped": round(self.pct_mapped, 2) if shown else None,
             "tokens": self.cell(self.tokens), "distinct_tokens": self.distinct_tokens,
             "rows": [self._cells(asdict(r)) for r in self.rows],
             "domains": {k: self._cells(v) for k, v in self.domain_totals().items()},
             "by_member": {k: self.cell(v) for k, v in self.by_member.items()},
             "top_unmapped": [self._cells(u) for u in self.unmapped_listed],
             "rare_unmapped_codes": self.rare_unmapped_codes,
             "rare_codes_note": None if self.show_rare_codes else self.rare_note(),
             "inferred": [self._cells(r) for r in self.inferred],
             "warnings": list(self.warnings), "seconds": self.seconds, "extra": self.extra}
        return d

    def write_json(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.as_dict(), p)
        return p

    def table(self) -> str:
        """A human-readable report (shareable: see the module doc)."""
        c = self.cell

        def num(n: int, width: int) -> str:
            v = c(n)
            return f"{v:>{width},}" if isinstance(v, int) else f"{v:>{width}}"

        def pct(part: int, whole: int) -> str:
            return f"{100.0 * part / whole:.1f}" if whole and c(part) == part and c(whole) == whole else "-"

        lines = [f"vocabulary    {self.vocab}",
                 f"events        {num(self.events, 0)}: {num(self.events_mapped, 0)} mapped "
                 f"({pct(self.events_mapped, self.events)}%), {num(self.events_dropped, 0)} dropped by filters, "
                 f"{num(self.events_unmapped, 0)} unmapped",
                 f"tokens        {num(self.tokens, 0)} ({self.distinct_tokens:,} distinct)",
                 "",
                 f"{'domain':<12} {'vocabulary':<20} {'events':>10} {'mapped':>10} {'%':>6} {'dropped':>9} "
                 f"{'unmapped':>9} {'codes':>7} {'mapped':>7} {'tokens':>10}"]
        for r in self.rows:
            lines.append(f"{r.domain:<12} {r.vocabulary[:20]:<20} {num(r.events, 10)} {num(r.events_mapped, 10)} "
                         f"{pct(r.events_mapped, r.events):>6} {num(r.events_dropped, 9)} "
                         f"{num(r.events_unmapped, 9)} {r.codes:>7,} {r.codes_mapped:>7,} {num(r.tokens, 10)}")
        if self.inferred:
            lines += ["", "codes without a vocabulary read as ICD by their shape (omop_behrt/vocab/icd.py):",
                      f"  {'domain':<12} {'arrived as':<20} {'read as':<30} {'codes':>6} {'in list':>7} "
                      f"{'ambig.':>6} {'events':>10} {'mapped':>10} {'%':>6}"]
            for r in self.inferred:
                read = r["vocab"] or f"not read: {r['reason']}"
                lines.append(f"  {r['domain']:<12} {r['from_vocab'][:20]:<20} {read[:30]:<30} "
                             f"{r['codes']:>6,} {r['codes_in_list']:>7,} {r['ambiguous']:>6,} "
                             f"{num(r['events'], 10)} {num(r['events_mapped'], 10)} "
                             f"{pct(r['events_mapped'], r['events']):>6}")
        if self.by_member:
            lines += ["", "events decided by each vocabulary of the spec:"]
            lines += [f"  {m:<40} {num(n, 12)}" for m, n in self.by_member.items()]
        if self.unmapped_listed or self.rare_unmapped_codes:
            seen = "" if self.show_rare_codes else f" seen in >= {self.min_count} persons"
            lines += ["", f"top {len(self.unmapped_listed)} unmapped codes{seen}:"]
            for u in self.unmapped_listed:
                src = f"  (source {u['source_code']})" if u["source_code"] and u["source_code"] != u["code"] else ""
                about = "" if u.get("persons_exact", True) else "~"
                lines.append(f"  {u['events']:>10,}  {about + format(u['persons'], ','):>8} persons  "
                             f"{u['domain']:<12} {u['code']}{src}")
            if not self.show_rare_codes and self.rare_unmapped_codes:
                lines.append(f"  ({self.rare_note()}; --show-rare-codes lists them, not for sharing)")
        if self.show_rare_codes:
            lines += ["", f"NOT SHAREABLE: this report lists codes seen in fewer than {self.min_count} persons "
                          f"and exact small counts (--show-rare-codes)"]
        if self.warnings:
            lines += [""] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)
