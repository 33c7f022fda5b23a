"""Count and interval keys are range-checked when the config is read: one line naming the key, before any data
is read (the runs these values would start either crash late or silently do something else)."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, load_config
from tasks.asen_schema import AsenConfig
from tasks.fine_schema import RetrievalConfig


@pytest.mark.parametrize(("schema", "config", "override", "message"), [
    *[(RetrievalConfig, "configs/retrieval_tiny.yaml", o, m) for o, m in [
        ("train.eval_every=-1", "train.eval_every must be >= 0"),
        ("train.checkpoint_every=-5", "train.checkpoint_every must be >= 0"),
        ("train.patience=0", "train.patience must be >= 1 or null"),
        ("train.stop_after_steps=0", "train.stop_after_steps must be >= 1 or null"),
        ("train.clip_grad_norm=-1.0", "train.clip_grad_norm must be > 0 or null"),
        ("runtime.num_workers=-1", "runtime.num_workers must be >= 0"),
        ("runtime.cpu_threads=0", "runtime.cpu_threads must be >= 1 or null"),
    ]],
    *[(AsenConfig, "configs/asen/synthetic/s1.yaml", o, m) for o, m in [
        ("SOLVER.BASE_LR=-1", "SOLVER.BASE_LR must be > 0"),
        ("SOLVER.BASE_LR_SLOW=0", "SOLVER.BASE_LR_SLOW must be > 0"),
        ("DATA.NUM_WORKERS=-2", "DATA.NUM_WORKERS must be >= 0"),
    ]],
])
def test_out_of_range_value_is_refused(schema, config, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(schema, [config], [override])


def test_valid_values_still_load():
    cfg = load_config(RetrievalConfig, ["configs/retrieval_tiny.yaml"],
                      ["train.eval_every=0", "train.checkpoint_every=0", "runtime.num_workers=0"])
    assert (cfg.train.eval_every, cfg.train.checkpoint_every, cfg.runtime.num_workers) == (0, 0, 0)
