"""The configuration of a run, declared once: one frozen dataclass per concern.

:class:`RunConfig` nests :class:`DataConfig`, :class:`ModelConfig`, :class:`TrainingConfig`,
:class:`ShrinkConfig`, :class:`BMRConfig` and :class:`EvaluationConfig`. Each field, declared
with :func:`~sparse_bnn.experiment.options.option`, carries its default, its help text, how the command line
spells and parses it, how it is checked, and whether it belongs to the experiment's *identity*
(a resumed run must agree with the saved config on it). ``sparse-bnn fit`` generates its options
from them (:func:`sparse_bnn.cli.add_config_options`); :meth:`RunConfig.check` validates them::

    config = RunConfig(out="runs/d", data=DataConfig(data="digits"),
                       model=ModelConfig(widths=(32, 32)), training=TrainingConfig(epochs=5))
    assert config == RunConfig.flat(out="runs/d", data="digits", widths=[32, 32], epochs=5)

Every field also has a *flat name*, unique over all sections: the command line's
``--shrink-factor`` sets ``shrink_factor``, the field ``factor`` of :class:`ShrinkConfig`.
:meth:`RunConfig.flat` and :meth:`RunConfig.replace` take these names, and
:meth:`RunConfig.from_dict` reads the flat dict older ``config.json`` files hold as well as the
nested one of :meth:`RunConfig.to_dict`.

Nothing here imports JAX: the defaults and names kept in modules that do (``sparse_bnn.train``,
``sparse_bnn.sparsify.shrink``, ``sparse_bnn.nets``, ...) are read from there when first needed.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Mapping

from sparse_bnn.experiment.options import Config, Option, option, prior_has_indicators, section
from sparse_bnn.experiment.sections import (BMR_MODES, BMRConfig, DataConfig, EvaluationConfig, ModelConfig,
                                            ShrinkConfig, TrainingConfig, GAMMA_RULE_FIELDS)

__all__ = ["BMR_MODES", "BMRConfig", "DataConfig", "EvaluationConfig", "ModelConfig", "Option", "RunConfig",
           "ShrinkConfig", "TrainingConfig", "flat_options", "options"]

# ----------------------------------------------------------------------------- the run

@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    """Everything that defines a run: its directory and one section per concern.

    ``sparse-bnn fit --help`` describes each field. Besides the nested constructor,
    ``RunConfig.flat(out="runs/d", data="digits", widths=[32, 32], shrink=True)`` takes the flat
    names (``TypeError`` for others), as do :meth:`replace` and, for older run directories,
    :meth:`from_dict`.
    """

    out: str = option(identity=False, parse=str, help="run directory")
    data: DataConfig = section(DataConfig, "data")
    model: ModelConfig = section(ModelConfig, "network and prior")
    training: TrainingConfig = section(TrainingConfig, "training")
    shrink: ShrinkConfig = section(ShrinkConfig, "shrinking while training (--shrink)")
    bmr: BMRConfig = section(BMRConfig, "Bayesian model reduction (--bmr)")
    evaluation: EvaluationConfig = section(EvaluationConfig, "pruning and evaluation")

    def check(self) -> RunConfig:
        """Raise ``ValueError`` naming the bad option (or the two that contradict each other)
        and what it takes; return ``self``."""
        for name in self.sections():
            getattr(self, name).check()
        if self.bmr.mode == "elementwise" and self.shrink.enabled:
            raise ValueError("--shrink removes whole units; element-wise BMR prunes single weights. "
                             "Use --bmr nodewise with --shrink")
        gamma_options = self.shrink.changed(*GAMMA_RULE_FIELDS)
        if self.bmr.mode != "none" and self.shrink.enabled and gamma_options:
            raise ValueError(f"{', '.join(gamma_options)} set the spike-and-slab removal rule of --shrink; with "
                             "--bmr nodewise the reduction decides which units go (after --bmr-warmup epochs), "
                             "so leave them out")
        if self.shrink.enabled and self.bmr.mode == "none" and not prior_has_indicators(self.model.prior):
            raise ValueError(f"--shrink removes units whose indicators switch off, and --prior {self.model.prior} "
                             "has none; use ss-ghs, ss-gl or ss-ig, or --bmr nodewise (units BMR prunes go)")
        if self.bmr.mode != "none" and self.model.centred:
            raise ValueError("--bmr scores reduced models of the non-centred weights; leave out --centred or --bmr")
        if self.bmr.warmup is not None:
            from sparse_bnn.sparsify.reduction import resolve_warmup_epochs
            resolve_warmup_epochs(self.bmr.warmup, self.training.epochs)
        return self

    def optimizer(self, epochs: int, n_train: int):
        """:meth:`TrainingConfig.optimizer`."""
        return self.training.optimizer(epochs, n_train)

    def shrink_schedule(self):
        """:meth:`ShrinkConfig.schedule`: the :class:`~sparse_bnn.sparsify.shrink.ShrinkSchedule` of ``--shrink``."""
        return self.shrink.schedule()

    def identity_differences(self, saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{flat name: (saved value, value here)}`` of the identity fields on which ``saved`` (a
        :meth:`to_dict`, or an older flat dict) disagrees with this config.

        Fields ``saved`` lacks (added since it was written) are not compared, nor the options of
        ``--shrink`` unless one of the two runs shrinks (their defaults may have changed since).
        """
        saved, now = self.given(saved), self.given(json.loads(json.dumps(self.to_dict())))
        shrinking = self.shrink.enabled or saved.get("shrink", {}).get("enabled", False)
        different = {}
        for entry in self.options():
            unused = entry.section == "shrink" and entry.field.name != "enabled" and not shrinking
            if not entry.identity or unused:
                continue
            before, after = saved.get(entry.section, {}), now[entry.section]
            if entry.field.name in before and before[entry.field.name] != after[entry.field.name]:
                different[entry.name] = (before[entry.field.name], after[entry.field.name])
        return different


def options() -> Iterator[Option]:
    """Every option of :class:`RunConfig`: its sections' fields, then ``out``."""
    return RunConfig.options()


def flat_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{flat name: value}`` of the fields a config dict holds, nested (``config.json``'s ``"run"``)
    or flat (older runs); builds no :class:`RunConfig`, so imports none of its defaults' modules."""
    given = RunConfig.given(values)
    return {entry.name: given[entry.section][entry.field.name] for entry in RunConfig.options()
            if entry.field.name in given.get(entry.section, {})}
