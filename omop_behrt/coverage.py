"""The coverage report of a vocabulary mapping: what was mapped, dropped or left unmapped, per domain.

Computed from the distinct keys (codes with their event counts) and the mapping, never from the events
again, so it costs nothing next to the mapping itself. Printed by ``omop-behrt vocab report`` and stored
as JSON with ``--json``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .database import load_sql
from .events import write_json


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


@dataclass
class CoverageReport:
    """Events and codes mapped per domain and source vocabulary, tokens produced, top unmapped codes."""

    vocab: str
    rows: list[CoverageRow]
    by_member: dict[str, int]               # events decided (mapped or dropped) by each chain member
    top_unmapped: list[dict]                # {domain, code, source_code, events}
    events: int = 0
    events_mapped: int = 0
    events_dropped: int = 0
    events_unmapped: int = 0
    tokens: int = 0
    distinct_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def pct_mapped(self) -> float:
        return 100.0 * self.events_mapped / self.events if self.events else 0.0

    @classmethod
    def from_mapping(cls, ctx: Any, keys: pa.Table, mapping: pa.Table, who: pa.Table, *, vocab: str,
                     n_tokens: int, top: int = 20) -> "CoverageReport":
        """Build the report from the keys (with n_events), the mapping and which member decided each key."""
        per_key = ctx.sql(load_sql("vocab/coverage_keys.sql"), k=keys, m=mapping)
        rows_t = ctx.sql(load_sql("vocab/coverage_rows.sql"), pk=per_key, m=mapping)
        rows = [CoverageRow(**r) for r in rows_t.to_pylist()]
        members = ctx.sql("SELECT w.member, SUM(k.n_events) AS n FROM w JOIN k USING (key_id) "
                          "GROUP BY 1 ORDER BY 2 DESC, 1", w=who, k=keys).to_pylist()
        unmapped = ctx.sql("SELECT domain, code, source_code, n_events AS events FROM pk "
                           "WHERE status = 'unmapped' ORDER BY events DESC, domain, code, source_code "
                           f"LIMIT {int(top)}", pk=per_key).to_pylist()
        distinct = ctx.sql("SELECT COUNT(DISTINCT token) AS n FROM m", m=mapping).column("n")[0].as_py()
        rep = cls(vocab=vocab, rows=rows, by_member={r["member"]: int(r["n"]) for r in members},
                  top_unmapped=unmapped, distinct_tokens=int(distinct))
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

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pct_mapped"] = round(self.pct_mapped, 2)
        d["domains"] = self.domain_totals()
        return d

    def write_json(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.as_dict(), p)
        return p

    def table(self) -> str:
        """A human-readable report."""
        lines = [f"vocabulary    {self.vocab}",
                 f"events        {self.events:,}: {self.events_mapped:,} mapped ({self.pct_mapped:.1f}%), "
                 f"{self.events_dropped:,} dropped by filters, {self.events_unmapped:,} unmapped",
                 f"tokens        {self.tokens:,} ({self.distinct_tokens:,} distinct)",
                 "",
                 f"{'domain':<12} {'vocabulary':<20} {'events':>10} {'mapped':>10} {'%':>6} {'dropped':>9} "
                 f"{'unmapped':>9} {'codes':>7} {'mapped':>7} {'tokens':>10}"]
        for r in self.rows:
            lines.append(f"{r.domain:<12} {r.vocabulary[:20]:<20} {r.events:>10,} {r.events_mapped:>10,} "
                         f"{r.pct_mapped:>6.1f} {r.events_dropped:>9,} {r.events_unmapped:>9,} {r.codes:>7,} "
                         f"{r.codes_mapped:>7,} {r.tokens:>10,}")
        if self.by_member:
            lines += ["", "events decided by each vocabulary of the spec:"]
            lines += [f"  {m:<40} {n:>12,}" for m, n in self.by_member.items()]
        if self.top_unmapped:
            lines += ["", f"top {len(self.top_unmapped)} unmapped codes:"]
            for u in self.top_unmapped:
                src = f"  (source {u['source_code']})" if u["source_code"] and u["source_code"] != u["code"] else ""
                lines.append(f"  {u['events']:>10,}  {u['domain']:<12} {u['code']}{src}")
        return "\n".join(lines)
