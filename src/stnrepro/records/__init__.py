"""Run records: the schema (``schema``), what a run writes (``writer``), what the table reads."""
