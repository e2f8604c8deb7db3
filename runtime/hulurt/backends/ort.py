"""onnxruntime sessions: CPU by default, the CUDA and TensorRT execution providers when the installed
onnxruntime has them. onnxruntime is imported only when this module is."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt.backends.base import GPU_PREFERENCE, BackendError, BackendOptions

log = logging.getLogger(__name__)

_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            "onnxruntime is not installed; install the runtime with the 'ort' extra "
            "(pip install 'huluexport-runtime[ort]', or '[ort-gpu]' for CUDA/TensorRT)"
        ) from exc
    return onnxruntime


def available() -> list[str]:
    """Our provider names that the installed onnxruntime offers, best first."""
    have = set(_ort().get_available_providers())
    return [name for name in (*GPU_PREFERENCE, "cpu") if _EP[name] in have]


def resolve_provider(requested: str) -> str:
    """'auto' -> the best available; an explicit name must be available or we say what is."""
    have = available()
    if requested == "auto":
        return have[0]
    if requested not in have:
        raise BackendError(
            f"provider {requested!r} was requested but this onnxruntime offers only {', '.join(have)}; "
            "install onnxruntime-gpu (and TensorRT for 'tensorrt') or pass --provider cpu"
        )
    return requested


def trt_options(path: Path | None, options: BackendOptions) -> dict[str, Any]:
    """TensorRT EP options. Explicit profile shapes (min/opt/max of every input) from the manifest beside `path`
    (hulurt/engines/profiles.py, the same shapes `python -m hulurt.engines` builds with), so the EP builds one
    engine per graph instead of rebuilding as the context grows; with `trt_cache_dir` its engine and timing
    caches persist there between runs."""
    opts: dict[str, Any] = {"device_id": options.device_id}
    if options.trt_cache_dir:
        opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=options.trt_cache_dir,
                    trt_timing_cache_enable=True, trt_timing_cache_path=options.trt_cache_dir)
    if path is not None and (path.parent / "manifest.json").is_file():
        from hulurt.engines.profiles import profile_shapes
        from hulurt.manifest import load_manifest

        m = load_manifest(path.parent, verify_hashes=False)
        spec = m.specs().get(path.stem)
        if spec is not None:
            prof = profile_shapes(spec, m.dim_ranges)
            for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
                opts[key] = ",".join(f"{n}:{'x'.join(str(d) for d in t[i])}" for n, t in prof.items())
    return opts


def provider_list(name: str, options: BackendOptions, path: Path | None = None) -> list[Any]:
    """The onnxruntime providers argument: the chosen one first, CPU last as the fallback for unsupported nodes."""
    # use_tf32 0: onnxruntime's CUDA provider otherwise runs fp32 MatMul/Gemm/Conv in TF32 (inputs rounded to a
    # 10-bit mantissa, as fp16) on Ampere and later; an fp32 bundle is the exact form and gets fp32 math, like
    # PyTorch's matmul default. The fp16 bundles (the GPU speed form) have no fp32 matmuls to change.
    cuda_opts: dict[str, Any] = {"device_id": options.device_id, "use_tf32": "0"}
    if options.cuda_graph:  # only sessions whose bound inputs/outputs keep fixed addresses (static_decode)
        cuda_opts["enable_cuda_graph"] = "1"
    cuda = ("CUDAExecutionProvider", cuda_opts)
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name == "cuda":
        return [cuda, "CPUExecutionProvider"]
    return [("TensorrtExecutionProvider", trt_options(path, options)), cuda, "CPUExecutionProvider"]


def session_options(options: BackendOptions) -> Any:
    """Latency-tuned: full graph optimisation, one request at a time (sequential execution, one inter-op
    thread), intra-op threads as asked, spinning kept on so the short decode steps do not pay thread wake-ups;
    memory patterns off (below)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    # No memory patterns: onnxruntime records the allocations of each new set of input shapes and, from the
    # next call with those shapes on, holds one block for them on top of the arena that served the first call.
    # A volume's vision batches (and the decode steps, whose past grows every step) keep that block resident:
    # a second 16-frame vision call of the 160-slice CT grew RSS by 0.70 GiB with patterns and by 0 without,
    # both calls 0.81 GiB above the session (benchmarks/results/volume_memory.md).
    so.enable_mem_pattern = False
    if options.threads:
        so.intra_op_num_threads = options.threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.log_severity_level = 3
    return so


class OrtSession:
    """Session protocol over onnxruntime.InferenceSession, plus IO binding for device-resident tensors."""

    def __init__(self, path: Path, options: BackendOptions) -> None:
        if not path.is_file():
            raise BackendError(f"{path}: graph file not found")
        ort = _ort()
        self.path = path
        self.provider = resolve_provider(options.provider)
        self.options = options
        self.cuda_graph = bool(options.cuda_graph) and self.provider == "cuda"  # what the session really does
        try:
            self._sess = self._open(ort, path, options)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            if not self.cuda_graph:
                raise BackendError(f"{path}: onnxruntime could not load this graph: {exc}") from exc
            # capture needs every compute node on the CUDA EP and no Memcpy node; the step still runs without it
            self.drop_cuda_graph(f"refused by onnxruntime: {exc}")
            options = self.options
        self._check_provider(ort, options)
        self._run_options = None
        if options.release_after_run:
            # onnxruntime's arena keeps the peak of a call (a 16-frame vision batch of the 160-slice CT: 0.81 GiB
            # above the session, RSS unchanged after the call); shrinkage returns its free regions at the end of
            # each call (0.06 GiB left), so the decoder's prefill runs in the memory the vision calls used
            # (benchmarks/results/volume_memory.md)
            self._run_options = ort.RunOptions()
            arenas = ["cpu:0"] + ([f"gpu:{options.device_id}"] if self.provider == "cuda" else [])
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(arenas))
        self._inputs = [i.name for i in self._sess.get_inputs()]
        self._outputs = [o.name for o in self._sess.get_outputs()]
        log.info("opened %s on %s (%s)", path.name, self.provider, self._sess.get_providers()[0])

    def drop_cuda_graph(self, reason: str) -> None:
        """Reopen this session without CUDA graph capture (onnxruntime refused it when the session opened, or a
        capture failed in a run: hulurt.static_decode). Bindings made on the old session must be made again."""
        log.warning("%s: CUDA graph %s; decoding without it", self.path.name, reason)
        self.cuda_graph = False
        self.options = replace(self.options, cuda_graph=False)
        try:
            self._sess = self._open(_ort(), self.path, self.options)
        except Exception as exc:
            raise BackendError(f"{self.path}: onnxruntime could not load this graph: {exc}") from exc

    def _open(self, ort: Any, path: Path, options: BackendOptions) -> Any:
        return ort.InferenceSession(os.fspath(path), sess_options=session_options(options),
                                    providers=provider_list(self.provider, options, path))

    def _check_provider(self, ort: Any, options: BackendOptions) -> None:
        """onnxruntime falls back to the CPU quietly when a GPU provider does not load (no driver, a missing
        libcublas or libcudnn): a run would then be a CPU run under a GPU name. An explicit request fails with
        the reason; "auto" goes on as a CPU session and says so."""
        want = _EP[self.provider]
        got = self._sess.get_providers()
        if self.provider == "cpu" or got[0] == want:
            return
        msg = (f"{self.path}: onnxruntime {ort.__version__} lists {want} but the session runs on {got}: the "
               "provider did not load (driver, CUDA/cuDNN libraries or device; onnxruntime's log above says which)")
        if options.provider != "auto":
            raise BackendError(msg + "; pass --provider cpu to run on the CPU")
        self.provider = next((k for k, v in _EP.items() if v == got[0]), "cpu")
        log.warning("%s; running on %s", msg, self.provider)
        self.cuda_graph = self.cuda_graph and self.provider == "cuda"

    @property
    def on_device(self) -> bool:
        """True when the graph runs on a GPU provider, so IO binding can keep tensors on the device."""
        return self.provider in ("cuda", "tensorrt")

    @property
    def device_id(self) -> int:
        return self.options.device_id

    @property
    def device_type(self) -> str:
        """Where IO-bound outputs live: "cuda" on GPU providers, else "cpu" (the same code path, testable here)."""
        return "cuda" if self.on_device else "cpu"

    @property
    def session(self) -> Any:
        """The onnxruntime.InferenceSession (hulurt.static_decode binds its buffers to it once)."""
        return self._sess

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def declared_io(self) -> tuple[list[tuple[str, str, tuple[Any, ...]]], list[tuple[str, str, tuple[Any, ...]]]]:
        """(name, numpy dtype name, shape) of the graph's inputs and outputs as the file declares them (shape
        axes are ints, dim names or None), for hulurt.manifest_limits.check_graph_io."""
        from hulurt.manifest_limits import ORT_TYPES

        def conv(args: Any) -> list[tuple[str, str, tuple[Any, ...]]]:
            return [(a.name, ORT_TYPES.get(a.type, a.type), tuple(a.shape)) for a in args]

        return conv(self._sess.get_inputs()), conv(self._sess.get_outputs())

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
        outs = self._sess.run(None, feeds, self._run_options)
        return dict(zip(self._outputs, outs))

    # ---- IO binding (GPU providers): inputs may be OrtValues already on the device ------------------

    def run_bound(
        self, feeds: dict[str, Any], device_outputs: tuple[str, ...]
    ) -> tuple[dict[str, NDArray[np.generic]], dict[str, Any]]:
        """Run with IO binding. `feeds` values are numpy arrays or onnxruntime OrtValues (e.g. the previous
        step's KV outputs, still on the GPU). Outputs named in `device_outputs` stay on the device and come
        back as OrtValues; the others are copied to host numpy."""
        ort = _ort()
        binding = self._sess.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._outputs:
            if name in device_outputs:
                binding.bind_output(name, self.device_type, self.options.device_id)
            else:
                binding.bind_output(name, "cpu")
        self._sess.run_with_iobinding(binding, self._run_options)
        values = binding.get_outputs()
        host: dict[str, NDArray[np.generic]] = {}
        dev: dict[str, Any] = {}
        for name, val in zip(self._outputs, values):
            if name in device_outputs:
                dev[name] = val
            else:
                host[name] = val.numpy()
        return host, dev

    def empty_device(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        """A device OrtValue of the given shape (used for the zero-length past of the prefill)."""
        ort = _ort()
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device_type, self.options.device_id)
