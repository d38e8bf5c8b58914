"""Mapping tables shipped with the package (CALIBER, crosswalks), each with its licence."""
