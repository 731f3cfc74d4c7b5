"""The hook protocol from the user's side: the worked example of ``docs/design.md`` (a hook that
stops a run once the kept units have settled) added without touching the library, its state
surviving a resume, and the loop's checks of the hooks it is given."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sparse_bnn.sparsify.shrink import Shrink, ShrinkSchedule
from sparse_bnn.train import Hook, fit, svi_optimizer
from tests.test_hooks_matrix import BATCH, make_bnn, make_data

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def worked_example() -> type:
    """``StopWhenSettled`` exactly as ``docs/design.md`` defines it (executed from the page)."""
    page = DESIGN.read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "class StopWhenSettled" in b)
    source = block[: block.index("result = fit(")]
    namespace: dict = {}
    exec(compile(source, str(DESIGN), "exec"), namespace)  # noqa: S102 - our own documentation page
    return namespace["StopWhenSettled"]


def shrinking_run(**kwargs):
    x, y = make_data()
    hooks = [Shrink(ShrinkSchedule(warmup_epochs=1, patience=1, bucket=4, shrink_factor=1.0))]
    return fit(make_bnn("ss-gl"), x, y, batch_size=BATCH, optimizer=svi_optimizer(1e-2, 3e-1), progress=False,
               **{**kwargs, "hooks": hooks + kwargs.get("hooks", [])})


def test_the_worked_example_stops_once_the_kept_units_settle():
    StopWhenSettled = worked_example()
    result = shrinking_run(epochs=40, hooks=[StopWhenSettled(3)])
    kept = [tuple(r["kept"].values()) for r in result.history]
    assert len(result.history) < 40 and result.history[-1]["settled"]
    assert kept[-4:] == [kept[-1]] * 4 and (len(kept) == 4 or kept[-5] != kept[-1])
    assert [r["settled"] for r in result.history].index(True) == len(result.history) - 1
    # the example ran after KeptUnits, as modifies_model=False promises
    assert result.hook_states["stop_when_settled"][0] == kept[-1]


def test_a_user_hooks_state_survives_a_resume(tmp_path):
    StopWhenSettled = worked_example()
    uninterrupted = shrinking_run(epochs=12, hooks=[StopWhenSettled(100)])
    shrinking_run(epochs=6, hooks=[StopWhenSettled(100)], checkpoint_dir=tmp_path, checkpoint_interval=0)
    resumed = shrinking_run(epochs=12, hooks=[StopWhenSettled(100)], checkpoint_dir=tmp_path, resume=True)
    assert resumed.hook_states["stop_when_settled"] == uninterrupted.hook_states["stop_when_settled"]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in uninterrupted.history]


class Counter(Hook):
    name = "counter"

    def init(self, fitting, info):
        return fitting, 0

    def update(self, fitting, state, record):
        return fitting, state + 1, {"count": state + 1}


def test_hooks_need_distinct_names_and_order_is_model_first():
    x, y = make_data()
    with pytest.raises(ValueError, match="two hooks are named 'counter'"):
        fit(make_bnn("ss-ig"), x, y, epochs=1, batch_size=BATCH, progress=False, hooks=[Counter(), Counter()])
    seen = []

    class Order(Hook):
        name = "order"

        def update(self, fitting, state, record):
            seen.append(sorted(record))
            return fitting, state, {}

    result = fit(make_bnn("ss-ig"), x, y, epochs=2, batch_size=BATCH, progress=False,
                 validation=(x[:64], y[:64]), hooks=[Order(), Counter()])
    # observers run after the built-in summaries: they see kept and val_accuracy
    assert all({"kept", "val_accuracy"} <= set(fields) for fields in seen)
    assert [r["count"] for r in result.history] == [1, 2] and result.hook_states["counter"] == 2
    assert np.isfinite(result.history[-1]["loss"])
