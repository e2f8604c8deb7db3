"""The "gqa-static" decoder form at run time: which decoder piece a provider gets, and the decode loop's
device side for `decoder_gqa` (contract in hulurt.contract; the export side is huluexport/export/gqa.py).

`StaticDecoder` owns, for the life of a Model (not per request):
- one K and one V buffer per layer, [1, kv_heads, capacity, head_dim], allocated once on the session's device
  and bound as both `past_key_values.*` and `present.*`: GroupQueryAttention writes the new rows in place;
- fixed one-token input buffers (token id, inputs_embeds, position_ids, seqlens_k) and output buffers (logits,
  next_token), bound once to one IOBinding per session, so a decode step only updates a few bytes in place and
  replays. With `cuda_graph=True` (CUDA EP option enable_cuda_graph) onnxruntime captures the decode step of the
  decoder once (graph id 1) and replays it; the prefill runs uncaptured (graph id -1).
Only the chosen token comes back to the host: the graph's `next_token` output (argmax on the device) for plain
greedy decoding, else the sampling graph's token (`sample`, hulurt.device_sample) when device sampling is on (by
default on GPU providers); otherwise the logits row is copied for the host sampler.

The same code runs on the CPU provider (buffers are numpy arrays bound without copies), which is how CI tests
it; docs/gpu.md has the GPU side and the measurement script.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hulurt import device_memory
from hulurt.capture_gate import GATE
from hulurt.contract import DECODER_FORMS, Dims, kv_names
from hulurt.device_rows import RowSlice
from hulurt.errors import ContextLengthError, ContractError, DeviceMemoryError, HuluRuntimeError
from hulurt.sampling import Sampler, check_logits

log = logging.getLogger(__name__)

FORMS = tuple(DECODER_FORMS)  # "v1-concat", "gqa-static"
GRAPH_DECODE = "1"  # gpu_graph_id of the captured decode step
GRAPH_NONE = "-1"  # runs that must not be captured (prefill: its shapes change)
KV_ROOM_FRACTION = 0.5  # the capacity check_kv_room suggests takes this share of the free memory (the rest:
# the prefill's activations, the vision batches, onnxruntime's workspace)


# activation dtypes for which onnxruntime's CUDA provider has a GroupQueryAttention kernel
# (onnxruntime/contrib_ops/cuda/bert/group_query_attention.cc registers MLFloat16 and BFloat16, no float)
CUDA_GQA_DTYPES = ("float16", "bfloat16")


def select_decoder(provider: str, pieces: set[str] | frozenset[str], force: str | None = None,
                   act_dtype: str = "float16") -> str:
    """The decoder piece for a resolved provider: "decoder_gqa" on the CUDA EP when the bundle has it and its
    activations are fp16/bf16 (fixed shapes and addresses, CUDA graphs), "decoder" (v1) for TensorRT (it cannot
    build GroupQueryAttention), for the CPU provider, where v1 is the measured default, and for an fp32 bundle
    on CUDA (no fp32 GroupQueryAttention kernel there: the op would run on the CPU, with the KV buffers copied
    both ways every step); either form when the bundle has only one.
    `force` ("v1-concat" | "gqa-static") overrides, e.g. for tests and benchmarks."""
    if force is not None:
        if force not in DECODER_FORMS:
            raise ContractError(f"decoder form {force!r} is unknown; expected one of {', '.join(DECODER_FORMS)}")
        piece = DECODER_FORMS[force]
        if piece not in pieces:
            raise ContractError(
                f"decoder form {force!r} was asked for but this bundle has no {piece!r} piece (it has "
                f"{sorted(p for p in pieces if p.startswith('decoder'))}); rebuild with "
                f"`huluexport build --decoder-form {force}`"
            )
        return piece
    have = [p for p in (DECODER_FORMS["gqa-static"], DECODER_FORMS["v1-concat"]) if p in pieces]
    if not have:
        raise ContractError(
            f"a bundle needs a decoder piece ({', '.join(DECODER_FORMS.values())}); it has {sorted(pieces)}"
        )
    if provider == "cuda" and act_dtype in CUDA_GQA_DTYPES:
        return have[0]
    return DECODER_FORMS["v1-concat"] if DECODER_FORMS["v1-concat"] in pieces else have[0]


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def check_kv_room(need: int, capacity: int, free: int | None, device_id: int, what: str) -> None:
    """DeviceMemoryError when `what` (`need` bytes for `capacity` tokens) exceeds the `free` bytes of CUDA device
    `device_id` (None: unknown, no check), naming the capacity that takes KV_ROOM_FRACTION of the free memory."""
    if free is None:
        return
    fit = int(free * KV_ROOM_FRACTION) // (need // capacity)
    if need <= free:
        if need > free * KV_ROOM_FRACTION:
            log.warning("%s take %.2f of the %.2f GiB free on CUDA device %d, leaving little for activations; "
                        "kv_capacity=%d / --kv-capacity %d would take half", what, need / 2**30, free / 2**30,
                        device_id, fit, fit)
        return
    advice = (f"pass kv_capacity={fit} (hulurt.load) or --kv-capacity {fit}, which takes half the free memory and "
              "leaves the rest to activations" if fit >= 1 else
              "no capacity fits: use a smaller or quantized bundle, or a GPU with more memory")
    raise DeviceMemoryError(
        f"{what} need {need / 2**30:.2f} GiB for {capacity} tokens, but CUDA device {device_id} has "
        f"{free / 2**30:.2f} GiB free with the bundle's weights loaded; {advice}"
    )


class StaticDecoder:
    """Decode with `decoder_gqa` over KV buffers of fixed capacity (see the module doc)."""

    def __init__(self, decoder: Any, embed: Any, dims: Dims, capacity: int, cuda_graph: bool = False) -> None:
        if capacity < 1:
            raise ContextLengthError(f"KV capacity must be >= 1; got {capacity}")
        self.decoder, self.embed = decoder, embed
        self.dims = dims
        self.capacity = capacity
        self.cuda_graph = cuda_graph
        self.device = getattr(decoder, "device_type", "cpu")
        self.device_id = getattr(decoder, "device_id", 0)
        if self.device != "cpu":  # a clear refusal, with the capacity that fits, before onnxruntime fails to allocate
            check_kv_room(self.nbytes, capacity, device_memory.free_bytes(self.device_id), self.device_id,
                          f"the gqa-static KV buffers ({dims.layers} layers x 2 x [1, {dims.kv_heads}, {capacity}, "
                          f"{dims.head_dim}] {np.dtype(dims.act_dtype).name})")
        self.length = 0
        self._busy = threading.Lock()  # one request at a time on the one set of buffers (`request`)
        self._owner: int | None = None
        act = np.dtype(dims.act_dtype)
        self._host: list[NDArray[Any]] = []  # numpy arrays behind CPU OrtValues (kept alive)
        self.past_names, self.present_names = kv_names(dims.layers)
        shape = (1, dims.kv_heads, capacity, dims.head_dim)
        self.kv = [self._buffer(shape, act) for _ in self.past_names]
        # one-token step buffers, fixed addresses
        self.tok = self._buffer((1, 1), np.dtype(np.int64))
        self.step_embeds = self._buffer((1, 1, dims.hidden), act)
        self.step_pos = self._buffer((1, 1), np.dtype(np.int64))
        self.seqlens = self._buffer((1,), np.dtype(np.int32))
        self.no_visual = self._buffer((0, dims.hidden), act)
        self.logits = self._buffer((1, dims.vocab), np.dtype(np.float32))
        self.next_token = self._buffer((1,), np.dtype(np.int64))
        # total_sequence_length is read on the host by the CUDA kernel (a CPU input): fixed at the capacity for
        # the decode step, so the captured graph stays valid for every length (seqlens_k carries the length).
        # On a GPU it stays at the capacity without a graph too: the kernel picks its flash-decoding split count
        # from it, and one value keeps the graph and no-graph runs on the same summation order
        self._total_step = np.array(capacity, dtype=np.int32)
        self._embed_binding = self._bind_embed_step()
        self._step_binding = self._bind_decoder(self.step_embeds, self.step_pos, self._total_step)
        self._run_step, self._run_once = self._run_options(cuda_graph)
        self._graph_threads: set[int] = set()  # threads whose decode-step graph is captured (one per thread)
        self.steps = 0
        self._sampler: Any = None  # hulurt.device_sample.DeviceSampler, opened on the first sampled token
        log.info("static KV: %d layers x 2 buffers [1, %d, %d, %d] %s on %s (%.1f MB), cuda graph %s",
                 dims.layers, dims.kv_heads, capacity, dims.head_dim, act.name, self.device,
                 self.nbytes / 1e6, "on" if cuda_graph else "off")

    # ---- buffers ----------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return 2 * self.dims.layers * self.dims.kv_heads * self.capacity * self.dims.head_dim * np.dtype(
            self.dims.act_dtype).itemsize

    def _buffer(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        ort = _ort()
        if self.device == "cpu":
            arr = np.zeros(shape, dtype=dtype)
            self._host.append(arr)
            return ort.OrtValue.ortvalue_from_numpy(arr)  # shares the numpy memory
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device, self.device_id)

    @staticmethod
    def _run_options(cuda_graph: bool) -> tuple[Any, Any]:
        """Run options of the decode step (graph id 1: captured once, then replayed) and of the prefill (-1)."""
        ort = _ort()
        step, once = ort.RunOptions(), ort.RunOptions()
        if cuda_graph:
            step.add_run_config_entry("gpu_graph_id", GRAPH_DECODE)
            once.add_run_config_entry("gpu_graph_id", GRAPH_NONE)
        return step, once

    @staticmethod
    def _inputs_written(binding: Any) -> None:
        """Wait for host -> device writes (update_inplace, uploads: a cudaMemcpy from pageable memory may return
        before its DMA ends, and onnxruntime computes on a non-blocking stream of its own) before a run reads
        them: the CUDA provider's Sync is cudaDeviceSynchronize, the CPU provider's returns at once."""
        binding.synchronize_inputs()

    def _upload(self, value: NDArray[Any]) -> Any:
        return _ort().OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device, self.device_id)

    def _bind_embed_step(self) -> Any:
        b = self.embed.session.io_binding()
        b.bind_ortvalue_input("input_ids", self.tok)
        b.bind_ortvalue_input("visual_embeds", self.no_visual)
        b.bind_ortvalue_output("inputs_embeds", self.step_embeds)
        return b

    def _bind_decoder(
        self, embeds: Any, pos: Any, total: NDArray[np.int32], outputs: tuple[Any, Any] | None = None
    ) -> Any:
        b = self.decoder.session.io_binding()
        b.bind_ortvalue_input("inputs_embeds", embeds)
        b.bind_ortvalue_input("position_ids", pos)
        b.bind_ortvalue_input("seqlens_k", self.seqlens)
        b.bind_cpu_input("total_sequence_length", total)
        for past, present, buf in zip(self.past_names, self.present_names, self.kv):
            b.bind_ortvalue_input(past, buf)
            b.bind_ortvalue_output(present, buf)  # the same memory: written in place
        logits, token = outputs or (self.logits, self.next_token)
        b.bind_ortvalue_output("logits", logits)
        b.bind_ortvalue_output("next_token", token)
        return b

    # ---- a request ---------------------------------------------------------------------------------------

    @contextmanager
    def request(self) -> Iterator[None]:
        """Hold the decoder for one request. There is one set of KV buffers, one set of step buffers and one
        captured graph per Model, so concurrent requests (`hulurt serve --concurrency N`) take turns here; the
        v1 strategies give each request its own cache instead. The same thread starting a second request
        while its first is still being iterated would wait for itself: that is refused with the reason."""
        me = threading.get_ident()
        if self._owner == me:
            raise HuluRuntimeError(
                "this thread is still iterating another request on this Model's gqa-static decoder (one set of "
                "KV buffers); finish or close that stream first, or use one Model per concurrent stream"
            )
        with self._busy:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def begin(self, need: int) -> None:
        """Start a request that will hold up to `need` tokens (rows past the length are never read)."""
        if need > self.capacity:
            raise ContextLengthError(
                f"the request needs {need} KV rows but the static cache holds {self.capacity}; lower "
                "--max-new-tokens or shorten the prompt"
            )
        self.length = 0

    def embed_prompt(self, ids: NDArray[np.int64], visual: NDArray[Any] | RowSlice) -> Any:
        """The embed graph for the prompt ids [L] and visual rows [n_visual, hidden] (host, or a RowSlice of rows
        already on the device, hulurt.device_rows), its output [1, L, hidden] left on the device as an OrtValue
        for `prefill`."""
        b = self.embed.session.io_binding()
        b.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64).reshape(1, -1))
        if isinstance(visual, RowSlice):
            visual.bind(b, "visual_embeds")
        else:
            b.bind_cpu_input("visual_embeds", visual)
        b.bind_output("inputs_embeds", self.device, self.device_id)
        self.embed.session.run_with_iobinding(b)
        return b.get_outputs()[0]

    def prefill(self, embeds: NDArray[Any] | Any, want_logits: bool) -> tuple[int, NDArray[np.float32] | None]:
        """Feed `embeds` [1, L, hidden] (numpy, or an OrtValue on the device) after the cached rows."""
        ort = _ort()
        shape_attr: Any = embeds.shape  # a method on an OrtValue, a tuple on a numpy array
        shape = shape_attr() if callable(shape_attr) else shape_attr
        seq = int(shape[1])
        total = self.length + seq
        if total > self.capacity:
            raise ContextLengthError(
                f"KV cache holds {self.length} tokens and {seq} more were fed; its capacity is {self.capacity}"
            )
        emb = embeds if isinstance(embeds, ort.OrtValue) else self._upload(np.asarray(embeds))
        pos = self._upload(np.arange(self.length, total, dtype=np.int64).reshape(1, seq))
        self.seqlens.update_inplace(np.array([total - 1], dtype=np.int32))
        b = self._bind_decoder(emb, pos, np.array(total, dtype=np.int32))
        self._inputs_written(b)
        self.decoder.session.run_with_iobinding(b, self._run_once)
        self.length = total
        return self._result(want_logits)

    def step(self, token: int, want_logits: bool) -> tuple[int, NDArray[np.float32] | None]:
        """One decode step for `token` at position `length`: embed and decoder on fixed buffers."""
        if self.length + 1 > self.capacity:
            raise ContextLengthError(f"KV cache is full ({self.capacity} tokens)")
        self.tok.update_inplace(np.array([[token]], dtype=np.int64))
        self.step_pos.update_inplace(np.array([[self.length]], dtype=np.int64))
        self.seqlens.update_inplace(np.array([self.length], dtype=np.int32))
        if self.device == "cpu" and not self.cuda_graph:  # the CPU kernel may as well see the exact length
            self._step_binding.bind_cpu_input("total_sequence_length", np.array(self.length + 1, dtype=np.int32))
        self._inputs_written(self._embed_binding)
        self.embed.session.run_with_iobinding(self._embed_binding)
        self._run_decode_step()
        self.length += 1
        self.steps += 1
        return self._result(want_logits)

    def _run_decode_step(self) -> None:
        """The decoder on the step binding. A thread's first run with the CUDA graph captures it, alone in the
        process (hulurt.capture_gate: a capture fails if another thread makes CUDA calls meanwhile). A capture that
        fails reopens the decoder without the graph and runs the step again, uncaptured: the step is idempotent
        (same inputs, the same KV row written at the same seqlens_k)."""
        me = threading.get_ident()
        if not self.cuda_graph or me in self._graph_threads:
            self.decoder.session.run_with_iobinding(self._step_binding, self._run_step)
            return
        with GATE.alone():
            try:
                self.decoder.session.run_with_iobinding(self._step_binding, self._run_step)
            except Exception as exc:  # onnxruntime's Fail and friends: the capture, not the step, went wrong
                self._drop_graph(f"capture failed in the first decode step ({type(exc).__name__}: {exc})")
                self.decoder.session.run_with_iobinding(self._step_binding, self._run_step)
                return
        self._graph_threads.add(me)

    def _drop_graph(self, reason: str) -> None:
        """Decode without the CUDA graph from now on: the decoder session reopened without it, the step bound to
        the new session. The KV and step buffers are not the session's: they stay, with their contents."""
        self.decoder.drop_cuda_graph(reason)
        self.cuda_graph = False
        self._run_step, self._run_once = self._run_options(False)
        self._step_binding = self._bind_decoder(self.step_embeds, self.step_pos, self._total_step)

    def sample(self, sampler: Sampler, seen: NDArray[np.int64]) -> int:
        """The next token from the logits buffer by `sampler`'s rule, drawn on the decoder's device
        (hulurt.device_sample; rows it cannot sample exactly go to the host sampler there)."""
        if self._sampler is None:
            from hulurt.device_sample import DeviceSampler

            self._sampler = DeviceSampler(self.decoder.options, self.logits, self.dims.vocab)
        return int(self._sampler(sampler, seen))

    def check_logits(self) -> None:
        """NumericError when the logits buffer holds NaN or +inf (hulurt.sampling.check_logits). Called once
        per request after the prompt where the loop takes only tokens from the device: a 4 * vocab byte copy,
        against an argmax that would otherwise turn an overflowed row into tokens."""
        check_logits(self.logits.numpy())

    def _result(self, want_logits: bool) -> tuple[int, NDArray[np.float32] | None]:
        token = int(self.next_token.numpy()[0])  # 8 bytes device -> host
        if not want_logits:
            return token, None
        row = self.logits.numpy()  # from a device: a fresh host copy; on the CPU: a view of the bound buffer
        return token, (np.array(row, copy=True) if self.device == "cpu" else row)
