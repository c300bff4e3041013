"""The ML side of MARC: datasets, the truncated backbone, the compression and task modules, training,
evaluation, the layer probe and the experiments."""
