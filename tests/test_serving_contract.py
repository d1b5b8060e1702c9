"""Serving without a server: request parsing, per-request answers, batched generation vs solo, configs."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from toma_export.serving.backend import answer, model_parameters
from toma_export.serving.contract import GenerationRequest, Limits, RequestError, parse_rows
from toma_export.serving.repository import _denoiser_config, pipeline_config

LIMITS = Limits(max_steps=10, max_prompt_bytes=64)


def _req(prompt: object = b"a cat", seed: object = 1, steps: object = 2, **extra: object) -> dict[str, np.ndarray | None]:
    out: dict[str, np.ndarray | None] = {
        "prompt": np.array([[prompt]], dtype=object),
        "seed": np.array([[seed]], dtype=np.int64) if isinstance(seed, int) else np.array([[seed]]),
        "steps": np.array([[steps]], dtype=np.int32),
    }
    for k, v in extra.items():
        out[k] = v  # type: ignore[assignment]
    return out


def test_parse_good_request_and_defaults() -> None:
    (r,) = parse_rows(_req(), LIMITS)
    assert r == GenerationRequest("a cat", 1, 2, 5.0, None)
    (r,) = parse_rows(_req(negative_prompt=np.array([[b""]], dtype=object),
                           guidance_scale=np.array([[1.5]], np.float32)), LIMITS)
    assert r.negative_prompt == "" and r.guidance_scale == 1.5


@pytest.mark.parametrize("inputs, message", [
    (_req(steps=0), "steps=0 is outside 1..10"),
    (_req(steps=11), "steps=11 is outside 1..10"),
    (_req(prompt=b""), "prompt is empty"),
    (_req(prompt=b"   "), "prompt is empty"),
    (_req(prompt=b"x" * 65), "65 bytes; the limit is 64"),
    (_req(prompt=b"\xff\xfe"), "not valid UTF-8"),
    (_req(seed=1.5), "'seed' must be INT64"),
    ({k: v for k, v in _req().items() if k != "prompt"}, "'prompt' (BYTES [1]) is missing"),
    ({**_req(), "steps": np.array([[1, 2]], np.int32)}, "shape [1] per row"),
    ({**_req(), "guidance_scale": np.array([[np.nan]], np.float32)}, "guidance_scale=nan"),
    ({**_req(), "colour": np.array([[1]])}, "unknown inputs"),
])
def test_parse_refuses_malformed(inputs: dict[str, np.ndarray | None], message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_rows(inputs, LIMITS)


def test_answer_fails_only_the_bad_request_of_a_batch() -> None:
    seen: list[list[GenerationRequest]] = []

    def gen(reqs: list[GenerationRequest]) -> list[np.ndarray]:
        seen.append(list(reqs))
        return [np.full((4, 4, 3), r.seed, np.uint8) for r in reqs]

    two_rows = {"prompt": np.array([[b"a"], [b"b"]], dtype=object), "seed": np.array([[7], [8]], np.int64),
                "steps": np.array([[2], [2]], np.int32)}
    out = answer(gen, LIMITS, [_req(seed=3), _req(steps=0), two_rows])
    assert isinstance(out[1], RequestError)
    assert out[0].shape == (1, 4, 4, 3) and int(out[0][0, 0, 0, 0]) == 3  # type: ignore[union-attr]
    assert [int(x[0, 0, 0]) for x in out[2]] == [7, 8]  # type: ignore[union-attr]
    assert len(seen) == 1 and [r.seed for r in seen[0]] == [3, 7, 8]  # one call for the good ones


def test_answer_generation_failure_is_per_batch_and_not_a_request_error() -> None:
    def boom(reqs: list[GenerationRequest]) -> list[np.ndarray]:
        raise ValueError("engine on fire")

    out = answer(boom, LIMITS, [_req(), _req(steps=0)])
    assert isinstance(out[0], RuntimeError) and "engine on fire" in str(out[0])
    assert isinstance(out[1], RequestError)


def test_configs_parse_as_triton_model_configs() -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    text = pipeline_config(height=64, width=96, max_batch=4, max_queue_delay_ms=5, max_queue_size=3, instances=2,
                           parameters={"mode": "bls", "max_steps": 7})
    cfg = text_format.Parse(text, mc.ModelConfig())
    assert cfg.name == "toma_pipeline" and cfg.backend == "python" and cfg.max_batch_size == 4
    assert [i.name for i in cfg.input] == ["prompt", "negative_prompt", "seed", "steps", "guidance_scale"]
    assert [i.optional for i in cfg.input] == [False, True, False, False, True]
    assert list(cfg.output[0].dims) == [64, 96, 3] and cfg.output[0].data_type == mc.TYPE_UINT8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == 3
    assert cfg.dynamic_batching.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert cfg.instance_group[0].count == 2
    from google.protobuf.json_format import MessageToDict

    assert model_parameters(MessageToDict(cfg, preserving_proto_field_name=True)) == {"mode": "bls", "max_steps": "7"}
    den = _denoiser_config("toma_denoiser_select", "onnxruntime_onnx",
                           [{"name": "sample", "triton": "TYPE_FP32", "dims": [-1, 4, 8, 8]},
                            {"name": "timestep", "triton": "TYPE_FP32", "dims": []}],
                           [{"name": "out", "triton": "TYPE_FP32", "dims": [-1, 4, 8, 8]}], 1, "KIND_GPU")
    dc = text_format.Parse(den, mc.ModelConfig())
    assert dc.platform == "onnxruntime_onnx" and dc.max_batch_size == 0
    assert list(dc.input[0].dims) == [-1, 4, 8, 8] and list(dc.input[1].reshape.shape) == []
    assert dc.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_batched_generation_equals_solo_in_process() -> None:
    """The library-level contract on float images: each batched row equals its solo call (<= 1e-3)."""
    from toma_export.serving.pipeline import generator_for_source

    gen = generator_for_source("sdxl-tiny", height=64, width=64)
    reqs = [GenerationRequest(f"prompt {i}", 100 + i, 2, 5.0 if i % 2 else 1.0, "blurry" if i == 3 else None)
            for i in range(5)]
    solo = [gen.generate_float([r])[0] for r in reqs]
    calls = gen.calls
    batched = gen.generate_float(reqs)
    assert gen.calls - calls == 3  # groups: (g=1, no neg), (g=5, no neg), (g=5, neg)
    for s, b in zip(solo, batched):
        assert float((s - b).abs().max()) <= 1e-3
    again = gen.generate_float([reqs[0]])[0]  # nothing carried from the batch
    assert float((again - solo[0]).abs().max()) == 0.0


# --- KServe v2 JSON, as the HTTP front checks it before Triton (toma_export.serving.front) -----------
def _json(**over: object) -> bytes:
    import json

    inputs = {"prompt": {"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": ["a cat"]},
              "seed": {"name": "seed", "shape": [1, 1], "datatype": "INT64", "data": [1]},
              "steps": {"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [2]}}
    for k, v in over.items():
        if v is None:
            inputs.pop(k)
        elif isinstance(v, dict):
            inputs[k] = v
        else:
            inputs[k] = {**inputs[k], "data": [v]}
    return json.dumps({"inputs": list(inputs.values())}).encode()


def test_json_request_parses_like_arrays() -> None:
    from toma_export.serving.contract import parse_json_request

    assert parse_json_request(_json(), LIMITS) == parse_rows(_req(), LIMITS)
    two = _json(prompt={"name": "prompt", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]},
                seed={"name": "seed", "shape": [2, 1], "datatype": "INT64", "data": [[2**63 - 1], [0]]},
                steps={"name": "steps", "shape": [2, 1], "datatype": "INT32", "data": [3, 4]},
                guidance_scale={"name": "guidance_scale", "shape": [2, 1], "datatype": "FP32", "data": [1, 7.5]})
    rows = parse_json_request(two, LIMITS)
    assert [(r.prompt, r.seed, r.steps, r.guidance_scale) for r in rows] == [("a", 2**63 - 1, 3, 1.0), ("b", 0, 4, 7.5)]


@pytest.mark.parametrize("body, message", [
    (b"", "the request body is empty"),
    (b"   \n", "the request body is empty"),
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    (b"[1, 2]", "is a JSON list"),
    (b'"inputs"', "is a JSON str"),
    (b"{}", 'no "inputs" list'),
    (b'{"inputs": []}', 'no "inputs" list'),
    (b'{"inputs": {"name": "prompt"}}', 'no "inputs" list'),
    (b'{"inputs": [7]}', "inputs[0] is a int"),
    (_json(steps="two"), "'steps' is INT32: 'two' is not an integer"),
    (_json(steps=2.5), "'steps' is INT32: 2.5 is not an integer"),
    (_json(steps=True), "'steps' is INT32: True is not an integer"),
    (_json(seed=1.5), "'seed' is INT64: 1.5 is not an integer"),
    (_json(seed="7"), "'seed' is INT64: '7' is not an integer"),
    (_json(seed=2**63), "'seed'=9223372036854775808 is outside the INT64 range"),
    (_json(seed=-(2**63) - 1), "outside the INT64 range"),
    (_json(steps=2**32 + 2), "'steps'=4294967298 is outside the INT32 range"),
    (_json(steps=2**31), "outside the INT32 range"),
    (_json(steps=11), "steps=11 is outside 1..10"),
    (_json(prompt=5), "'prompt' is BYTES: 5 is not a JSON string"),
    (_json(prompt="\ud800"), "prompt is not valid UTF-8"),
    (_json(prompt=None), "'prompt' (BYTES [1]) is missing"),
    (_json(steps={"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [1, 2]}), "shape [1, 1] (1 value(s)) but 2"),
    (_json(steps={"name": "steps", "shape": [2, 1], "datatype": "INT32", "data": [1]}), "shape [2, 1] (2 value(s)) but 1"),
    (_json(steps={"name": "steps", "shape": [1], "datatype": "INT32", "data": [1]}), "shape [n, 1]"),
    (_json(steps={"name": "steps", "shape": [1, 1], "datatype": "INT64", "data": [1]}), "datatype INT32, got 'INT64'"),
    (_json(steps={"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": 1}), "'data' as a JSON list"),
    (_json(guidance_scale={"name": "guidance_scale", "shape": [1, 1], "datatype": "FP32", "data": ["5"]}), "not a number"),
    (_json(guidance_scale={"name": "guidance_scale", "shape": [1, 1], "datatype": "FP32", "data": [-5]}), "0..50"),
    (_json(colour={"name": "colour", "shape": [1, 1], "datatype": "INT32", "data": [1]}), "named 'colour'"),
])
def test_json_request_refusals_name_the_problem(body: bytes, message: str) -> None:
    from toma_export.serving.contract import parse_json_request

    with pytest.raises(RequestError) as info:
        parse_json_request(body, LIMITS)
    assert message in str(info.value), str(info.value)


def test_integers_are_checked_before_conversion_not_wrapped() -> None:
    from toma_export.serving.contract import parse_json_request

    for steps in (2**32 + 2, 2**64 + 2, -(2**32) + 2):  # each would become 2 as INT32
        with pytest.raises(RequestError, match="outside the INT32 range"):
            parse_json_request(_json(steps=steps), LIMITS)


@pytest.mark.parametrize(("model", "negatives", "guidance"), [("sdxl-tiny", True, 5.0), ("flux-tiny", False, 3.5)])
def test_limits_come_from_the_served_pipeline(model: str, negatives: bool, guidance: float) -> None:
    """Negative prompts only where the pipeline runs true classifier-free guidance (its spec); the default
    guidance is the pipeline's own ``__call__`` default (diffusers: SDXL 5.0, Flux 3.5)."""
    from toma_export.models.pipelines import build_pipeline
    from toma_export.serving.pipeline import BatchedGenerator

    limits = BatchedGenerator(build_pipeline(model), 64, 64).limits(10, 64)
    assert (limits.negative_prompts, limits.default_guidance) == (negatives, guidance)
    (r,) = parse_rows(_req(), limits)
    assert r.guidance_scale == guidance
    if not negatives:
        with pytest.raises(RequestError, match="negative_prompt is not supported by this pipeline"):
            parse_rows(_req(negative_prompt=np.array([[b"blurry"]], dtype=object)), limits)
