"""Handlers around the library's sites: its name, its tags, its KL weight.

:func:`model_scope` puts a model's ``name`` before the names of the sites and parameters made
inside it (``numpyro.handlers.scope`` with the divider ``"."``; nothing when the name is ``None``).
:func:`latent_sites` does that and, for the latent sites made inside it, adds a
:class:`~sparse_bnn.core.spec.LibrarySite` tag to their ``infer`` dict (so an ELBO knows them
for the library's, whatever scope encloses them) and scales their log-densities by the model's
``kl_weight`` when it is not 1 (so that NumPyro's own ELBOs estimate the tempered objective
``E[log p(y | w)] - kl_weight * KL``). The model and the guide make their latents inside it.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from numpyro.handlers import scale, scope
from numpyro.primitives import Messenger

from sparse_bnn.core.spec import LIBRARY_SITE, LibrarySite, Masks, ModelSpec

__all__ = ["latent_sites", "library_tag", "model_scope"]


class _tag(Messenger):
    """Adds ``infer[LIBRARY_SITE] = LibrarySite(model, name, masks)`` to latent sample sites."""

    def __init__(self, model: ModelSpec, masks: Masks | None):
        self.model, self.masks = model, masks
        super().__init__()

    def process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["infer"] = {**msg.get("infer", {}), LIBRARY_SITE: LibrarySite(self.model, msg["name"], self.masks)}


def library_tag(site: dict) -> LibrarySite | None:
    """The :class:`~sparse_bnn.core.spec.LibrarySite` tag of a trace's site, or ``None``."""
    return (site.get("infer") or {}).get(LIBRARY_SITE)


def model_scope(model: ModelSpec) -> contextlib.AbstractContextManager:
    """``numpyro.handlers.scope(prefix=name, divider=".")`` of a named model, else nothing."""
    name = model.options.name
    return contextlib.nullcontext() if name is None else scope(prefix=name, divider=".")


@contextlib.contextmanager
def latent_sites(model: ModelSpec, masks: Masks | None) -> Iterator[None]:
    """Named (:func:`model_scope`), tagged and, for ``kl_weight != 1``, scaled latent sites."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(model_scope(model))
        if model.options.kl_weight != 1.0:
            stack.enter_context(scale(scale=model.options.kl_weight))
        stack.enter_context(_tag(model, masks))
        yield
