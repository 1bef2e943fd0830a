"""Reports of a run: Table 1 / Table 2 and the other tables (tables), report.html (html)."""
