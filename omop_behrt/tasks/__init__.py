"""Index dates and labels: cohorts (OHDSI tables, ATLAS), prediction tasks, benchmark suites."""
