"""Progress lines in logs (not a terminal): plain lines with the unit's plural spelled right."""

from __future__ import annotations

import pytest

from detector.progress import plural, progress


@pytest.mark.parametrize("unit,expected", [("batch", "batches"), ("sample", "samples"), ("step", "steps")])
def test_units_are_pluralised(unit, expected):
    assert plural(unit) == expected


def test_a_log_gets_one_plain_line_at_the_end_naming_its_units(capsys):
    with progress(375, "epoch 3/3", "batch") as bar:
        bar.update(375)
    err = capsys.readouterr().err
    lines = [line.strip("\r") for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("epoch 3/3: 375/375 batches, ")  # a line of its own, not a redrawn frame
    assert "batchs" not in err
