"""Build a TensorRT engine from an ONNX file (TensorRT 10 Python API).

Precision fp32 / fp16 / bf16, one optimisation profile per entry of ``profiles`` (min/opt/max shape
per input, e.g. one for batch 1-4 at 1024², one for 768²), a timing cache file reused across
builds, the builder optimisation level, and an optional refittable engine. ``toma`` selection
nodes are rewritten into TensorRT-plugin form and the plugin is registered before parsing.

Unverified on a GPU (none here): written against the TensorRT 10 API as typed by ``tensorrt-stubs``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toma_export.engines.trt_engine._trt import require_tensorrt
from toma_export.errors import ToMAConfigError, ToMAError
from toma_export.vocabulary import PRECISIONS

if TYPE_CHECKING:  # typed by tensorrt-stubs; the real module is imported after require_tensorrt()
    import tensorrt as trt

Shape = tuple[int, ...]


class EngineBuildError(ToMAError):
    """TensorRT could not parse the model or build the engine."""


@dataclasses.dataclass(frozen=True)
class InputProfile:
    """Shape range of one input in one optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ToMAConfigError(f"profile ranks differ: min {self.min}, opt {self.opt}, max {self.max}")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not 0 < lo <= mid <= hi:
                raise ToMAConfigError(f"profile needs 0 < min <= opt <= max per dim; got {self.min} {self.opt} {self.max}")

    @classmethod
    def fixed(cls, shape: Sequence[int]) -> InputProfile:
        s = tuple(int(d) for d in shape)
        return cls(s, s, s)


#: One optimisation profile: input name -> shape range.
Profile = Mapping[str, InputProfile]


@dataclasses.dataclass
class BuildOptions:
    precision: str = "fp16"
    profiles: Sequence[Profile] = ()
    timing_cache: Path | None = None
    optimization_level: int = 3
    refit: bool = False
    workspace_bytes: int | None = None
    #: Selection plugin: embed PTX (engine runs without Python, e.g. under trtexec) or call back into Python.
    plugin_aot: bool = True
    #: Disallow TF32 for fp32 builds (keeps fp32 engines within 1e-4 relative of eager ToMA).
    strict_fp32: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ToMAConfigError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if not 0 <= self.optimization_level <= 5:
            raise ToMAConfigError(f"builder optimisation level {self.optimization_level} is outside 0..5")


def _prepare_onnx(onnx_path: Path, aot: bool, workdir: Path) -> tuple[Path, int]:
    """The file to parse: ``onnx_path`` itself, or a copy with selection nodes in TensorRT form.

    The copy is written next to the original's external data (same folder) so relative
    external-data references keep resolving; it is removed after parsing by the caller.
    """
    import onnx

    from plugins.onnx_mapping import to_tensorrt_nodes

    model = onnx.load(str(onnx_path), load_external_data=False)
    rewritten, n = to_tensorrt_nodes(model, aot=aot)
    if n == 0:
        return onnx_path, 0
    fd, name = tempfile.mkstemp(prefix=f".{onnx_path.stem}.trt-", suffix=".onnx", dir=onnx_path.parent)
    os.close(fd)
    onnx.save(rewritten, name)
    return Path(name), n


def _parse(network: trt.INetworkDefinition, logger: trt.ILogger, path: Path) -> None:
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        lines = "\n".join(f"  node {e.node()} ({e.node_name()}, {e.node_operator()}): {e.desc()}" for e in errors)
        raise EngineBuildError(f"TensorRT could not parse {path.name}:\n{lines}")


def build_engine(onnx_path: str | Path, out_path: str | Path | None = None, options: BuildOptions | None = None) -> bytes:
    """Build a serialized engine from ``onnx_path``; write it to ``out_path`` atomically when given."""
    require_tensorrt()
    import tensorrt as trt

    opts = options or BuildOptions()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ToMAConfigError(f"ONNX file {onnx_path} does not exist")

    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parse_path, n_plugins = _prepare_onnx(onnx_path, opts.plugin_aot, onnx_path.parent)
    try:
        if n_plugins:
            from plugins.tensorrt_plugin import register_plugin

            register_plugin()
        _parse(network, logger, parse_path)
    finally:
        if parse_path != onnx_path:
            parse_path.unlink(missing_ok=True)

    config = builder.create_builder_config()
    _configure(builder, network, config, opts)

    cache = None
    if opts.timing_cache is not None:
        blob = opts.timing_cache.read_bytes() if opts.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {onnx_path.name} (see the log above; "
            "run with verbose=True for details)"
        )
    data = bytes(memoryview(serialized))
    if cache is not None and opts.timing_cache is not None:
        _write_atomic(opts.timing_cache, bytes(memoryview(cache.serialize())))
    if out_path is not None:
        _write_atomic(Path(out_path), data)
    return data


def _configure(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    opts: BuildOptions,
) -> None:
    import tensorrt as trt

    if opts.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif opts.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif opts.strict_fp32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    config.builder_optimization_level = opts.optimization_level
    if opts.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_bytes))

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t.name for t in inputs if any(t.shape[i] < 0 for i in range(len(t.shape)))]
    if not opts.profiles:
        if dynamic:
            raise ToMAConfigError(
                f"inputs {dynamic} have dynamic dimensions; give optimisation profiles (min/opt/max shapes)"
            )
        return
    names = {t.name for t in inputs}
    for i, prof in enumerate(opts.profiles):
        unknown = sorted(set(prof) - names)
        if unknown:
            raise ToMAConfigError(f"profile {i} names inputs {unknown} that the network does not have ({sorted(names)})")
        missing = sorted(set(dynamic) - set(prof))
        if missing:
            raise ToMAConfigError(f"profile {i} gives no shape range for dynamic inputs {missing}")
        profile = builder.create_optimization_profile()
        for name, rng in prof.items():
            profile.set_shape(name, trt.Dims(list(rng.min)), trt.Dims(list(rng.opt)), trt.Dims(list(rng.max)))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"TensorRT rejected optimisation profile {i}: {dict(prof)}")


def refit_engine(engine_bytes: bytes, onnx_path: str | Path) -> bytes:
    """Refit a refittable engine with the weights of ``onnx_path`` (same graph); return the new plan."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError("could not deserialize the engine to refit")
    refitter = trt.Refitter(engine, logger)
    parser_refitter = trt.OnnxParserRefitter(refitter, logger)
    if not parser_refitter.refit_from_file(str(onnx_path)):
        errors = [parser_refitter.get_error(i).desc() for i in range(parser_refitter.num_errors)]
        raise EngineBuildError(f"refit from {onnx_path} failed: {errors}")
    if not refitter.refit_cuda_engine():
        raise EngineBuildError("TensorRT refused the refit (engine built without refit=True?)")
    return bytes(memoryview(engine.serialize()))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
