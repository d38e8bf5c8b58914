"""Where a CDM lives: connections, CDM tables, exports read as views, SQL dialects, PostgreSQL COPY."""
