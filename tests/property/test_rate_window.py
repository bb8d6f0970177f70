"""`RateWindow` (a bucket's last minute as two int64 arrays) against a plain list model: the same
entries, count, tokens and oldest time after any mix of appends, settlements, cancellations and
evictions — including across the compactions that renumber the arrays (made frequent here)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.events import INT64_MAX
from domain.usage_projection import RateWindow


class OftenCompacted(RateWindow):
    COMPACT_AFTER = 3


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 12), st.integers(0, 50)),  # (op, how many, tokens)
        st.tuples(st.just("correct"), st.integers(0, 500), st.sampled_from([0, 7, 1_000, 2**64])),
        st.tuples(st.just("void"), st.integers(0, 500), st.just(0)),
        st.tuples(st.just("evict"), st.integers(0, 12), st.just(0)),  # (op, how far the horizon moves)
    ),
    min_size=1, max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, often=st.booleans())
def test_the_window_matches_a_list_of_entries(ops: list[tuple[str, int, int]], often: bool) -> None:
    window = OftenCompacted() if often else RateWindow()
    model: list[list[int]] = []  # [ts, tokens, alive] per position since the start
    now = horizon = 0
    for op, n, tokens in ops:
        if op == "append":
            for _ in range(n):
                now += 1
                assert window.append(now, tokens) == len(model)
                model.append([now, tokens, 1])
        elif op in ("correct", "void") and model:
            position = n % len(model)
            entry = model[position]
            in_window = entry[0] > horizon and entry[2]
            if op == "correct":
                window.correct(position, tokens)
                if in_window:
                    entry[1] = min(tokens, INT64_MAX)
            else:
                window.void(position)
                if in_window:
                    entry[2] = 0
        elif op == "evict":
            horizon = min(horizon + n, now)
            window.evict(horizon)
        live = [(ts, used) for ts, used, alive in model if alive and ts > horizon]
        assert list(window) == live
        assert len(window) == len(live)
        assert window.total == sum(used for _, used in live)
        assert window.oldest_ts() == (live[0][0] if live else None)
