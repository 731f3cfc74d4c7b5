"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.compact.report` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.compact.report import (CompressionReport, LatencyRow, LayerCompression, compression_report, count_macs,
                                       count_params, forward_latency, jaxpr_macs)

__all__ = ["CompressionReport", "LatencyRow", "LayerCompression", "compression_report", "count_macs", "count_params",
           "forward_latency", "jaxpr_macs"]
