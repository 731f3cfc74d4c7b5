"""The model core: what a sparse BNN is and how it is scored.

:mod:`~sparse_bnn.core.spec` names the sites and parameters; :mod:`~sparse_bnn.core.model`
(:class:`~sparse_bnn.core.model.SparseBNN`), :mod:`~sparse_bnn.core.guide` and
:mod:`~sparse_bnn.core.elbo` read it (no cycle); :mod:`~sparse_bnn.core.kl`,
:mod:`~sparse_bnn.core.noise` and :mod:`~sparse_bnn.core.inclusion` are their formulas;
:mod:`~sparse_bnn.core.posterior` reads a fitted guide (predictions, posterior means, keep masks).

Nothing is imported here, so that ``import sparse_bnn.core.kl`` (the priors do) stays light.
"""
