"""The Lightning pieces the configs' ``_target_`` names: the LightningModule (:mod:`.module`),
callbacks (:mod:`.callbacks`, :mod:`.rng`), the atomic checkpoint writer
(:mod:`.checkpoint_io`) and the resumable CSV logger (:mod:`.csv_logger`)."""
