"""One experiment in one run directory: the configuration (:mod:`~sparse_bnn.experiment.config`,
declared with :mod:`~sparse_bnn.experiment.options`), the run itself
(:func:`~sparse_bnn.experiment.run.run_experiment`), its evaluation
(:mod:`~sparse_bnn.experiment.evaluate`) and the files it writes
(:mod:`~sparse_bnn.experiment.run_files`).
"""
