"""`python -m loadtest.around_model` refuses a --setting that is not a MARC_* variable with a value,
before it starts anything (the measured run itself is `make bench`'s rows 7, not a unit test)."""

from __future__ import annotations

import pytest

from loadtest.around_model import main


@pytest.mark.parametrize("setting", ["MAX_WAIT_MS=0", "MARC_MAX_WAIT_MS", "MARC_MAX_WAIT_MS="])
def test_a_setting_that_is_not_marc_name_equals_value_is_refused(
    setting: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--setting", setting])
    assert exit_info.value.code == 2
    assert "--setting takes MARC_NAME=VALUE" in capsys.readouterr().err
