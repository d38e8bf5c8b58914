"""MEDS placeholder"""
def to_meds(*a, **k): raise NotImplementedError
def from_meds(*a, **k): raise NotImplementedError
