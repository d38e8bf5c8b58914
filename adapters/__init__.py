"""Source readers, importable as ``omop_behrt.adapters``: each turns one kind of source into an event directory."""
from omop_behrt.adapters import fhir, meds, omop
from omop_behrt.adapters.meds import from_meds, to_meds
from omop_behrt.adapters.omop import ExtractOptions, ExtractSummary, extract

__all__ = ["omop", "fhir", "meds", "extract", "ExtractOptions", "ExtractSummary", "to_meds", "from_meds"]
