"""What makes a FHIR extraction the same run (the files, their split into parts, the options, the views'
content), recorded in the manifest so that ``resume`` continues that run or refuses, saying what differs."""
from __future__ import annotations

import hashlib
from pathlib import Path

from omop_behrt import __version__
from omop_behrt.events import EventDir


def _fingerprint(src: str, files: list[Path], parts: list[list], validate: bool,
                 views: str | Path | None, notes: bool = False, min_parts: int = 8) -> dict:
    """Every input that changes the result of a run: the files (path, size, mtime), their split into parts, the
    options and the views (their content), so that ``resume`` continues the same run or refuses."""
    h = hashlib.sha256()
    size = 0
    for f in files:
        st = f.stat()
        size += st.st_size
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    v = None
    if views:
        vh = hashlib.sha256()
        for f in sorted(Path(views).glob("*.json")):
            vh.update(f.name.encode() + b"\0" + f.read_bytes())
        v = f"{Path(views).resolve()} (sha256 {vh.hexdigest()[:16]})"
    return {"source": src, "files": f"{len(files):,} files, {size:,} bytes, sha256 {h.hexdigest()[:16]}",
            "parts": len(parts), "min_parts": min_parts, "validate": bool(validate), "views": v,
            "notes": bool(notes),
            "version": __version__}


def _check_resume(out: EventDir, manifest: dict, now: dict) -> None:
    """Refuse to resume a run made from other inputs; the message says what differs."""
    if not manifest:
        return                                  # nothing to resume: a fresh run
    was = manifest.get("fingerprint")
    if manifest.get("adapter") != "fhir" or was is None:
        raise ValueError(f"--resume: {out.path} is not a FHIR extraction with a recorded fingerprint (adapter "
                         f"{manifest.get('adapter')!r}, source {manifest.get('source')!r}), so it cannot be "
                         f"checked to be the same run; run without --resume to start over")
    was = {"min_parts": 8, **was}               # runs recorded before it was: 8
    diff = [f"{k} was {was.get(k)!r}, now {now[k]!r}" for k in now if was.get(k) != now[k]]
    if diff:
        raise ValueError(f"--resume: {out.path} was extracted from other inputs: {'; '.join(diff)}; run without "
                         f"--resume to start over")
