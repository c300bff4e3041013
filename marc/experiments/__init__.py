"""The experiment suite behind EXPERIMENTS.md: does the Mid-layer Representation Advantage hold for the
real SmolLM2 backbone, and what does MARC buy over the usual ways of compressing an LLM state?
`run` does one run; `plan` says what it computes, `jobs` computes it, `choice` picks the layers,
`resume` reuses an earlier run, `report`, `claims` and `plots` write the results."""
