"""LAW: the start-up TTFT seed (`rebuild_ttft`, Arrow scans) equals DuckDB's median over the same log.

Usage events go through a real `FileEventLog`: part sealed into Parquet (maybe compacted), the rest
in the WAL tail. Only `ok` outcomes with a TTFT inside the last hour count; an even count's median is
the mean of the middle two, rounded as DuckDB's `CAST(median(...) AS BIGINT)` rounds it.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.events import UsageRecorded
from eventlog.filelog import FileEventLog
from eventlog.projections import rebuild_ttft
from eventlog.sql import query

NOW_US = 1_742_040_000_000_000
HOUR_US = 3_600_000_000
OFFERS = (("p1", "m1"), ("p1", "m2"), ("p2", "m1"))
SQL = (f"SELECT provider, model, CAST(median(ttft_us) AS BIGINT) FROM usage WHERE ttft_us IS NOT NULL "
       f"AND outcome = 'ok' AND ts_us >= {NOW_US - HOUR_US} GROUP BY ALL")

rows = st.tuples(st.integers(0, len(OFFERS) - 1), st.one_of(st.none(), st.integers(0, 5_000_000)),
                 st.sampled_from(["ok", "ok", "ok", "error"]), st.sampled_from([0, 1, HOUR_US - 1, HOUR_US, HOUR_US + 1]))


def usage(n: int, offer: int, ttft: int | None, outcome: str, age_us: int) -> UsageRecorded:
    provider, model = OFFERS[offer]
    return UsageRecorded(event_id=f"ev-{n}", ts_us=NOW_US - age_us, ip="10.0.0.1", context="0", request_id=f"rq-{n}",
                         provider=provider, model=model, ttft_us=ttft, outcome=outcome, usage_source="provider")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(rows, max_size=60), st.floats(0, 1), st.booleans())
def test_rebuilt_ttft_equals_the_sql_median(tmp_path: Path, items: list[tuple[int, int | None, str, int]],
                                            sealed_part: float, compact: bool) -> None:
    events = [usage(n, *item) for n, item in enumerate(items)]
    data_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    sealed = int(len(events) * sealed_part)

    async def scenario() -> None:
        log = await FileEventLog.open(data_dir)
        try:
            if sealed:
                await log.append(events[:sealed])
                await log.flush_sealed()
                if compact:
                    await log.compact()
            if events[sealed:]:
                await log.append(events[sealed:])  # still in the WAL tail while both sides read
            _, got_rows, _ = query(data_dir, SQL)
            expected = {(p, m): int(t) for p, m, t in got_rows}
            assert rebuild_ttft(data_dir, NOW_US) == expected
        finally:
            await log.close()

    asyncio.run(scenario())
