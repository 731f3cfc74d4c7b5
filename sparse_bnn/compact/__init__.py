"""From a fitted model to a deployable one: keep masks (:mod:`~sparse_bnn.compact.keep`), the
physically smaller network (:mod:`~sparse_bnn.compact.prune`), the compression report
(:mod:`~sparse_bnn.compact.report`), the saved format (:mod:`~sparse_bnn.compact.io`) and
predictions from a finished run (:mod:`~sparse_bnn.compact.deploy`). None of them imports a
training module.

``sparse_bnn.compact`` is both this package and, through the package's lazy exports, the
function :func:`sparse_bnn.compact.prune.compact`; the package is callable so that ``from
sparse_bnn import compact; compact(net, params, keep)`` works whichever of the two the import
finds (as for :mod:`sparse_bnn.fit`).
"""
from __future__ import annotations

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from sparse_bnn.compact.prune import compact
        return compact(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
