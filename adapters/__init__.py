"""Source readers, importable as ``omop_behrt.adapters``: each turns one kind of source into an event directory."""
from . import fhir, meds, omop
from .meds import from_meds, to_meds
from .omop import ExtractOptions, ExtractSummary, extract

__all__ = ["omop", "fhir", "meds", "extract", "ExtractOptions", "ExtractSummary", "to_meds", "from_meds"]
