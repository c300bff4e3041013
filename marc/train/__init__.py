"""Training MARC on the click-through proxy task: C (compressor) + A (task adaptation module) on top of the
truncated backbone (`loop`), over frozen pooled states or item texts through LoRA (`item_side`, `lora`)."""
