"""What an artifact may load from outside its folder, and the check before it does.

An artifact's files are checked against their hashes; the model it was built from is not in the
folder (``run`` loads that pipeline's scheduler, VAE and text encoders, ``verify`` the denoiser), and
the manifest only names it. A name in a manifest is not trusted on its own: what is loaded from
outside is either what the user named on the command line (``--model``) or the recorded source,
and either way only after its denoiser is shown to be the recorded one: the class and config hash
of its config (read on the meta device, no weights) must equal the manifest's, and the source's
kind must fit its name (an ``embedded`` source is a name built in code, never a folder). ``verify``
then also compares the weights hash of what it loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from toma_export.engines.manifest import ArtifactError, Manifest, ModelRecord
from toma_export.errors import ToMAError
from toma_export.models.identity import config_hash
from toma_export.models.registry import EMBEDDED_MODELS, is_hub_id, model_shell, resolve_model

__all__ = ["model_source", "require_recorded_model", "source_shell"]

_REBUILD = "rebuild the artifact (toma-export build ... --force --out FOLDER)"


def model_source(manifest: Manifest, model: str | Path | None = None) -> ModelRecord:
    """The manifest's ``model`` record, or the one ``model`` (named by the user) stands for.

    The recorded source must be consistent: an ``embedded`` source names an embedded model, a
    ``local`` one a path, a ``hub`` one a Hub id; anything else is refused before anything is read.
    """
    recorded = manifest.model
    if model is not None:
        source, _ = resolve_model(str(model), variant=recorded.variant)
        return dataclasses.replace(recorded, name=str(model), source=source.kind, revision=None, commit=None,
                                   subfolder=source.subfolder, component=source.component)
    name, kind = recorded.name, recorded.source
    fits = {
        "embedded": lambda: name in EMBEDDED_MODELS,
        "local": lambda: name not in EMBEDDED_MODELS,  # a path (it may have moved: --model names it then)
        "hub": lambda: name not in EMBEDDED_MODELS and is_hub_id(name),
        None: lambda: name in EMBEDDED_MODELS,  # artifacts recorded without a kind: embedded models only
    }
    if not fits[kind]():
        raise ArtifactError(
            f"the manifest's model record is inconsistent: source {kind!r} with name {name!r} (an artifact built "
            f"from an embedded model names it, one built from a folder or Hub id records that): the manifest was "
            f"edited. Nothing was loaded from {name!r}; {_REBUILD}, or name the model yourself with --model."
        )
    return recorded


def require_recorded_model(manifest: Manifest, shell: torch.nn.Module, source: ModelRecord, *, given: bool) -> None:
    """``shell`` (the source's denoiser on the meta device) has the class and config the manifest
    records, before anything else of that source is loaded. ``given``: the user named the source (--model)."""
    want_class, want_hash = manifest.model.class_name, manifest.model.config_hash
    got_class, got_hash = type(shell).__name__, config_hash(shell)
    if (got_class, got_hash) != (want_class, want_hash):
        fix = ("name the model the artifact was built from with --model, or rebuild the artifact for this one"
               if given else f"pass --model with the model it was built from, or {_REBUILD}")
        raise ToMAError(
            f"{source.name} holds a {got_class} (config hash {got_hash}), but the artifact was built from a "
            f"{want_class} (config hash {want_hash}); nothing else was loaded from it. {fix[0].upper()}{fix[1:]}."
        )


def source_shell(manifest: Manifest, model: str | Path | None = None) -> tuple[torch.nn.Module, ModelRecord]:
    """The checked source (:func:`model_source`) and its denoiser's shell, identity-checked."""
    source = model_source(manifest, model)
    try:
        shell = model_shell(source.name, revision=source.load_revision, variant=source.variant, subfolder=source.subfolder)
    except ToMAError as err:
        if model is not None:
            raise
        raise type(err)(f"the model this artifact records ({source.name}) cannot be used: {err} If it moved, "
                        "name it with --model.") from None
    require_recorded_model(manifest, shell, source, given=model is not None)
    return shell, source
