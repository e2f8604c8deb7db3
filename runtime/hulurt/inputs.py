"""One function from "files + question" to model inputs; the runtime and the reference path both call it, so
both see identical patches, grids, keep masks and token ids (docs/model.md §3, §5.2, §6, §7).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np
from numpy.typing import NDArray

from hulurt import reduction
from hulurt.clock import StageClock
from hulurt.media import Media, ReadLimits, kind_of, load_media
from hulurt.media.common import DEFAULT_MAX_PIXELS
from hulurt.media.window import WindowSpec
from hulurt.preprocess import (
    MAX_TOKENS,
    MIN_TOKENS,
    PATCH_DIM,
    VisualPatches,
    plan_sizes,
    preprocess_frames,
    select_merge_sizes,
)
from hulurt.prompt import BUILTIN_CHAT_TEMPLATE, IMAGE_TOKEN, encode_rendered, render_pieces

log = logging.getLogger(__name__)

MediaLike = Union[str, "os.PathLike[str]", Media]


class Encoder(Protocol):
    """encode: template text (control tokens read as such). An encoder with special tokens also has
    `encode_text(text)`, which reads them as plain text (hulurt.tokenizer.Tokenizer); one without is assumed
    to have none."""

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class InputOptions:
    """How files become inputs. Defaults follow the HF-version processor (docs/model.md §3, §6.4, §7.2)."""

    merge_policy: str = (
        "hf"  # "hf": any video/3-D input -> m=2 for all inputs; "original": same rule, per request
    )
    pil_size_swap: bool | None = None  # None: each reader's upstream behaviour (image files: swapped)
    min_tokens: int = MIN_TOKENS
    max_tokens: int = MAX_TOKENS
    compression: bool = False  # config.use_token_compression (6.2); the bundle's manifest says which
    compression_mode: str = "bf16"  # "bf16" reproduces upstream's rounding; "fp32"
    threshold: float = 0.1
    min_kept: int = 1
    video_timestamps: bool = True  # "Time X.Xs:" before each video frame (HF path); volumes never get them
    add_system_prompt: bool = False
    system_prompt: str | None = None
    add_generation_prompt: bool = True
    # keep mask of one input (tokens [T, nb, D], threshold, min_kept, mode) -> [T, nb] bool; None = numpy
    # (hulurt.reduction.keep_mask); the CUDA path passes hulurt.device_reduce's kernel version (bit-identical)
    keep_mask_fn: Any = None
    threads: int | None = None  # resize thread pool size; None = one per CPU core
    # volumes and DICOM (hulurt.media readers; reader_options of build_inputs override these)
    window: WindowSpec = None  # CT preset name, (center, width) or "center,width"; None: the file's VOI/min-max
    num_slices: int | None = None  # slices kept by linspace(0, n-1, N) (NIfTI profiles and DICOM series)
    series: str | None = None  # SeriesInstanceUID to read from a study folder; None: the largest, with a note
    max_frames: int | None = None  # frames per volume; more are sampled down to it with a note (bundle range)
    max_pixels: int = DEFAULT_MAX_PIXELS  # samples a reader may decode for one input (checked from headers)


@dataclass(frozen=True, eq=False)
class VisualInput:
    """One visual input ready for one call of the vision piece (hulurt.contract)."""

    patches: NDArray[np.float32]  # [T, n_groups, m*m, 588]  (contract input pixel_patches)
    grid_thw: tuple[int, int, int]
    merge_size: int
    modal: str  # "image" | "video" (3-D volumes are "video", as upstream maps them)
    keep: NDArray[np.bool_]  # [T, n_groups]; all true unless compressed
    timestamps: tuple[float, ...] | None
    source: str

    @property
    def n_frames(self) -> int:
        return self.grid_thw[0]

    @property
    def n_groups(self) -> int:
        return int(self.patches.shape[1])

    @property
    def kept_per_frame(self) -> NDArray[np.int64]:
        return self.keep.sum(axis=1).astype(np.int64)


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """Everything the vision/embed/decoder pieces need for one request (batch 1)."""

    input_ids: NDArray[np.int64]  # [1, L] after token reduction
    visuals: tuple[VisualInput, ...]
    visual_rows: NDArray[np.int64]  # [n_kept] rows of concat_k(visual_embeds_k.reshape(-1, hidden)) to keep
    prompt: str  # rendered template, before placeholder expansion
    image_token_id: int
    notes: tuple[str, ...] = ()  # what the readers changed on their own (slices sampled to fit the bundle)

    @property
    def n_visual_tokens(self) -> int:
        """Merged visual tokens before reduction."""
        return int(sum(v.keep.size for v in self.visuals))

    @property
    def n_kept(self) -> int:
        return int(self.visual_rows.size)

    @property
    def grid_thw(self) -> NDArray[np.int64]:
        return np.asarray([v.grid_thw for v in self.visuals], dtype=np.int64).reshape(-1, 3)

    @property
    def merge_sizes(self) -> NDArray[np.int64]:
        return np.asarray([v.merge_size for v in self.visuals], dtype=np.int64)

    @property
    def modals(self) -> list[str]:
        return [v.modal for v in self.visuals]

    @property
    def keep_mask(self) -> NDArray[np.bool_]:
        """Flat keep mask over all merged tokens, inputs in order (docs/model.md §6.2)."""
        if not self.visuals:
            return np.zeros(0, dtype=bool)
        return np.concatenate([v.keep.reshape(-1) for v in self.visuals])

    def pixel_values(self) -> NDArray[np.float32]:
        """Upstream's processor layout: [sum T*gh*gw, 588] float32, inputs concatenated in order."""
        if not self.visuals:
            return np.zeros((0, PATCH_DIM), dtype=np.float32)
        return np.concatenate([v.patches.reshape(-1, PATCH_DIM) for v in self.visuals])


def volume_reader_options(options: InputOptions) -> dict[str, dict[str, Any]]:
    """The InputOptions that the DICOM and NIfTI readers take, per reader kind."""
    limits = ReadLimits(max_pixels=options.max_pixels, max_frames=options.max_frames)
    common = {"window": options.window, "num_slices": options.num_slices, "limits": limits}
    return {"dicom": {**common, "series": options.series}, "nifti": common, "image": {}, "video": {}}


def _read(item: MediaLike, options: InputOptions, reader_options: Mapping[str, Mapping[str, Any]]) -> Media:
    if isinstance(item, Media):
        return item
    kind = kind_of(item)
    kw = {k: v for k, v in volume_reader_options(options)[kind].items() if v is not None}
    kw.update(reader_options.get(kind, {}))
    return load_media(item, **kw)


def content_item(media: Media, video_timestamps: bool = True) -> dict[str, Any]:
    """The chat-template content item of one visual input (docs/model.md §7.2)."""
    if media.modal == "image" and media.n_frames == 1:
        return {"type": "image"}
    item: dict[str, Any] = {"type": "video", "num_frames": media.n_frames}
    if media.modal == "video" and video_timestamps and media.timestamps is not None:
        item["timestamps"] = list(media.timestamps)
    return item


def build_inputs(
    media: Sequence[MediaLike],
    question: str,
    tokenizer: Encoder,
    image_token_id: int,
    options: InputOptions = InputOptions(),
    chat_template: str | None = None,
    reader_options: Mapping[str, Mapping[str, Any]] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    history_media: int = 0,
    clock: StageClock | None = None,
) -> ModelInputs:
    """Files (or Media) + question -> ModelInputs.

    media: paths (image, DICOM file or series directory, NIfTI, video) or already-read `Media`, in the order
    they appear in the user turn (before the question). reader_options: per reader kind ("image", "dicom",
    "nifti", "video") keyword arguments, e.g. {"nifti": {"profile": "original", "num_slices": 160}}.
    chat_template: a template string (hulurt.prompt.load_chat_template reads a checkpoint's), None = built-in.
    history: earlier turns as chat messages, rendered before this user turn. history_media: how many of
    `media` (the first ones) belong to those turns; their content items (content_item(media)) must already
    stand in `history`, in the same order, and only the rest go into this user turn. A history item carrying
    an image without its media is rejected as a placeholder mismatch.
    clock: the token-reduction masks are timed as its stage "reduction" (the rest is the caller's).
    """
    clock = clock or StageClock()
    loaded = [_read(m, options, reader_options or {}) for m in media]
    modals = ["image" if m.modal == "image" and m.n_frames == 1 else m.modal for m in loaded]
    merges = select_merge_sizes(modals, options.merge_policy)
    swaps = [m.pil_size_swap if options.pil_size_swap is None else options.pil_size_swap for m in loaded]
    sizes = plan_sizes(
        [m.hw for m in loaded],
        [m.n_frames for m in loaded],
        merges,
        swaps,
        options.min_tokens,
        options.max_tokens,
    )
    visuals: list[VisualInput] = []
    for m, modal, merge, size in zip(loaded, modals, merges, sizes):
        vp: VisualPatches = preprocess_frames(m.frames, size, merge, options.threads)
        t, nb = vp.patches.shape[0], vp.patches.shape[1]
        model_modal = "image" if modal == "image" else "video"
        if options.compression and model_modal == "video" and t > 1:
            # (T, n_groups, m*m, 588) -> (T, n_groups, m*m*588): one merged token's raw pixels per row
            with clock("reduction"):
                keep = (options.keep_mask_fn or reduction.keep_mask)(
                    vp.patches.reshape(t, nb, -1), options.threshold, options.min_kept, options.compression_mode
                )
        else:
            keep = np.ones((t, nb), dtype=bool)
        visuals.append(VisualInput(vp.patches, vp.grid_thw, merge, model_modal, keep, m.timestamps, m.source))
        log.info(
            "%s: %s, %d frame(s) %dx%d -> grid %s m=%d, %d/%d tokens kept",
            m.source,
            modal,
            t,
            *m.hw,
            vp.grid_thw,
            merge,
            int(keep.sum()),
            keep.size,
        )

    if not 0 <= history_media <= len(loaded):
        raise ValueError(f"history_media={history_media}; expected 0..{len(loaded)} (the number of media)")
    content = [content_item(m, options.video_timestamps) for m in loaded[history_media:]]
    content.append({"type": "text", "text": question})
    messages = [*history, {"role": "user", "content": content}]
    rendered = render_pieces(
        messages,
        chat_template or BUILTIN_CHAT_TEMPLATE,
        add_generation_prompt=options.add_generation_prompt,
        add_system_prompt=options.add_system_prompt,
        system_prompt=options.system_prompt,
        image_token=IMAGE_TOKEN,
    )
    per_placeholder = [int(c) for v in visuals for c in v.kept_per_frame]
    # what the user wrote is encoded as text: control tokens come only from the template (role injection)
    ids = encode_rendered(rendered, per_placeholder, tokenizer.encode, image_token_id,
                          getattr(tokenizer, "encode_text", None))
    prompt = rendered.text
    offsets = np.cumsum([0] + [v.keep.size for v in visuals])
    rows = [np.flatnonzero(v.keep.reshape(-1)) + off for v, off in zip(visuals, offsets)]
    visual_rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, dtype=np.int64)
    n_image_ids = int((ids == image_token_id).sum())
    if n_image_ids != visual_rows.size:
        raise ValueError(
            f"internal: {n_image_ids} image ids in the prompt vs {visual_rows.size} kept visual rows "
            f"(is image_token_id {image_token_id} also produced by the text?)"
        )
    notes = tuple(_short_note(m) for m in loaded if m.info.get("note"))
    return ModelInputs(ids[None, :], tuple(visuals), visual_rows, prompt, image_token_id, notes)


def _short_note(m: Media) -> str:
    """The timing summary's form of a reader's note: 'ct.nii.gz: 600 -> 256 slices sampled'."""
    name = os.path.basename(m.source.rstrip("/")) or m.source
    n = m.info.get("source_frames")
    return f"{name}: {n} -> {m.n_frames} slices sampled" if n is not None else f"{name}: {m.info['note']}"
