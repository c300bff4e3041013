"""The experiment suite behind EXPERIMENTS.md: `run` runs it, `plan` says what it computes, `jobs` computes
it, `choice` picks the layers, `resume` reuses an earlier run, and `report`, `claims` and `plots` write
the results."""
