"""Everything one run does, start to finish: check the config (:mod:`.checks`), build its
objects (:mod:`.build`), hold and check its folder (:mod:`.folder`), find the checkpoint to
resume from (:mod:`.resume`), record where it came from (:mod:`.provenance`), log to W&B
(:mod:`.tracking`), and fit and test (:mod:`.fit`)."""
