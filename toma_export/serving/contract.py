"""The served model's contract: names, datatypes, shapes and limits, and the parsing of one request.

Model ``toma_pipeline`` (KServe v2, HTTP and gRPC):

=================== ======== ======= ==========================================================
input               datatype shape   meaning
=================== ======== ======= ==========================================================
``prompt``          BYTES    [1]     UTF-8, 1 to :data:`MAX_PROMPT_BYTES` bytes
``negative_prompt`` BYTES    [1]     optional, 0 to :data:`MAX_PROMPT_BYTES` bytes (SDXL only)
``seed``            INT64    [1]     any int64: the initial-noise generator's seed
``steps``           INT32    [1]     1 to the server's ``--max-steps`` (default 50)
``guidance_scale``  FP32     [1]     optional, finite, 0 to :data:`MAX_GUIDANCE` (default 5 SDXL, 3.5 Flux)
=================== ======== ======= ==========================================================

Output ``image``: UINT8 ``[H, W, 3]`` (RGB, the server's resolution). The model batches
(``max_batch_size`` > 0), so on the wire every tensor carries a leading batch dimension: one request
is ``[n, 1]`` per input and ``[n, H, W, 3]`` out; each of the ``n`` rows is one generation.

Prompts to embeddings: pipelines with text encoders encode the strings themselves; the embedded
encoder-free models map a prompt deterministically through
:func:`toma_export.models.pipelines.prompt_embeddings_for` (normal embeddings from a CPU
``torch.Generator`` seeded with the first 8 bytes of SHA-256 of the prompt's UTF-8: the same prompt
gives the same image in ``toma-export run``, in tests and here).

Everything in this module is plain Python and numpy (no torch): the Triton Python-backend model and
the tests parse requests with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from toma_export.errors import ToMAError
from toma_export.input_rules import MAX_GUIDANCE, MAX_PROMPT_BYTES, check_guidance

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_MAX_STEPS",
    "GenerationRequest",
    "INPUTS",
    "MAX_GUIDANCE",
    "MAX_PROMPT_BYTES",
    "MAX_REQUEST_BYTES",
    "MODEL_NAME",
    "OUTPUT",
    "RequestError",
    "Limits",
    "TensorSpec",
    "parse_json_request",
    "parse_rows",
]

MODEL_NAME = "toma_pipeline"
DEFAULT_MAX_STEPS = 50
#: guidance_scale when a request names none and the served pipeline declares no default of its own.
DEFAULT_GUIDANCE = 5.0
#: Largest JSON request body the HTTP front reads (a request is a few hundred bytes of prompt and ints).
MAX_REQUEST_BYTES = 1 << 20
#: Largest number of rows (generations) one request may carry.
MAX_ROWS = 256
#: Integer datatypes on the wire and their inclusive ranges: a JSON number is checked against its
#: field's range before it becomes that type (so steps = 2**32 + 2 is refused, not wrapped to 2).
INT_RANGES = {"INT64": (-(2**63), 2**63 - 1), "INT32": (-(2**31), 2**31 - 1)}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 / Triton datatype name ("BYTES", "INT64", ...)
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def triton_type(self) -> str:
        """The ``config.pbtxt`` data type (BYTES is TYPE_STRING there)."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("prompt", "BYTES", (1,)),
    TensorSpec("negative_prompt", "BYTES", (1,), optional=True),
    TensorSpec("seed", "INT64", (1,)),
    TensorSpec("steps", "INT32", (1,)),
    TensorSpec("guidance_scale", "FP32", (1,), optional=True),
)


def OUTPUT(height: int, width: int) -> TensorSpec:  # noqa: N802 (a spec, named like the constants)
    return TensorSpec("image", "UINT8", (height, width, 3))


class RequestError(ToMAError):
    """A request the contract refuses (answered with a 400-class error; the server keeps serving)."""


@dataclass(frozen=True)
class Limits:
    max_steps: int = DEFAULT_MAX_STEPS
    max_prompt_bytes: int = MAX_PROMPT_BYTES
    #: The served pipeline runs true classifier-free guidance, so a negative prompt means something.
    negative_prompts: bool = True
    #: guidance_scale of a request that names none (the served pipeline's own default).
    default_guidance: float = DEFAULT_GUIDANCE


@dataclass(frozen=True)
class GenerationRequest:
    """One generation (one row of one request)."""

    prompt: str
    seed: int
    steps: int
    guidance_scale: float
    negative_prompt: str | None = None

    def group_key(self) -> tuple[Any, ...]:
        """Generations that can share one pipeline call: same step count, guidance and conditioning kind."""
        return (self.steps, self.guidance_scale, self.negative_prompt is not None)


_DTYPES = {"prompt": np.object_, "negative_prompt": np.object_, "seed": np.int64, "steps": np.int32,
           "guidance_scale": np.float32}


def _text(value: Any, name: str, limits: Limits, *, allow_empty: bool) -> str:
    raw = value if isinstance(value, bytes) else (value.encode("utf-8") if isinstance(value, str) else None)
    if raw is None:
        raise RequestError(f"{name} must be BYTES (UTF-8 text), got {type(value).__name__}.")
    if len(raw) > limits.max_prompt_bytes:
        raise RequestError(f"{name} is {len(raw)} bytes; the limit is {limits.max_prompt_bytes} bytes of UTF-8.")
    if not raw.strip() and not allow_empty:
        raise RequestError(f"{name} is empty; send 1 to {limits.max_prompt_bytes} bytes of UTF-8 text.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"{name} is not valid UTF-8 ({err.reason} at byte {err.start}).") from None


def parse_rows(inputs: Mapping[str, np.ndarray | None], limits: Limits) -> list[GenerationRequest]:
    """The generations of one request, from its input arrays (each ``[n, 1]``; ``None`` = absent).

    Raises :class:`RequestError` naming the problem. Triton itself already refuses unknown or missing
    required inputs and wrong datatypes or shapes; this checks them again (the same parser serves the
    in-process tests) and then the values.
    """
    unknown = sorted(set(inputs) - set(_DTYPES))
    if unknown:
        raise RequestError(f"unknown inputs {unknown}; the inputs are {[s.name for s in INPUTS]}.")
    arrays: dict[str, np.ndarray] = {}
    rows: int | None = None
    for spec in INPUTS:
        value = inputs.get(spec.name)
        if value is None:
            if not spec.optional:
                raise RequestError(f"input {spec.name!r} ({spec.datatype} [1]) is missing.")
            continue
        arr = np.asarray(value)
        want = _DTYPES[spec.name]
        if (want is np.object_ and arr.dtype.kind not in "OSU") or (want is not np.object_ and arr.dtype != want):
            raise RequestError(f"input {spec.name!r} must be {spec.datatype}, got numpy dtype {arr.dtype}.")
        if arr.ndim != 2 or arr.shape[1] != 1 or arr.shape[0] < 1:
            raise RequestError(f"input {spec.name!r} must have shape [1] per row ([n, 1] batched), got {list(arr.shape)}.")
        if rows is not None and arr.shape[0] != rows:
            raise RequestError(f"input {spec.name!r} has {arr.shape[0]} rows, the others {rows}.")
        rows = arr.shape[0]
        arrays[spec.name] = arr
    assert rows is not None
    out = []
    for i in range(rows):
        prompt = _text(arrays["prompt"][i, 0], "prompt", limits, allow_empty=False)
        negative = None
        if "negative_prompt" in arrays:
            if not limits.negative_prompts:
                raise RequestError("negative_prompt is not supported by this pipeline (it runs without true "
                                   "classifier-free guidance); leave it out.")
            negative = _text(arrays["negative_prompt"][i, 0], "negative_prompt", limits, allow_empty=True)
        steps = int(arrays["steps"][i, 0])
        if not 1 <= steps <= limits.max_steps:
            raise RequestError(f"steps={steps} is outside 1..{limits.max_steps} (the server's --max-steps).")
        guidance = limits.default_guidance
        if "guidance_scale" in arrays:
            guidance = float(arrays["guidance_scale"][i, 0])
            try:
                check_guidance(guidance, "guidance_scale")
            except ToMAError as err:
                raise RequestError(f"guidance_scale={guidance}: {err}") from None
        out.append(GenerationRequest(prompt, int(arrays["seed"][i, 0]), steps, guidance, negative))
    return out


# -- KServe v2 JSON, checked before Triton's own parser (toma_export.serving.front) -------------------
def _flat(data: Any) -> list[Any]:
    """KServe v2 ``data``: a flat list, or nested lists in row-major order."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


#: What to send instead, per integer input (its own rule; parse_rows checks it after conversion).
_WANT = {"steps": "steps from 1 to the server's --max-steps", "seed": "a seed in [0, 2**63)"}


def _json_input(entry: Any, index: int) -> tuple[str, np.ndarray]:
    """One element of ``inputs`` as (name, array), every value checked against its datatype's range
    before conversion."""
    if not isinstance(entry, dict):
        raise RequestError(f"inputs[{index}] is a {type(entry).__name__}; each input is an object with name, shape, "
                           "datatype and data.")
    spec = next((s for s in INPUTS if s.name == entry.get("name")), None)
    if spec is None:
        raise RequestError(f"inputs[{index}] is named {entry.get('name')!r}; the inputs are {[s.name for s in INPUTS]}.")
    name = spec.name
    if entry.get("datatype") != spec.datatype:
        raise RequestError(f"input {name!r} must have datatype {spec.datatype}, got {entry.get('datatype')!r}.")
    shape, data = entry.get("shape"), entry.get("data")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and not isinstance(d, bool)
                                                                 and d >= 1 for d in shape) and shape[1] == 1):
        raise RequestError(f"input {name!r} must have shape [n, 1] (n rows of [1]), got {shape!r}.")
    if shape[0] > MAX_ROWS:
        raise RequestError(f"input {name!r} has {shape[0]} rows; one request carries at most {MAX_ROWS}.")
    if not isinstance(data, list):
        raise RequestError(f"input {name!r} needs 'data' as a JSON list of {shape[0]} value(s), got "
                           f"{type(data).__name__}.")
    values = _flat(data)
    if len(values) != shape[0]:
        raise RequestError(f"input {name!r} has shape {shape} ({shape[0]} value(s)) but {len(values)} value(s) in "
                           "'data'; make them agree.")
    if spec.datatype in INT_RANGES:
        lo, hi = INT_RANGES[spec.datatype]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise RequestError(f"input {name!r} is {spec.datatype}: {v!r} is not an integer; send "
                                   f"{_WANT.get(name, 'an integer')} as a JSON number without a fraction.")
            if not lo <= v <= hi:
                raise RequestError(f"input {name!r}={v} is outside the {spec.datatype} range [{lo}, {hi}] (it would not "
                                   f"arrive as sent); send {_WANT.get(name, 'a value in that range')}.")
        return name, np.array(values, dtype=_DTYPES[name]).reshape(shape)
    if spec.datatype == "FP32":
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RequestError(f"input {name!r} is FP32: {v!r} is not a number.")
        return name, np.array(values, dtype=np.float64).astype(np.float32).reshape(shape)
    for v in values:
        if not isinstance(v, str):
            raise RequestError(f"input {name!r} is BYTES: {v!r} is not a JSON string (UTF-8 text).")
    return name, np.array([v.encode("utf-8", "surrogatepass") for v in values], dtype=np.object_).reshape(shape)


def parse_json_request(body: bytes, limits: Limits) -> list[GenerationRequest]:
    """A KServe v2 JSON inference request body, checked as :func:`parse_rows` checks arrays, plus what
    only the JSON shows: valid JSON, an object with an ``inputs`` list, each value of its datatype and
    within its range before any conversion, ``shape`` agreeing with ``data``. Raises :class:`RequestError`."""
    if not body.strip():
        raise RequestError('the request body is empty; send a KServe v2 JSON request: {"inputs": [{"name": "prompt", '
                           '"shape": [1, 1], "datatype": "BYTES", "data": ["a cat"]}, ...]}.')
    if len(body) > MAX_REQUEST_BYTES:
        raise RequestError(f"the request body is {len(body)} bytes; a JSON request is at most {MAX_REQUEST_BYTES}.")
    import json

    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RequestError(f"the request body is not valid JSON ({str(err)[:120]}); send a KServe v2 JSON object "
                           'with an "inputs" list.') from None
    if not isinstance(request, dict):
        raise RequestError(f"the request body is a JSON {type(request).__name__}; send a KServe v2 JSON object with "
                           'an "inputs" list.')
    entries = request.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise RequestError('the request has no "inputs" list; send {"inputs": [prompt, seed, steps, ...]} (the '
                           f"inputs are {[s.name for s in INPUTS]}).")
    arrays: dict[str, np.ndarray | None] = {}
    for i, entry in enumerate(entries):
        name, array = _json_input(entry, i)
        if name in arrays:
            raise RequestError(f"input {name!r} is given twice.")
        arrays[name] = array
    return parse_rows(arrays, limits)
