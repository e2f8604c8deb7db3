"""What one request is made of and what it gives back: the bundle's numbers the loop needs (BundleFacts), the
preprocessed request (VisualFeed, PromptFeed) and the results (Timings, Generation). hulurt.generate runs them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from hulurt import schedule
from hulurt.contract import DimRange, Dims

# --------------------------------------------------------------------------------------------------
# What the loop consumes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleFacts:
    """The numbers of one bundle the loop needs (read from its manifest by hulurt.api)."""

    dims: Dims
    max_context: int  # prompt + generated tokens must fit
    stop_ids: tuple[int, ...]
    image_token_id: int
    reduction_enabled: bool = False
    reduction_threshold: float = 0.1
    reduction_min_tokens: int = 1
    reduction_mode: str = "bf16"
    default_max_new_tokens: int = 256  # used when a request does not say, clamped to the room left
    dim_ranges: dict[str, DimRange] = field(default_factory=dict)  # the bundle's build-time limits per named dim
    target: str = "generic"  # the build target those ranges came from
    shape: schedule.ModelShape | None = None  # widths for the default vision batch / prefill chunk (None: no split)
    context_name: str = "the bundle's maximum context"  # what max_context is, for the messages that cite it


@dataclass(frozen=True)
class VisualFeed:
    """One visual input ready for the vision graph: patches [n_frames, n_groups, merge_group, patch_dim] of
    a (gh, gw) patch grid with merge m; keep [n_frames, n_groups] (None = every merged token kept)."""

    patches: NDArray[np.float32]
    grid_hw: tuple[int, int]
    merge: int
    keep: NDArray[np.bool_] | None = None

    @property
    def tokens_before(self) -> int:
        return int(self.patches.shape[0] * self.patches.shape[1])

    @property
    def tokens_after(self) -> int:
        return self.tokens_before if self.keep is None else int(self.keep.sum())


@dataclass(frozen=True)
class PromptFeed:
    """A request after preprocessing: prompt ids (1-D, image ids already compacted to the kept rows) and
    its visual inputs in placeholder order."""

    input_ids: NDArray[np.int64]
    visuals: tuple[VisualFeed, ...] = ()
    preprocess_s: float = 0.0
    stages: Mapping[str, float] = field(default_factory=dict)  # preprocessing's own stages (hulurt.clock)
    notes: tuple[str, ...] = ()  # changes the readers made on their own, for the timing summary


class TextDecoder(Protocol):
    """What the loop needs of a tokenizer (hulurt.tokenizer.Tokenizer; tests use a byte-level stand-in)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """Seconds per phase of one request, token counts, and the derived rates."""

    preprocess_s: float
    vision_s: float
    prefill_s: float
    ttft_s: float  # request start (incl. preprocessing) -> first generated token chosen
    decode_s: float  # first token chosen -> last token chosen
    decode_steps: int  # decoder calls after the prefill
    prompt_tokens: int
    new_tokens: int
    visual_tokens_before: int
    visual_tokens_after: int
    # exclusive seconds per stage (hulurt.clock): preprocess, reduction (from the PromptFeed), vision, embed
    # (the prompt's), prefill (decoder over the prompt + choosing the first token), decode (every later step)
    stages: Mapping[str, float] = field(default_factory=dict)
    vision_batch: int = 0  # most frames per vision call (0: no visual input)
    prefill_chunk: int = 0  # most prompt tokens per prefill call
    notes: tuple[str, ...] = ()  # e.g. "ct.nii.gz: 600 -> 256 slices sampled" (never a silent change)

    @property
    def decode_tok_s(self) -> float:
        steps = self.decode_steps
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def summary(self) -> str:
        """The one-line timing summary the CLI prints after the answer."""
        vis = (
            f"visual tokens {self.visual_tokens_before} -> {self.visual_tokens_after}"
            if self.visual_tokens_before
            else "visual tokens 0"
        )
        return (
            f"preprocess {self.preprocess_s * 1e3:.0f} ms | vision {self.vision_s * 1e3:.0f} ms | "
            f"prefill {self.prefill_s * 1e3:.0f} ms ({self.prompt_tokens} tok) | TTFT {self.ttft_s * 1e3:.0f} ms | "
            f"decode {self.decode_tok_s:.1f} tok/s ({self.new_tokens} tok) | {vis}"
            + "".join(f" | {n}" for n in self.notes)
        )


@dataclass
class Generation:
    """A running request. Iterate it for text pieces as they are decoded; afterwards `token_ids`, `text`,
    `stop_reason` and `timings` are set. Concatenating the pieces gives exactly `text`."""

    _pieces: Iterator[str]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    stop_reason: str = ""  # "stop_id" | "max_new_tokens" | "context"
    timings: Timings | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def result(self) -> Generation:
        """Run to the end (if not iterated yet) and return self."""
        for _ in self._pieces:
            pass
        return self
