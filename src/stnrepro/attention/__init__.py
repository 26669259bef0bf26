"""Where the transformers look: metrics against boxes and parts (:mod:`.metrics`, used in
training) and figures of the crops (:mod:`.figures`, matplotlib)."""
