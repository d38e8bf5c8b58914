"""What a process of ours does first, to start fast: pyarrow's probe for pandas answered "no pandas".

A small extraction spends a fifth of its time importing pandas, which it never uses (see
:func:`skip_pyarrow_pandas_probe`). Used by the CLI process and by the FHIR extraction's worker processes.
"""
from __future__ import annotations

import sys


class _PandasWithheld:
    """A finder that refuses ``import pandas``: put first on sys.meta_path for one pyarrow call only."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas":
            raise ModuleNotFoundError("pandas withheld from pyarrow's first probe", name="pandas")
        return None


def skip_pyarrow_pandas_probe() -> None:
    """pyarrow imports pandas (0.3 s, a fifth of a small extraction) the first time it converts Python values,
    only to ask whether they are pandas objects; extraction never hands it any. That first probe is answered "no
    pandas" here. pandas stays importable: pyarrow imports it when asked to convert to or from pandas. Only for
    processes whose code is all ours (the CLI, FHIR extraction's worker processes): a user's pandas objects passed
    to pyarrow would no longer be recognised."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa
    sys.meta_path.insert(0, _PandasWithheld)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_PandasWithheld)
