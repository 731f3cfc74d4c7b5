"""Sparsification while training: Bayesian model reduction and physical shrinking.

:mod:`~sparse_bnn.sparsify.bmr` (the closed-form formulas), :mod:`~sparse_bnn.sparsify.scores`
(``Delta F``, node-wise and element-wise reductions, masks), :mod:`~sparse_bnn.sparsify.reduction`
(the :class:`~sparse_bnn.sparsify.reduction.Reduction` hook, ``fit_with_bmr``),
:mod:`~sparse_bnn.sparsify.slicing` (slicing a model and its state to the kept units) and
:mod:`~sparse_bnn.sparsify.shrink` (the :class:`~sparse_bnn.sparsify.shrink.Shrink` hook).
"""
