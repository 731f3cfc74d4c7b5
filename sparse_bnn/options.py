"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.experiment.options` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.experiment.options import (Config, MISSING, Option, Section, check_inclusion, finite, lazy,
                                           non_negative, option, parse_inclusion, parse_prior_option, parse_widths,
                                           positive, positive_integer, prior_hyperparameters, section,
                                           strictly_between_0_and_1, typed_prior_options)
