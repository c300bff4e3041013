"""marc.machine names the CPU every report's numbers were taken on, with the instructions int8 speed needs."""

from pathlib import Path

import pytest

from marc.machine import INT8_FLAGS, cpu_model, machine_info


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="family and flags come from /proc/cpuinfo")
def test_cpu_model_names_family_model_and_exactly_the_int8_flags_present() -> None:
    first_block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first_block.splitlines())}
    flags = set(fields.get("flags", "").split())
    described = cpu_model()
    assert described.startswith(fields.get("model name", ""))
    if "cpu family" in fields:
        assert f"family {fields['cpu family']} model {fields['model']}" in described
    named = set(described.rpartition(";")[2].rstrip(")").split())
    assert named & set(INT8_FLAGS) == flags & set(INT8_FLAGS)
    assert machine_info()["cpu"] == described
