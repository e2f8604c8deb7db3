"""The Python API: `hulurt.load(bundle).generate("question", volume="ct/")`. Reads the manifest (checksums
verified unless told not to), opens the pieces lazily with the chosen backend, and runs requests."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from hulurt import checks
from hulurt.backends import open_session
from hulurt.backends.base import BackendOptions, Session
from hulurt.clock import StageClock
from hulurt.errors import ContextLengthError, ContractError, UnsupportedInputError
from hulurt.generate import BundleFacts, Generation, Generator, PromptFeed, VisualFeed, check_context
from hulurt.manifest import Manifest, load_manifest
from hulurt.manifest_limits import check_graph_io
from hulurt.sampling import SamplingConfig
from hulurt.schedule import ModelShape

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
_VOLUME_KINDS = ("nifti", "dicom")
_TEMPLATE_MARGIN = 64  # chat-template tokens around the question (role markers, vision markers), generously
_FRAME_TEXT = 2  # template tokens per frame of a video/volume (the built-in template spends 1: a separator)


def facts_of(m: Manifest) -> BundleFacts:
    """The loop's numbers from a manifest: max context, stop ids, image id and token-reduction settings."""
    stops = tuple(dict.fromkeys((*m.tokens.eos, m.tokens.im_end, m.tokens.endoftext)))
    r = m.reduction
    return BundleFacts(
        dims=m.dims,
        max_context=m.limits.max_context,
        stop_ids=stops,
        image_token_id=m.tokens.image,
        reduction_enabled=r.enabled,
        reduction_threshold=r.threshold,
        reduction_min_tokens=r.min_tokens,
        reduction_mode=r.mode,
        default_max_new_tokens=m.limits.max_new_tokens_default,
        dim_ranges=dict(m.dim_ranges),
        target=m.target,
        shape=ModelShape.from_manifest_model(m.model, m.dims.patch_dim),
    )


def feed_of(inputs: Any, preprocess_s: float = 0.0, stages: dict[str, float] | None = None) -> PromptFeed:
    """hulurt.inputs.ModelInputs -> the loop's PromptFeed (ids [1, L] -> [L], one VisualFeed per input).
    stages: the preprocessing's own stage seconds (hulurt.clock), carried into the request's Timings."""
    visuals = tuple(
        VisualFeed(v.patches, (v.grid_thw[1], v.grid_thw[2]), v.merge_size, v.keep) for v in inputs.visuals
    )
    ids = np.asarray(inputs.input_ids, dtype=np.int64).reshape(-1)  # [1, L] -> [L]
    return PromptFeed(ids, visuals, preprocess_s=preprocess_s, stages=dict(stages or {}),
                      notes=tuple(getattr(inputs, "notes", ())))


class Model:
    """A loaded bundle. `stream(...)` returns a Generation to iterate for text pieces; `generate(...)` runs to
    the end. Both accept `on_text` for a callback per piece. One request at a time per Model."""

    def __init__(
        self, manifest: Manifest, options: BackendOptions, kv_strategy: str | None = None, tokenizer: Any = None,
        *, vision_batch: int | None = None, prefill_chunk: int | None = None,
        decoder_form: str | None = None, cuda_graph: bool | None = None, device_sampling: bool | None = None,
        device_rows: bool | None = None, kv_capacity: int | None = None,
    ) -> None:
        """tokenizer: an object with `encode(text)` and `decode(ids, skip_special_tokens)` used instead of the
        bundle's own (None = the bundle's tokenizer.json, which bundles built with random weights lack).
        vision_batch / prefill_chunk: see hulurt.load. decoder_form: "v1-concat" | "gqa-static" to force one
        (None = by provider, docs/gpu.md); cuda_graph: False turns the CUDA graph of the gqa-static decode step
        off (None = on where it applies); device_sampling: sample next to the gqa-static decoder on its device
        (True), on the host (False), or on the device where that is a GPU (None; hulurt.device_sample);
        device_rows: likewise for the vision output and the kept visual rows (hulurt.device_rows).
        kv_capacity: see hulurt.load."""
        from hulurt.prompt import check_template, load_chat_template
        from hulurt.tokenizer import Tokenizer

        self.manifest = manifest
        self.options = options
        tok_rel = manifest.tokenizer.tokenizer
        if tokenizer is None:
            if tok_rel is None:
                raise UnsupportedInputError(
                    manifest.path, "this bundle has no tokenizer (bundles built with --random-weights carry none), "
                    "so it cannot answer text prompts; build one from a checkpoint: huluexport build --checkpoint DIR"
                )
            tokenizer = Tokenizer.from_file(manifest.root / tok_rel)
        self.tokenizer = tokenizer
        tpl = manifest.file_path(manifest.tokenizer.chat_template)
        self.chat_template = load_chat_template(tpl)
        check_template(self.chat_template, tpl)  # a template that cannot render fails the load, not a request
        self.facts = facts_of(manifest)
        reason = checks.kv_capacity(kv_capacity)
        if reason is not None:
            raise ValueError(f"kv_capacity {reason}")
        if kv_capacity is not None:
            if kv_capacity > self.facts.max_context:
                raise ContractError(
                    f"kv_capacity {kv_capacity}: expected at most this bundle's max_context {self.facts.max_context} "
                    "(its dim ranges and the gqa-static form's RoPE tables stop there)"
                )
            # every check, default and buffer of this Model then uses the smaller context
            self.facts = replace(self.facts, max_context=kv_capacity,
                                 context_name="the KV capacity (kv_capacity / --kv-capacity)")
        self._sessions: dict[str, Session] = {}
        self._kv_strategy = kv_strategy
        self._split = {"vision_batch": vision_batch, "prefill_chunk": prefill_chunk}
        for name, val in self._split.items():
            reason = checks.split_size(val)
            if reason is not None:
                raise ValueError(f"{name} {reason}")
        self._generator: Generator | None = None
        self._decoder_form = decoder_form  # None: by provider (hulurt.static_decode.select_decoder)
        self._cuda_graph = cuda_graph  # None: on for the gqa-static form on the CUDA EP
        self._device_sampling = device_sampling  # None: on where the gqa-static decoder runs on a GPU
        self._device_rows = device_rows  # None: the same
        self._decoder_piece: str | None = None
        self._keep_mask_fn: Any = None  # hulurt.device_reduce on the CUDA provider (decided on first use)
        self._keep_mask_checked = False

    # ---- sessions (opened on first use: a text-only request never loads the vision graph) --------------

    @property
    def decoder_piece(self) -> str:
        """The decoder piece this Model runs: "decoder" (v1-concat) or "decoder_gqa" (gqa-static)."""
        if self._decoder_piece is None:
            from hulurt.static_decode import select_decoder

            provider = self.options.provider
            if provider == "auto":
                from hulurt.backends.ort import resolve_provider

                provider = resolve_provider("auto")
            self._decoder_piece = select_decoder(provider, set(self.manifest.pieces), self._decoder_form,
                                                 self.manifest.dims.act_dtype)
        return self._decoder_piece

    @property
    def uses_cuda_graph(self) -> bool:
        sess = self.session("decoder")  # onnxruntime may have refused the graph (backends/ort.py)
        return self.decoder_piece == "decoder_gqa" and self._cuda_graph is not False and sess.provider == "cuda" \
            and bool(getattr(sess, "cuda_graph", False))

    @property
    def rows_on_device(self) -> bool:
        """Visual requests gather their rows on the decoder's device (hulurt.device_rows)."""
        return self.has_vision and self._gen(True).rows_on_device()

    @property
    def keep_mask_fn(self) -> Any:
        """The token-reduction mask on the GPU (hulurt.device_reduce) when the decoder runs on the CUDA provider
        and the kernel library loads; None (numpy) otherwise."""
        if not self._keep_mask_checked:
            self._keep_mask_checked = True
            if self.session("decoder").provider == "cuda":
                from hulurt.device_reduce import device_reducer

                self._keep_mask_fn = device_reducer(self.options.device_id)
        return self._keep_mask_fn

    def session(self, piece: str) -> Session:
        """Session of `piece`; "decoder" is whichever decoder form `decoder_piece` chose."""
        if piece not in self._sessions:
            t = time.perf_counter()
            real = self.decoder_piece if piece == "decoder" else piece
            options = self.options
            if real == "decoder_gqa" and self._cuda_graph is not False and options.provider in ("auto", "cuda"):
                options = replace(options, cuda_graph=True)  # used by the CUDA EP only
            if real == "vision":  # its batches' activations are freed for the decoder (backends/base.py)
                options = replace(options, release_after_run=True)
            sess = open_session(self.manifest.piece_path(real), options)
            declared = getattr(sess, "declared_io", None)
            if declared is not None:  # the manifest's dims must be the graph's own (before anything is sized)
                inputs, outputs = declared()
                check_graph_io(self.manifest, real, inputs, outputs, where=self.manifest.pieces[real].file)
            self._sessions[piece] = sess
            log.info("loaded %s in %.0f ms", real, (time.perf_counter() - t) * 1e3)
        return self._sessions[piece]

    @property
    def has_vision(self) -> bool:
        return "vision" in self.manifest.pieces

    @property
    def provider(self) -> str:
        return self.session("decoder").provider

    def _gen(self, visual: bool) -> Generator:
        sessions = {"embed": self.session("embed"), "decoder": self.session("decoder")}
        if visual:
            sessions["vision"] = self.session("vision")
        if self._generator is None or set(self._generator.sessions) != set(sessions):
            old = self._generator
            self._generator = Generator(sessions, self.facts, self._kv_strategy, cuda_graph=self.uses_cuda_graph,
                                        device_sampling=self._device_sampling, device_rows=self._device_rows,
                                        **self._split)
            if old is not None and old._static is not None:  # the KV buffers (and a captured graph) carry over
                self._generator._static = old._static
        return self._generator

    # ---- requests --------------------------------------------------------------------------------------

    def inputs(
        self,
        prompt: str,
        images: Sequence[PathLike] = (),
        volume: PathLike | None = None,
        video: PathLike | None = None,
        token_reduction: bool | None = None,
        max_new_tokens: int | None = None,
        clock: StageClock | None = None,
        **read: Any,
    ) -> Any:
        """Files + question -> hulurt.inputs.ModelInputs (the same function the reference path uses).
        Media order in the prompt: images, then the volume, then the video. The context is checked on the text
        alone before any file is read (and again with the visual tokens before any graph runs).

        read (keywords): window: CT preset name, (center, width) or "center,width" for DICOM and NIfTI (None:
        the file's own VOI LUT or window, else min-max). series: the SeriesInstanceUID to read from a study
        folder (None: the largest, with a note). num_slices: slices kept by upstream's linspace(0, n-1, N)
        rule; by default a volume with more slices than the bundle takes is sampled down by the same rule,
        with a note. visual_budget: "fit" (default) resizes visual inputs with the processor's max-tokens rule
        into what this bundle can take (its visual range and context, leaving room for the answer), "upstream"
        keeps the processor's default budget (preprocess.max_tokens) exactly, an int sets the budget in tokens
        (docs/inputs.md). max_pixels: samples a reader may decode for one input, checked from the headers."""
        from hulurt.media import kind_of

        media: list[Any] = [Path(p) for p in images]
        if volume is not None:
            _check_path(volume, "--volume", checks.file_or_dir_path)  # before kind_of opens it
            kind = kind_of(volume)
            if kind not in _VOLUME_KINDS or (kind == "dicom" and not Path(volume).is_dir()):
                raise UnsupportedInputError(
                    volume, f"--volume expects a NIfTI file (.nii/.nii.gz) or a directory holding one DICOM "
                    f"series; this is a {kind} file (use --image for 2-D images and single DICOM files, "
                    "--video for videos)"
                )
            media.append(Path(volume))
        if video is not None:
            media.append(Path(video))
        return self.media_inputs(prompt, media, token_reduction, max_new_tokens, clock, **read)

    def media_inputs(
        self,
        prompt: str,
        media: Sequence[Any],
        token_reduction: bool | None = None,
        max_new_tokens: int | None = None,
        clock: StageClock | None = None,
        *,
        window: Any = None,
        series: str | None = None,
        num_slices: int | None = None,
        visual_budget: str | int | None = "fit",
        max_pixels: int | None = None,
    ) -> Any:
        """`inputs` for visual inputs in prompt order, each a path of any kind (image, DICOM file or series
        directory, NIfTI, video) or an already-read hulurt.media.Media. clock: times "reduction" (token
        reduction masks) apart from the rest. window, series, num_slices, visual_budget, max_pixels: `inputs`."""
        from hulurt.inputs import build_inputs

        reason = checks.prompt(prompt)
        if reason is not None:
            raise UnsupportedInputError("--prompt", f"the prompt {reason}")
        if media and not self.has_vision:
            raise UnsupportedInputError(
                media[0], f"this bundle ({self.manifest.root}) is text-only: it has no vision piece, so it cannot "
                "take images, volumes or videos; ask a text question or build a bundle with vision"
            )
        # a caller's tokenizer without special tokens has no encode_text (hulurt.inputs.Encoder)
        text_ids = len(getattr(self.tokenizer, "encode_text", self.tokenizer.encode)(prompt))
        check_context(text_ids, 1 if max_new_tokens is None else max_new_tokens, self.facts.max_context,
                      what="question text", context_name=self.facts.context_name)
        for path in media:  # a named pipe or a device would block its reader: refused before anything opens it
            if isinstance(path, (str, os.PathLike)):
                _check_path(path, "input file", checks.file_or_dir_path)
        for name, check, value in (("--window", checks.window, window), ("--slices", checks.num_slices, num_slices),
                                    ("--visual-budget", checks.visual_budget, visual_budget),
                                    ("--max-pixels", checks.max_pixels, max_pixels)):
            why = check(value)
            if why is not None:
                raise UnsupportedInputError(name, why)
        if visual_budget is None:
            visual_budget = "fit"
        if isinstance(visual_budget, str) and visual_budget.isdigit():
            visual_budget = int(visual_budget)
        budget = self.visual_budget(text_ids, max_new_tokens, visual_budget) if media else None
        opts, reader_options = self.input_options(
            token_reduction, max_tokens=budget, upstream_frames=visual_budget == "upstream", window=window,
            series=series, num_slices=num_slices, max_pixels=max_pixels,
        )
        inputs = build_inputs(media, prompt, self.tokenizer, self.facts.image_token_id, opts, self.chat_template,
                              reader_options=reader_options, clock=clock)
        self._check_fits(inputs, max_new_tokens)
        return inputs

    def input_options(
        self,
        token_reduction: bool | None = None,
        *,
        max_tokens: int | None = None,
        upstream_frames: bool = False,
        window: Any = None,
        series: str | None = None,
        num_slices: int | None = None,
        max_pixels: int | None = None,
    ) -> tuple[Any, dict[str, dict[str, Any]]]:
        """This bundle's hulurt.inputs.InputOptions and per-reader options (video fps and frame cap), as
        `inputs` uses them; for callers that build inputs themselves (the server's multi-turn chats).
        max_tokens: the visual budget (None = preprocess.max_tokens, upstream's). Volumes keep at most the
        bundle's frame range, and with a budget below upstream's at most budget // min_tokens frames (each
        frame takes at least min_tokens) unless upstream_frames."""
        from hulurt.inputs import InputOptions

        f = self.facts
        pp = self.manifest.preprocess
        budget = pp.max_tokens if max_tokens is None else max_tokens
        frames = self.manifest.limits.max_frames
        if not upstream_frames:
            frames = max(1, min(frames, budget // max(1, pp.min_tokens)))
        compression = f.reduction_enabled if token_reduction is None else token_reduction
        opts = InputOptions(
            compression=compression,
            compression_mode=f.reduction_mode,
            threshold=f.reduction_threshold,
            min_kept=f.reduction_min_tokens,
            min_tokens=pp.min_tokens,
            max_tokens=budget,
            window=window,
            series=series,
            num_slices=num_slices,
            max_frames=frames,
            # only asked for with reduction on: finding the GPU reducer opens the decoder session, which a Model
            # used for its input code alone (huluexport bench's reference side) must never load
            keep_mask_fn=self.keep_mask_fn if compression else None,
        )
        if max_pixels is not None:
            opts = replace(opts, max_pixels=max_pixels)
        reader_options = {"video": {"fps": pp.fps, "max_frames": min(pp.max_frames, self.manifest.limits.max_frames)}}
        return opts, reader_options

    def visual_budget(self, text_tokens: int, max_new_tokens: int | None, mode: str | int = "fit") -> int:
        """Visual tokens (merged, before reduction) the resize rule may give all inputs of a request.

        "upstream": the processor's default (preprocess.max_tokens). "fit": that, but no more than the
        bundle's visual range (dim n_visual) and its context less the question, a margin for the template and
        the answer's room (max_new_tokens, else the bundle default up to a quarter of the context). An int:
        that many tokens."""
        pp = self.manifest.preprocess
        if mode == "upstream":
            return pp.max_tokens
        if isinstance(mode, int) and not isinstance(mode, bool):
            if not pp.min_tokens <= mode:
                raise UnsupportedInputError(
                    "--visual-budget", f"{mode} tokens; expected at least the bundle's min_tokens {pp.min_tokens}"
                )
            return mode
        if mode != "fit":
            raise UnsupportedInputError("--visual-budget", f"{mode!r}; expected 'fit', 'upstream' or a number")
        ctx = self.facts.max_context
        reserve = max_new_tokens if max_new_tokens is not None else min(self.facts.default_max_new_tokens, ctx // 4)
        n_visual = self.facts.dim_ranges.get("n_visual")
        room = ctx - text_tokens - _TEMPLATE_MARGIN - reserve
        # each frame also costs template text (a separator): at most min_tokens-sized frames fit, so leave
        # _FRAME_TEXT tokens per min_tokens visual tokens
        room = room * pp.min_tokens // (pp.min_tokens + _FRAME_TEXT)
        budget = min(pp.max_tokens, n_visual.max if n_visual is not None else pp.max_tokens, room)
        budget = max(budget, pp.min_tokens)
        if budget < pp.max_tokens:
            log.info(
                "visual inputs fitted into %d tokens with the processor's max-tokens resize rule (this bundle: "
                "context %d, visual range %s); upstream's default budget is %d (visual_budget='upstream' keeps it)",
                budget, ctx, n_visual.max if n_visual is not None else "-", pp.max_tokens,
            )
        return budget

    def _check_fits(self, inputs: Any, max_new_tokens: int | None) -> None:
        """Refuse, naming the files, visual tokens the bundle cannot take (its generate check names none)."""
        if not inputs.visuals:
            return
        files = ", ".join(f"{v.source} ({int(v.keep.sum())} tokens)" for v in inputs.visuals)
        n_prompt = int(inputs.input_ids.shape[-1])
        n_visual = self.facts.dim_ranges.get("n_visual")
        if n_visual is not None and inputs.n_kept > n_visual.max:
            raise ContextLengthError(
                f"{files}: {inputs.n_kept} visual tokens; this bundle takes at most {n_visual.max} "
                "(use a smaller visual_budget / --visual-budget, fewer slices, or a bundle built for more)"
            )
        need = n_prompt + (1 if max_new_tokens is None else max_new_tokens)
        if need > self.facts.max_context:
            raise ContextLengthError(
                f"{files}: the prompt is {n_prompt} tokens with its visual inputs, + "
                f"{need - n_prompt} to generate = {need}; {self.facts.context_name} is {self.facts.max_context} "
                "(use --visual-budget fit or a smaller number, fewer slices, or fewer new tokens)"
            )

    def prepare(
        self,
        prompt: str,
        images: Sequence[PathLike] = (),
        volume: PathLike | None = None,
        video: PathLike | None = None,
        token_reduction: bool | None = None,
        max_new_tokens: int | None = None,
        **read: Any,
    ) -> PromptFeed:
        """`inputs(...)` as the loop's PromptFeed, timed as the request's preprocessing; `read`: the keywords
        window, series, num_slices, visual_budget, max_pixels of `inputs`."""
        return _feed(lambda clock: self.inputs(prompt, images, volume, video, token_reduction, max_new_tokens,
                                               clock, **read))

    def prepare_media(
        self,
        prompt: str,
        media: Sequence[Any],
        token_reduction: bool | None = None,
        max_new_tokens: int | None = None,
        **read: Any,
    ) -> PromptFeed:
        """`media_inputs(...)` as the loop's PromptFeed, timed as the request's preprocessing."""
        return _feed(lambda clock: self.media_inputs(prompt, media, token_reduction, max_new_tokens, clock,
                                                     **read))

    def stream(
        self,
        prompt: str,
        *,
        images: Sequence[PathLike] = (),
        volume: PathLike | None = None,
        video: PathLike | None = None,
        max_new_tokens: int | None = None,
        sampling: SamplingConfig | None = None,
        token_reduction: bool | None = None,
        stop_ids: Sequence[int] | None = None,
        on_text: Callable[[str], None] | None = None,
        window: Any = None,
        series: str | None = None,
        num_slices: int | None = None,
        visual_budget: str | int | None = "fit",
        max_pixels: int | None = None,
        on_logits: Callable[[Any], None] | None = None,
    ) -> Generation:
        """Prepare and check the request now; iterate the result for text pieces as they are decoded.
        window, series, num_slices, visual_budget, max_pixels: see `inputs`; on_logits: see `run`."""
        started = time.perf_counter()
        feed = self.prepare(prompt, images, volume, video, token_reduction, max_new_tokens, window=window,
                            series=series, num_slices=num_slices, visual_budget=visual_budget,
                            max_pixels=max_pixels)
        return self.run(feed, max_new_tokens=max_new_tokens, sampling=sampling, stop_ids=stop_ids,
                        on_text=on_text, started=started, on_logits=on_logits)

    def generate(self, prompt: str, **kwargs: Any) -> Generation:
        """Like `stream`, run to the end: `.text`, `.token_ids`, `.timings`."""
        return self.stream(prompt, **kwargs).result()

    def run(
        self,
        feed: PromptFeed,
        *,
        max_new_tokens: int | None = None,
        sampling: SamplingConfig | None = None,
        stop_ids: Sequence[int] | None = None,
        on_text: Callable[[str], None] | None = None,
        started: float | None = None,
        on_logits: Callable[[Any], None] | None = None,
    ) -> Generation:
        """Run an already prepared request (e.g. ids built by the caller). `on_logits(row)` sees each logits
        row [1, vocab] (float32, host) a token is chosen from; it brings every row to the host (diagnostics)."""
        return self._gen(bool(feed.visuals)).generate(
            feed, self.tokenizer, max_new_tokens=max_new_tokens, sampling=sampling, stop_ids=stop_ids,
            on_text=on_text, started=started, on_logits=on_logits,
        )


def _feed(build: Callable[[StageClock], Any]) -> PromptFeed:
    """Run `build(clock)` (-> hulurt.inputs.ModelInputs) as the stage "preprocess" (its token reduction as
    "reduction") and turn the inputs into the loop's PromptFeed."""
    clock = StageClock()
    t0 = time.perf_counter()
    with clock("preprocess"):
        inputs = build(clock)
    return feed_of(inputs, preprocess_s=time.perf_counter() - t0, stages=clock.seconds)


def _check_path(path: PathLike, name: str, check: Callable[[Any], str | None]) -> None:
    reason = check(path)
    if reason is not None:
        raise UnsupportedInputError(name, reason)


def load(
    bundle: PathLike,
    *,
    provider: str = "auto",
    threads: int = 0,
    verify_hashes: bool = True,
    kv_strategy: str | None = None,
    trt_cache: PathLike | None = None,
    tokenizer: Any = None,
    decoder_form: str | None = None,
    cuda_graph: bool | None = None,
    vision_batch: int | None = None,
    prefill_chunk: int | None = None,
    device_sampling: bool | None = None,
    device_rows: bool | None = None,
    kv_capacity: int | None = None,
) -> Model:
    """Open a bundle directory: strict manifest, every file's size and (unless verify_hashes=False) sha256.
    tokenizer: see Model (None = the bundle's own). `trt_cache`: directory for the TensorRT execution provider's
    engine and timing caches (its profiles always come from the manifest's dim ranges; backends/ort.py).
    vision_batch: most frames per vision call; prefill_chunk: most prompt tokens per prefill call (None: the
    most whose activations fit a fifth of the available memory, hulurt.schedule). Any value gives the same visual
    rows; tokens stay greedy-equal. device_sampling, device_rows: see Model. kv_capacity: most tokens (prompt +
    new) a request's KV cache holds, at most the bundle's max_context (None: that); every context check and the
    visual budget use it, and the gqa-static form allocates its KV buffers at this size once, on the device
    where it runs (lower it on a GPU short of memory: hulurt.static_decode.check_kv_room says by how much)."""
    t = time.perf_counter()
    manifest = load_manifest(bundle, verify_hashes=verify_hashes)
    options = BackendOptions(provider=provider, threads=threads,
                             trt_cache_dir=None if trt_cache is None else os.fspath(trt_cache))
    model = Model(manifest, options, kv_strategy, tokenizer, vision_batch=vision_batch, prefill_chunk=prefill_chunk,
                  decoder_form=decoder_form, cuda_graph=cuda_graph, device_sampling=device_sampling,
                  device_rows=device_rows, kv_capacity=kv_capacity)
    for piece in ("embed", "decoder", "vision"):  # open now: load time is not part of a request's latency
        if piece == "decoder" or piece in manifest.pieces:
            model.session(piece)
    if model.decoder_piece == "decoder_gqa":  # its KV buffers too (on a GPU: refused here if they cannot fit)
        model._gen(False).static_decoder()
    log.info("bundle %s checked in %.0f ms (hashes %s)", bundle, (time.perf_counter() - t) * 1e3,
             "verified" if verify_hashes else "skipped")
    return model
