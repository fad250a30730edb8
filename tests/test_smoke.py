from __future__ import annotations

import featurelake
from tests.helpers import day


def test_backfill_publishes(fl: featurelake.Featurelake) -> None:
    result = fl.backfill("user_features", day(0), day(5), run_id="r1")
    table = fl.read("user_features")
    assert table.num_rows == result.rows > 0
