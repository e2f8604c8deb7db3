"""The generation loop: visual inputs -> vision graph -> kept rows (token reduction) -> embed graph ->
decoder prefill -> decode loop with a KV cache, streaming text as it is decoded. Boring, visible code.

The loop follows the reference model's `generate` (huluexport/reference/model.py) and docs/model.md §5.3,
6.3 and 8.2: one `<image>` id per kept visual row, replaced in order; positions 0..L-1 over the compacted
prompt, then L, L+1, ... for generated tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from hulurt import device_memory, schedule
from hulurt.backends.base import DeviceSession, Session
from hulurt.clock import StageClock
from hulurt.device_rows import RowsOnDevice
from hulurt.errors import ContextLengthError, ContractError
from hulurt.kv_cache import KVCache, KVShape
from hulurt.reduction import kept_rows
from hulurt.request import BundleFacts, Generation, PromptFeed, TextDecoder, Timings, VisualFeed
from hulurt.rope import vision_rope
from hulurt.sampling import Sampler, SamplingConfig
from hulurt.tokenizer import StreamDecoder

__all__ = ["BundleFacts", "Generation", "Generator", "PromptFeed", "TextDecoder", "Timings", "VisualFeed",
           "check_context"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def check_context(prompt_tokens: int, max_new_tokens: int, max_context: int, *, what: str = "prompt",
                  context_name: str = "the bundle's maximum context") -> None:
    """Refuse a request that cannot fit before any graph runs, with the numbers."""
    if max_new_tokens < 1:
        raise ContextLengthError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    need = prompt_tokens + max_new_tokens
    if need > max_context:
        raise ContextLengthError(
            f"{what} of {prompt_tokens} tokens + max_new_tokens {max_new_tokens} = {need} exceeds {context_name} "
            f"of {max_context} tokens; shorten the prompt, use fewer/smaller images or frames, "
            f"or lower --max-new-tokens to at most {max(max_context - prompt_tokens, 0)}"
        )


class Generator:
    """Holds the three sessions of a bundle and runs requests through them, one at a time."""

    def __init__(
        self,
        sessions: dict[str, Session],
        facts: BundleFacts,
        kv_strategy: str | None = None,
        *,
        cuda_graph: bool = False,
        vision_batch: int | None = None,
        prefill_chunk: int | None = None,
        device_sampling: bool | None = None,
        device_rows: bool | None = None,
    ) -> None:
        """vision_batch / prefill_chunk: most frames per vision call / prompt tokens per prefill call (None: the
        largest whose activations fit a fifth of the available memory, by hulurt.schedule's cost model).
        device_sampling: sample on the gqa-static decoder's device (hulurt.device_sample); None = where that
        device is a GPU (on the CPU provider numpy is faster: benchmarks/results/device_sampling_cpu.md).
        device_rows: keep the vision output and the kept visual rows on the gqa-static decoder's device
        (hulurt.device_rows); None = where that device is a GPU."""
        for name in ("embed", "decoder"):
            if name not in sessions:
                raise ContractError(f"a bundle needs the {name!r} piece; sessions given: {sorted(sessions)}")
        self.sessions = sessions
        self.facts = facts
        self.device_sampling = device_sampling
        self.device_rows = device_rows
        self._rows: Any = None  # hulurt.device_rows.DeviceRows, opened on the first visual request that uses it
        d = facts.dims
        self._act = np.dtype(d.act_dtype)
        dec = sessions["decoder"]
        on_device = isinstance(dec, DeviceSession) and dec.on_device
        # the "gqa-static" form (piece decoder_gqa, hulurt.static_decode): KV buffers of fixed capacity written in
        # place, allocated once per Model at its max context (the bundle's, or the Model's kv_capacity)
        self._static: Any = None
        self._static_args = (facts.max_context, cuda_graph)
        if "seqlens_k" in dec.input_names():
            if kv_strategy not in (None, "static"):
                raise ContractError(f"KV strategy {kv_strategy!r} does not apply to the gqa-static decoder form")
            kv_strategy = "static"
        # CPU default "buffer": allocated once, rows written in place ("chain" measures the same within noise,
        # benchmarks/results/runtime.md)
        self.kv_strategy = kv_strategy or ("device" if on_device else "buffer")
        self._kv_shape = KVShape(d.layers, d.kv_heads, d.head_dim, d.act_dtype)
        self._no_visual = np.zeros((0, d.hidden), dtype=self._act)
        for name, val in (("vision_batch", vision_batch), ("prefill_chunk", prefill_chunk)):
            if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 1):
                raise ValueError(f"{name} must be an integer >= 1 (or None for the default); got {val!r}")
        self.vision_batch = vision_batch
        self.prefill_chunk = prefill_chunk
        self.last_prefill_chunk = 0  # the chunk of the latest prefill (for Timings)
        self._budget_warned = False  # budget_for: the device's free memory could not be read (said once)
        self._fused = on_device  # onnxruntime's CPU graphs materialise attention scores; GPU engines fuse them

    # ---- how a request is split (hulurt.schedule) ------------------------------------------------

    def vision_batch_for(self, v: VisualFeed) -> int:
        """Frames per vision call for this input: the option, else the largest that fits the budget."""
        frames = int(v.patches.shape[0])
        if self.vision_batch is not None:
            return min(self.vision_batch, frames)
        budget, shape = self.budget_for("vision"), self.facts.shape
        if budget is None or shape is None:
            return frames
        n = int(v.patches.shape[1] * v.patches.shape[2])
        return schedule.vision_batch_for(shape, frames, n, self._act.itemsize, budget, self._fused)

    def budget_for(self, piece: str) -> int | None:
        """The default split's activation budget for calls of `piece`: schedule.BUDGET_FRACTION of the memory
        available as the request starts where its activations live, the free memory of its GPU when the piece
        runs on one (hulurt.device_memory), else the host's (schedule.default_budget)."""
        session = self.sessions.get(piece)
        if isinstance(session, DeviceSession) and session.on_device:
            free = device_memory.free_bytes(session.device_id)
            if free is not None:
                return int(free * schedule.BUDGET_FRACTION)
            if not self._budget_warned:
                self._budget_warned = True
                log.warning("free memory of CUDA device %d unknown (no CUDA runtime library answered): the default "
                            "vision batch and prefill chunk are budgeted against host memory; pass --vision-batch / "
                            "--prefill-chunk to size them for the GPU", session.device_id)
        return schedule.default_budget()

    def prefill_chunk_for(self, prompt_tokens: int) -> int:
        """Prompt tokens per prefill call: the option, else the largest that fits the budget."""
        if self.prefill_chunk is not None:
            return min(self.prefill_chunk, max(prompt_tokens, 1))
        budget, shape = self.budget_for("decoder"), self.facts.shape
        if budget is None or shape is None:
            return max(prompt_tokens, 1)
        return schedule.prefill_chunk_for(shape, prompt_tokens, self._act.itemsize, budget, self._fused)

    # ---- pieces ----------------------------------------------------------------------------------

    def _vision_feeds(self, v: VisualFeed, frames: tuple[int, int] | None = None) -> dict[str, NDArray[Any]]:
        """The vision graph's feeds for one input, or for its frames [start, stop)."""
        gh, gw = v.grid_hw
        cos, sin = vision_rope(gh, gw, v.merge, self.facts.dims.vision_head_dim)
        n_patches = v.patches.shape[1] * v.patches.shape[2]
        if cos.shape[0] != n_patches:
            raise ContractError(
                f"visual input grid {gh}x{gw} gives {cos.shape[0]} rope rows but its patches hold {n_patches}"
            )
        patches = v.patches if frames is None else v.patches[frames[0]:frames[1]]
        return {"pixel_patches": np.ascontiguousarray(patches, dtype=np.float32), "rope_cos": cos, "rope_sin": sin}

    def vision(self, v: VisualFeed, frames: tuple[int, int] | None = None) -> NDArray[Any]:
        """Vision graph for one input (or its frames [start, stop)): -> [n_frames, n_groups, hidden], every
        merged token."""
        if "vision" not in self.sessions:
            raise ContractError("this request has visual inputs but the bundle has no 'vision' piece")
        return self.sessions["vision"].run(self._vision_feeds(v, frames))["visual_embeds"]

    def visual_rows(self, visuals: Sequence[VisualFeed], batches: Sequence[int] | None = None,
                    on_device: bool = False) -> Any:
        """Every visual input's kept rows in order -> [n_visual, hidden] (None without visuals), each input's
        frames in vision calls of batches[k] (None: vision_batch_for). Backends that keep tensors on the device
        (trt-native: `device_rows`) run each input in one call and hand the rows to the embed piece there.
        on_device: the rows in one buffer on the vision session's device (hulurt.device_rows.RowsOnDevice)."""
        if not visuals:
            return None
        vision, embed = self.sessions.get("vision"), self.sessions["embed"]
        if hasattr(vision, "device_rows") and hasattr(embed, "run_bound"):
            return vision.device_rows(  # type: ignore[union-attr]
                [(self._vision_feeds(v), v.keep) for v in visuals], into=embed
            )
        batches = [self.vision_batch_for(v) for v in visuals] if batches is None else batches
        if on_device:
            return self._rows_on_device(visuals, batches)
        rows = [self.encode_visual(v, b) for v, b in zip(visuals, batches)]
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    def _rows_on_device(self, visuals: Sequence[VisualFeed], batches: Sequence[int]) -> Any:
        """visual_rows(on_device=True): each vision call's output gathered on the device (hulurt.device_rows)."""
        if "vision" not in self.sessions:
            raise ContractError("this request has visual inputs but the bundle has no 'vision' piece")
        if self._rows is None:
            from hulurt.device_rows import DeviceRows

            self._rows = DeviceRows(self.sessions["vision"], self.facts.dims.act_dtype, self.facts.dims.hidden)

        def calls() -> Iterator[tuple[dict[str, NDArray[Any]], NDArray[np.int64] | None]]:
            for v, batch in zip(visuals, batches):
                t = self._frames_checked(v)
                log.info("vision: %d frames in %d call(s) of at most %d, rows kept on %s", t, -(-t // batch),
                         batch, self._rows.device)
                for a, b in schedule.chunks(t, batch):
                    kept = None if v.keep is None else np.flatnonzero(v.keep[a:b].reshape(-1)).astype(np.int64)
                    yield self._vision_feeds(v, (a, b)), kept

        return self._rows.assemble(calls(), sum(v.tokens_after for v in visuals))

    @staticmethod
    def _frames_checked(v: VisualFeed) -> int:
        """The input's frame count, once its keep mask (if any) is known to cover its frames x groups."""
        t, g = (int(x) for x in v.patches.shape[:2])
        if v.keep is not None and v.keep.shape != (t, g):
            raise ContractError(f"keep mask {v.keep.shape} does not match the input's frames/groups {(t, g)}")
        return t

    def encode_visual(self, v: VisualFeed, batch: int | None = None) -> NDArray[Any]:
        """Vision graph for one input in batches of `batch` frames (None: vision_batch_for), then the kept rows
        in token order: -> [n_kept, hidden]. Exact for any batch: the encoder attends within a frame, and the
        keep mask was computed over the whole input (consecutive frames across batch borders included)."""
        t, g = self._frames_checked(v), int(v.patches.shape[1])
        out: NDArray[Any] | None = None
        row = 0
        batch = batch or self.vision_batch_for(v)
        log.info("vision: %d frames in %d call(s) of at most %d", t, -(-t // batch), batch)
        for a, b in schedule.chunks(t, batch):
            part = self.vision(v, (a, b))
            if part.shape[:2] != (b - a, g):
                raise ContractError(f"vision output {part.shape[:2]} for frames {a}..{b - 1}; expected {(b - a, g)}")
            rows = kept_rows(part, None if v.keep is None else v.keep[a:b])
            if out is None:  # every kept row of the input, filled batch by batch
                out = np.empty((v.tokens_after, part.shape[-1]), dtype=part.dtype)
            out[row:row + rows.shape[0]] = rows
            row += rows.shape[0]
            del part, rows  # one batch's output alive at a time
        assert out is not None and row == out.shape[0]
        return out

    def embed(self, ids: NDArray[np.int64], visual: NDArray[Any] | None = None) -> NDArray[Any]:
        feeds = {
            "input_ids": ids.reshape(1, -1).astype(np.int64),  # [L] -> [1, L]
            "visual_embeds": self._no_visual if visual is None else (
                visual if not isinstance(visual, np.ndarray) else np.ascontiguousarray(visual, dtype=self._act)
            ),  # a device tensor (trt-native) is bound where it lies
        }
        return self.sessions["embed"].run(feeds)["inputs_embeds"]

    def new_cache(self, max_len: int) -> KVCache:
        """An empty KV cache for one request of at most `max_len` tokens, in this loop's strategy."""
        cache = KVCache(self._kv_shape, max_len, self.kv_strategy)
        if cache.strategy == "device":
            dec = self.sessions["decoder"]
            assert isinstance(dec, DeviceSession)  # the strategy is "device" only for such sessions
            cache.set_device_empty(dec.empty_device)
        return cache

    def decode(self, embeds: NDArray[Any], start: int, cache: KVCache) -> NDArray[np.float32]:
        """The decoder over `embeds` [1, seq, hidden] at positions start.. (the prompt, or one token): -> logits
        of the last position; the cache grows by seq. A prompt longer than the prefill chunk goes in chunks,
        each attending to the cache the earlier ones filled (hulurt.schedule)."""
        seq = embeds.shape[1]
        cache.check_room(seq)
        step = self.prefill_chunk_for(seq) if seq > 1 else 1
        if seq > 1:
            self.last_prefill_chunk = step
            log.info("prefill: %d tokens in %d call(s) of at most %d", seq, -(-seq // step), step)
        logits: NDArray[np.float32] | None = None
        for a, b in schedule.chunks(seq, step):
            logits = self._decode_call(embeds[:, a:b], start + a, cache)
        assert logits is not None
        return logits

    def _decode_call(self, embeds: NDArray[Any], start: int, cache: KVCache) -> NDArray[np.float32]:
        """One decoder call (seq new tokens at positions start..): -> last-position logits."""
        seq = embeds.shape[1]
        pos = np.arange(start, start + seq, dtype=np.int64).reshape(1, seq)  # [1, seq_len]
        feeds: dict[str, Any] = {"inputs_embeds": embeds, "position_ids": pos, **cache.feeds()}
        dec = self.sessions["decoder"]
        if cache.strategy == "device":
            assert isinstance(dec, DeviceSession)
            host, dev = dec.run_bound(feeds, tuple(cache.present_names))
            cache.update(dev, seq)
            return cast(NDArray[np.float32], host["logits"])  # float32 by the contract, checked at load
        outs = dec.run(feeds)
        cache.update(outs, seq)
        return cast(NDArray[np.float32], outs["logits"])

    def static_decoder(self) -> Any:
        """The StaticDecoder of the gqa-static form (created on first use, kept across requests)."""
        if self._static is None:
            from hulurt.static_decode import StaticDecoder

            capacity, graph = self._static_args
            self._static = StaticDecoder(self.sessions["decoder"], self.sessions["embed"], self.facts.dims,
                                         capacity, cuda_graph=graph)
        return self._static

    def rows_on_device(self) -> bool:
        """Whether a visual request's rows are gathered on the decoder's device (hulurt.device_rows): the
        gqa-static form, and device_rows, or by default a decoder on a GPU."""
        if self.kv_strategy != "static":
            return False
        return self.static_decoder().device != "cpu" if self.device_rows is None else self.device_rows

    # ---- a request -------------------------------------------------------------------------------

    def resolve_max_new_tokens(self, prompt_tokens: int, max_new_tokens: int | None) -> int:
        """None -> the bundle default, clamped to the room left in the context (at least 1, so an over-long
        prompt still fails the context check with its numbers)."""
        if max_new_tokens is not None:
            return max_new_tokens
        return max(1, min(self.facts.default_max_new_tokens, self.facts.max_context - prompt_tokens))

    def check(self, prompt: PromptFeed, max_new_tokens: int) -> None:
        """Host safety before any graph runs: context budget and the image-id count."""
        ids = prompt.input_ids
        check_context(int(ids.shape[0]), max_new_tokens, self.facts.max_context,
                      context_name=self.facts.context_name)
        n_image_ids = int((ids == self.facts.image_token_id).sum())
        n_rows = sum(v.tokens_after for v in prompt.visuals)
        if n_image_ids != n_rows:
            raise ContractError(
                f"the prompt holds {n_image_ids} image ids ({self.facts.image_token_id}) but its visual inputs "
                f"give {n_rows} rows after token reduction; the inputs and the bundle disagree"
            )
        for k, v in enumerate(prompt.visuals):
            t, g, mg = (int(x) for x in v.patches.shape[:3])
            for dim, got in (("n_frames", t), ("n_groups", g), ("merge_group", mg), ("n_patches", g * mg)):
                r = self.facts.dim_ranges.get(dim)
                if r is not None and not r.min <= got <= r.max:
                    raise ContextLengthError(
                        f"visual input {k + 1}: {dim} = {got} is outside the bundle's range [{r.min}, {r.max}] "
                        f"(build target {self.facts.target!r}); use fewer frames or a smaller image, or rebuild "
                        "the bundle for a larger target"
                    )
        if ids.size and (ids.min() < 0 or ids.max() >= self.facts.dims.vocab):
            raise ContractError(f"prompt ids must lie in [0, {self.facts.dims.vocab}); got {ids.min()}..{ids.max()}")

    def generate(
        self,
        prompt: PromptFeed,
        tokenizer: TextDecoder,
        *,
        max_new_tokens: int | None = None,
        sampling: SamplingConfig | None = None,
        stop_ids: Sequence[int] | None = None,
        on_text: Callable[[str], None] | None = None,
        started: float | None = None,
        on_logits: Callable[[NDArray[np.float32]], None] | None = None,
    ) -> Generation:
        """Check the request now; the graphs run while the returned Generation is iterated. `on_logits`, when
        given, sees every logits row [1, vocab] the tokens are chosen from, in order (the row comes to the host
        even for plain greedy: a diagnostic, e.g. `huluexport bench`'s greedy check, not for timing)."""
        max_new_tokens = self.resolve_max_new_tokens(int(prompt.input_ids.shape[0]), max_new_tokens)
        self.check(prompt, max_new_tokens)
        stops = frozenset(self.facts.stop_ids if stop_ids is None else stop_ids)
        gen = Generation(_pieces=iter(()))
        t_start = time.perf_counter() - prompt.preprocess_s if started is None else started
        sampler = Sampler(sampling or SamplingConfig())
        gen._pieces = self._held(self._decode_request(gen, prompt, tokenizer, max_new_tokens, sampler, stops,
                                                      on_text, t_start, on_logits))
        return gen

    def _held(self, pieces: Iterator[str]) -> Iterator[str]:
        """`pieces` (a request, not started yet), holding the gqa-static decoder from its first piece to its
        end when it uses one; closing the generator early releases it."""
        if self.kv_strategy != "static":
            yield from pieces
            return
        with self.static_decoder().request():
            yield from pieces

    def _decode_request(
        self,
        gen: Generation,
        prompt: PromptFeed,
        tokenizer: TextDecoder,
        max_new_tokens: int,
        sampler: Sampler,
        stops: frozenset[int],
        on_text: Callable[[str], None] | None,
        t_start: float,
        on_logits: Callable[[NDArray[np.float32]], None] | None = None,
    ) -> Iterator[str]:
        ids = prompt.input_ids.astype(np.int64)
        n_prompt = int(ids.shape[0])
        static = None
        cache: KVCache | None = None
        if self.kv_strategy == "static":
            static = self.static_decoder()
            static.begin(n_prompt + max_new_tokens)
        else:
            cache = self.new_cache(n_prompt + max_new_tokens)
        clock = StageClock()
        # plain greedy takes the graph's own argmax and device sampling the sampling graph's token (only the token
        # leaves the device); else the logits row comes back for the host sampler
        cfg = sampler.config
        sample_on_device = static is not None and on_logits is None and not cfg.plain_greedy and (
            static.device != "cpu" if self.device_sampling is None else self.device_sampling)
        need_logits = on_logits is not None or not (cfg.plain_greedy or sample_on_device)

        def pick(row: NDArray[np.float32], seen_ids: NDArray[np.int64]) -> int:
            if on_logits is not None:
                on_logits(row)
            return sampler(row, seen_ids)

        def choose(result: tuple[int, Any], seen_ids: NDArray[np.int64]) -> int:
            tok, row = result
            if row is not None:
                return pick(row, seen_ids)
            if sample_on_device:
                assert static is not None
                return static.sample(sampler, seen_ids)
            return tok

        t0 = time.perf_counter()
        visual = None
        batches: list[int] = []
        if prompt.visuals:
            with clock("vision"):
                batches = [self.vision_batch_for(v) for v in prompt.visuals]
                visual = self.visual_rows(prompt.visuals, batches, self.rows_on_device())  # [n_visual, hidden]
        t1 = time.perf_counter()
        seen = np.empty(n_prompt + max_new_tokens, dtype=np.int64)  # prompt + generated ids, for the penalty
        seen[:n_prompt] = ids
        n_seen = n_prompt
        if static is not None:  # chunk by chunk; each chunk's embeddings stay on the decoder's device
            vis = self._no_visual if visual is None else (
                visual if isinstance(visual, RowsOnDevice) else np.ascontiguousarray(visual, dtype=self._act))
            step = self.prefill_chunk_for(n_prompt) if n_prompt > 1 else 1
            self.last_prefill_chunk = step
            before = np.concatenate([[0], np.cumsum(ids == self.facts.image_token_id)])  # visual rows before i
            result: tuple[int, Any] = (0, None)
            for a, b in schedule.chunks(n_prompt, step):
                with clock("embed"):
                    if isinstance(vis, RowsOnDevice):  # a slice of the device buffer, bound by pointer
                        part: Any = vis.slice(int(before[a]), int(before[b]))
                        chunk = static.embed_prompt(ids[a:b], self._no_visual if part is None else part)
                    else:
                        chunk = static.embed_prompt(ids[a:b], vis[before[a] : before[b]])
                with clock("prefill"):
                    result = static.prefill(chunk, need_logits and b == n_prompt)
            # the visual rows (on the device with device_rows) and the last chunk's embeddings are not needed to decode
            vis, visual, chunk = self._no_visual, None, None
            with clock("prefill"):
                if result[1] is None:  # only tokens leave the device from here on: check the prompt's row once
                    static.check_logits()
                token = choose(result, seen[:n_seen])
        else:
            assert cache is not None
            with clock("embed"):
                embeds = self.embed(ids, visual)  # [1, L, hidden]
            with clock("prefill"):
                token = pick(self.decode(embeds, 0, cache), seen[:n_seen])
        t2 = time.perf_counter()
        t_first = t2
        stream = StreamDecoder(tokenizer)  # type: ignore[arg-type]  # any object with decode(ids, skip)
        gen.stop_reason = "max_new_tokens"
        text_parts: list[str] = []
        steps = 0
        while True:
            if token in stops:
                gen.stop_reason = "stop_id"
                break
            gen.token_ids.append(token)
            piece = stream.push(token)
            if piece:
                text_parts.append(piece)
                if on_text is not None:
                    on_text(piece)
                yield piece
            if len(gen.token_ids) >= max_new_tokens:
                break
            seen[n_seen] = token
            n_seen += 1
            steps += 1
            if static is not None:
                token = choose(static.step(token, need_logits), seen[:n_seen])
                continue
            assert cache is not None
            step_embeds = self.embed(np.array([token], dtype=np.int64))  # [1, 1, hidden]
            logits = self.decode(step_embeds, cache.length, cache)
            token = pick(logits, seen[:n_seen])
        tail = stream.flush()
        if tail:
            text_parts.append(tail)
            if on_text is not None:
                on_text(tail)
            yield tail
        t3 = time.perf_counter()
        gen.text = "".join(text_parts)
        stages = {**prompt.stages, **clock.seconds, "decode": t3 - t_first}  # decode: every later step
        gen.timings = Timings(
            preprocess_s=prompt.preprocess_s,
            vision_s=t1 - t0,
            prefill_s=t2 - t1,
            ttft_s=t_first - t_start,
            decode_s=t3 - t_first,
            decode_steps=steps,
            prompt_tokens=n_prompt,
            new_tokens=len(gen.token_ids),
            visual_tokens_before=sum(v.tokens_before for v in prompt.visuals),
            visual_tokens_after=sum(v.tokens_after for v in prompt.visuals),
            stages=stages,
            vision_batch=max(batches) if prompt.visuals else 0,
            prefill_chunk=self.last_prefill_chunk,
            notes=prompt.notes,
        )
        log.info("generated %d tokens (%s): %s", len(gen.token_ids), gen.stop_reason, gen.timings.summary())
