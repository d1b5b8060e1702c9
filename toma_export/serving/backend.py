"""The ``toma_pipeline`` model as a Triton Python-backend model (``TritonPythonModel``).

The same class serves both deployments:

- ``toma-export serve``: the pipeline and its denoiser run inside this model (``mode: local``): an
  artifact's engine through :class:`~toma_export.runtime.ToMADenoiser`, or eager ToMA on an embedded
  model.
- ``toma-export export-triton``: the denoiser variants are separate ONNX Runtime / TensorRT models
  and this model calls them through BLS (``mode: bls``, :func:`bls_generator`).

Per request, not per batch: a malformed request gets its own ``INVALID_ARG`` error (HTTP 400 / gRPC
INVALID_ARGUMENT) while the other requests of its dynamic batch are served; a cancelled request
(client gone, gRPC cancel) is skipped; a failure while generating fails only the requests of that
batch, the model stays loaded. The pure-Python part (:func:`answer`) is tested without Triton.

``triton_python_backend_utils`` exists only inside Triton's Python-backend stub: it is imported in
the methods, so this module imports anywhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from toma_export.errors import ToMAError
from toma_export.serving.contract import INPUTS, GenerationRequest, Limits, RequestError, parse_rows

__all__ = ["TritonPythonModel", "answer", "bls_generator", "model_parameters"]

LOG = logging.getLogger("toma_export.serving")


def model_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """``parameters`` of a parsed ``config.pbtxt`` (Triton passes it as JSON) as a plain dict."""
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def answer(
    generate: Callable[[Sequence[GenerationRequest]], list[np.ndarray]],
    limits: Limits,
    batch: Sequence[Mapping[str, np.ndarray | None]],
    check: Callable[[GenerationRequest], None] | None = None,
) -> list[np.ndarray | Exception]:
    """One dynamic batch: per request, ``[n, H, W, 3]`` uint8 or the exception to answer with.

    :class:`RequestError` = the request's own fault (400); anything else = a server-side failure of the
    batch's generation (500), which leaves the model serving.
    """
    results: list[np.ndarray | Exception | None] = [None] * len(batch)
    rows: list[tuple[int, GenerationRequest]] = []
    for i, inputs in enumerate(batch):
        try:
            parsed = parse_rows(inputs, limits)
            for r in parsed:
                if check is not None:
                    try:
                        check(r)
                    except ToMAError as err:
                        raise RequestError(str(err)) from None
        except RequestError as err:
            results[i] = err
            continue
        rows.extend((i, r) for r in parsed)
    if rows:
        try:
            images = generate([r for _, r in rows])
        except Exception as err:  # noqa: BLE001 - answered per request; the model stays up
            LOG.exception("generation failed")
            for i, _ in rows:
                results[i] = RuntimeError(f"generation failed: {type(err).__name__}: {err}")
        else:
            per: dict[int, list[np.ndarray]] = {}
            for (i, _), image in zip(rows, images):
                per.setdefault(i, []).append(image)
            for i, ims in per.items():
                results[i] = np.stack(ims)
    return [r if r is not None else RuntimeError("no result") for r in results]


# -- BLS: the denoiser as separate Triton models (export-triton) ------------------------------------
def _bls_variant(model_name: str, inputs: list[dict[str, Any]], outputs: list[str]) -> Callable[[list[Any]], list[Any]]:
    import torch
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

    def run(flat: list[Any]) -> list[Any]:
        # Scalars (the timestep) travel as [1]: the denoiser's config.pbtxt reshapes them back to [].
        tensors = [
            pb_utils.Tensor(spec["name"], np.ascontiguousarray(
                t.detach().cpu().numpy().astype(spec["numpy"], copy=False).reshape(-1 if not spec["dims"] else t.shape)))
            for spec, t in zip(inputs, flat)
        ]
        response = pb_utils.InferenceRequest(
            model_name=model_name, requested_output_names=outputs, inputs=tensors
        ).exec()
        if response.has_error():
            raise ToMAError(f"denoiser model {model_name!r} failed: {response.error().message()}")
        return [
            torch.from_numpy(np.array(pb_utils.get_output_tensor_by_name(response, name).as_numpy()))
            for name in outputs
        ]

    return run


def bls_generator(spec: Mapping[str, Any], variant: Callable[..., Callable[[list[Any]], list[Any]]] = _bls_variant) -> Any:
    """A :class:`~toma_export.serving.pipeline.BatchedGenerator` whose denoiser calls the repository's
    denoiser models (``spec``: the ``pipeline.json`` export-triton writes). ``variant`` builds one
    variant's call (BLS inside Triton; tests pass one that runs the ONNX file directly)."""
    from toma_export.engines.load import make_runner
    from toma_export.engines.manifest import Shapes, spec_from_json
    from toma_export.models.pipelines import build_pipeline
    from toma_export.models.registry import model_shell
    from toma_export.runtime.wrapper import ToMADenoiser
    from toma_export.serving.pipeline import BatchedGenerator

    where = "pipeline.json"  # the artifact's records, copied by export-triton: parsed as the manifest's are
    shapes, model_spec = Shapes.from_json(spec["shapes"], where), spec_from_json(spec["model_spec"], where, "model_spec")
    runner = make_runner(
        {name: variant(v["model"], v["inputs"], v["outputs"]) for name, v in spec["variants"].items()},
        input_spec=spec["input_spec"], num_groups=int(spec["num_groups"]), shapes=shapes, input_dtypes=spec["input_dtypes"])
    shell = model_shell(spec["model"])
    pipe = build_pipeline(shell, seed=0)
    denoiser = ToMADenoiser(runner, shell, recompute_every=int(spec["recompute_every"]), spec=model_spec)
    setattr(pipe, model_spec.denoiser_attribute, denoiser)
    pipe.set_progress_bar_config(disable=True)
    if shapes.dynamic_batch:
        return BatchedGenerator(pipe, shapes.height, shapes.width, max_images=shapes.batch_max, spec=model_spec)
    return BatchedGenerator(pipe, shapes.height, shapes.width, fixed_denoiser_batch=shapes.batch, exact=True,
                            spec=model_spec)


class TritonPythonModel:
    """Triton Python-backend entry points (``initialize`` / ``execute`` / ``finalize``)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = model_parameters(config)
        mode = params.get("mode", "local")
        if mode == "local":
            from toma_export.serving.pipeline import generator_for_source

            self.generator = generator_for_source(
                params["source"], height=int(params.get("height", 64)), width=int(params.get("width", 64)),
                ratio=float(params.get("ratio", 0.5)),
            )
        elif mode == "bls":
            folder = Path(args["model_repository"]) / args["model_version"]
            self.generator = bls_generator(json.loads((folder / "pipeline.json").read_text()))
        else:
            raise ToMAError(f"unknown mode {mode!r} in {args.get('model_name')}'s config.pbtxt parameters.")
        self.limits = self.generator.limits(int(params.get("max_steps", 50)), int(params.get("max_prompt_bytes", 2048)))
        warm = params.get("warmup_steps")
        if warm:
            self.generator.generate([GenerationRequest("warm-up", 0, int(warm), 5.0)])

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        codes = pb_utils.TritonError
        live, batch, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            if getattr(request, "is_cancelled", lambda: False)():
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("request cancelled by the client", getattr(codes, "CANCELLED", 0)))
                continue
            inputs = {}
            for spec in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
                inputs[spec.name] = None if tensor is None else tensor.as_numpy()
            live.append(i)
            batch.append(inputs)
        results = answer(self.generator.generate, self.limits, batch, check=self.generator.check)
        for i, result in zip(live, results):
            if isinstance(result, np.ndarray):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", result)])
            else:
                code = codes.INVALID_ARG if isinstance(result, RequestError) else codes.INTERNAL
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code))
        return responses

    def finalize(self) -> None:
        self.generator = None  # type: ignore[assignment]
