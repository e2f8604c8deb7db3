"""HuluMed: vision tower + projector + decoder, the multimodal merge with token reduction, and generate.

The merge follows docs/model.md §5.3 / §6.2 / §6.3 (ZJUI-AI4H/Hulu-Med src/hulumed/model/hulumed_arch.py
prepare_inputs_labels_for_multimodal, in our own words); the keep mask comes from hulurt.reduction.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from hulurt import reduction
from hulurt.clock import StageClock
from hulurt.rope import vision_rope
from torch import nn

from huluexport.config import HuluConfig
from huluexport.errors import UnsupportedInputError
from huluexport.reference.decoder import KV, Decoder
from huluexport.reference.projector import Projector
from huluexport.reference.vision import VisionEncoder, merge_groups

log = logging.getLogger(__name__)

MODALS = ("image", "video")


@dataclass(frozen=True)
class VisualInput:
    """One visual input: all frames share one grid. patches [T, gh*gw, 588] float32 in merge-grouped order."""

    patches: np.ndarray | torch.Tensor
    grid: tuple[int, int]  # (gh, gw) in patches
    merge: int  # 1 for images, 2 for video / 3-D
    modal: str = "image"  # "video" (also 3-D volumes) is the only modal that can be compressed

    def __post_init__(self) -> None:
        gh, gw = self.grid
        shape = tuple(self.patches.shape)
        if self.modal not in MODALS:
            raise ValueError(f"modal {self.modal!r}; expected one of {MODALS}")
        if self.merge not in (1, 2) or gh % self.merge or gw % self.merge:
            raise ValueError(
                f"grid {self.grid} with merge {self.merge}: merge must be 1 or 2 and divide the grid"
            )
        if len(shape) != 3 or shape[1] != gh * gw:
            raise ValueError(f"patches must be [T, gh*gw={gh * gw}, patch_dim]; got {shape}")

    @property
    def frames(self) -> int:
        return int(self.patches.shape[0])

    @property
    def tokens_per_frame(self) -> int:
        gh, gw = self.grid
        return (gh // self.merge) * (gw // self.merge)


@dataclass(frozen=True)
class PreparedInputs:
    inputs_embeds: torch.Tensor  # [1, L', H]
    position_ids: torch.Tensor  # [1, L'] = 0..L'-1 over the compacted sequence
    input_ids: torch.Tensor  # [L'] compacted ids
    keep: np.ndarray  # flat keep mask over all image positions (pre-compaction); empty from prepare_compacted


@dataclass(frozen=True)
class Step:
    """One decoder call of `HuluMed.steps`: the token chosen from its last-position logits, those logits [V],
    and the KV cache after the call."""

    token: int
    logits: torch.Tensor
    past: KV


def greedy(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits.float()))


class HuluMed(nn.Module):
    """Reference names: vision_encoder.*, mm_projector.*, decoder.* (see weights.reference_name)."""

    def __init__(self, cfg: HuluConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = VisionEncoder(cfg.vision)
        self.mm_projector = Projector(cfg.vision.hidden, cfg.decoder.hidden, cfg.projector.depth)
        self.decoder = Decoder(cfg.decoder)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device

    # ---- vision ------------------------------------------------------------------------------------------

    def vision_tower(
        self, pixel_patches: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor
    ) -> torch.Tensor:
        """The contract's vision piece: [T, n_groups, merge_group, 588] + cos/sin [n_patches, dv]
        -> [T, n_groups, H]."""
        t, g, mg, p = pixel_patches.shape
        x = pixel_patches.reshape(t, g * mg, p)  # (T, G, g, 588) -> (T, n, 588), merge-grouped token order
        h = self.vision_encoder(x, rope_cos, rope_sin)  # (T, n, Cv)
        h = merge_groups(h.reshape(t, g, mg, h.shape[-1]))  # (T, n, Cv) -> (T, G, g, Cv) -> (T, G, Cv)
        return self.mm_projector(h)  # (T, G, H)

    def encode(self, vis: VisualInput) -> torch.Tensor:
        """[T, nb, H] features of one visual input (rope table from hulurt.rope)."""
        gh, gw = vis.grid
        cos, sin = vision_rope(gh, gw, vis.merge, self.cfg.vision.head_dim, self.cfg.vision.rope_theta)
        dev = self.device
        patches = torch.as_tensor(np.asarray(vis.patches, dtype=np.float32), device=dev)
        t = patches.shape[0]
        g = vis.merge * vis.merge
        grouped = patches.reshape(t, -1, g, patches.shape[-1])  # (T, n, 588) -> (T, nb, m*m, 588)
        return self.vision_tower(grouped, torch.tensor(cos, device=dev), torch.tensor(sin, device=dev))

    def keep_mask(self, vis: VisualInput) -> np.ndarray:
        """[T, nb] keep mask (docs/model.md §6.2): only video inputs with T > 1 and compression enabled."""
        t, nb = vis.frames, vis.tokens_per_frame
        r = self.cfg.reduction
        if not r.enabled or vis.modal != "video" or t < 2:
            return np.ones((t, nb), dtype=bool)
        # (T, n, 588) -> (T, nb, m*m*588): one merged token's raw pixels per row
        frames = np.asarray(vis.patches, dtype=np.float32).reshape(t, nb, -1)
        return reduction.keep_mask(frames, r.threshold, r.min_tokens, r.mode)

    # ---- multimodal merge ---------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_inputs(
        self,
        input_ids: torch.Tensor | list[int],
        visuals: list[VisualInput] = (),
        clock: StageClock | None = None,
    ) -> PreparedInputs:
        """Embed ids, drop reduced image positions, scatter visual rows in order (docs/model.md §5.3, §6.3).
        clock: the vision tower is timed as "vision", the keep masks as "reduction" (hulurt.clock)."""
        clock = clock or StageClock()
        # batch 1 only, as upstream asserts
        ids = torch.as_tensor(input_ids, dtype=torch.int64, device=self.device).reshape(-1)
        image_id = self.cfg.tokens.image
        is_image = ids == image_id
        n_image = int(is_image.sum())
        if not visuals:
            if n_image:
                raise UnsupportedInputError(
                    None, f"input_ids hold {n_image} image ids ({image_id}) but no visual input was given"
                )
            keep = np.zeros(0, dtype=bool)
            feats = None
        else:
            with clock("vision"):
                per = [self.encode(v) for v in visuals]
            expected = sum(f.shape[0] * f.shape[1] for f in per)
            if n_image != expected:
                raise UnsupportedInputError(
                    None,
                    f"input_ids hold {n_image} image ids ({image_id}); "
                    f"the visual inputs give {expected} merged tokens",
                )
            with clock("reduction"):
                keep = np.concatenate([self.keep_mask(v).reshape(-1) for v in visuals])
            feats = reduction.kept_rows(torch.cat([f.reshape(-1, f.shape[-1]) for f in per]), keep)
            stay = reduction.kept_positions(ids.cpu().numpy(), image_id, keep)
            ids = ids[torch.from_numpy(stay).to(self.device)]
            is_image = ids == image_id
        emb = self.decoder.embed(ids)  # (L', H)
        if feats is not None:
            emb[is_image] = feats.to(emb.dtype)
        length = ids.shape[0]
        return PreparedInputs(
            inputs_embeds=emb[None],
            position_ids=torch.arange(length, dtype=torch.int64, device=self.device)[None],
            input_ids=ids,
            keep=keep,
        )

    # ---- generation ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_compacted(
        self,
        input_ids: torch.Tensor | np.ndarray | list[int],
        pixel_patches: list[np.ndarray | torch.Tensor],
        grids: list[tuple[int, int]],
        visual_rows: np.ndarray | torch.Tensor,
    ) -> PreparedInputs:
        """Inputs already reduced by the runtime (hulurt.inputs.ModelInputs): ids after compaction, contract
        patches [T, G, g, 588] per input with their (gh, gw), and the kept rows of the concatenated
        features."""
        dev = self.device
        ids = torch.as_tensor(input_ids, dtype=torch.int64, device=dev).reshape(-1)
        rows = torch.as_tensor(visual_rows, dtype=torch.int64, device=dev).reshape(-1)
        is_image = ids == self.cfg.tokens.image
        if int(is_image.sum()) != rows.numel():
            raise UnsupportedInputError(
                None, f"input_ids hold {int(is_image.sum())} image ids; visual_rows has {rows.numel()}"
            )
        emb = self.decoder.embed(ids)
        if pixel_patches:
            feats = []
            for x, (gh, gw) in zip(pixel_patches, grids):
                xt = torch.as_tensor(np.asarray(x, dtype=np.float32), device=dev)
                merge = int(round(xt.shape[2] ** 0.5))
                cos, sin = vision_rope(gh, gw, merge, self.cfg.vision.head_dim, self.cfg.vision.rope_theta)
                f = self.vision_tower(xt, torch.tensor(cos, device=dev), torch.tensor(sin, device=dev))
                feats.append(f.reshape(-1, f.shape[-1]))  # (T, G, H) -> (T*G, H)
            emb[is_image] = torch.cat(feats)[rows].to(emb.dtype)
        n = ids.shape[0]
        keep = np.zeros(0, dtype=bool)
        return PreparedInputs(emb[None], torch.arange(n, dtype=torch.int64, device=dev)[None], ids, keep)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | list[int] | None = None,
        visuals: list[VisualInput] = (),
        *,
        prepared: PreparedInputs | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        eos: tuple[int, ...] | None = None,
    ) -> list[int]:
        """Greedy (default) or sampled decoding with a KV cache; returns the new token ids (stop id included).

        Give either input_ids (+ visuals, reduced here) or `prepared` (prepare_inputs / prepare_compacted).
        """
        stop = set(self.cfg.tokens.eos if eos is None else eos)
        prep = prepared if prepared is not None else self.prepare_inputs(input_ids, visuals)
        gen = torch.Generator().manual_seed(seed)
        out: list[int] = []

        def pick(logits: torch.Tensor) -> int:
            return _pick(logits, do_sample, temperature, top_k, top_p, gen)

        for step in itertools.islice(self.steps(prep, pick), max_new_tokens):
            out.append(step.token)
            if step.token in stop:
                break
        return out

    @torch.no_grad()
    def steps(self, prep: PreparedInputs, pick: Callable[[torch.Tensor], int] = greedy) -> Iterator[Step]:
        """The decode loop, once for every caller (generate, `huluexport verify`, `huluexport bench`): the
        prefill over the prompt, then one decoder call per step fed the token the previous call picked. Lazy
        and endless: each `next` runs one decoder call; the caller decides when to stop."""
        dev = prep.inputs_embeds.device
        logits, past = self.decoder(prep.inputs_embeds, prep.position_ids)
        pos = prep.inputs_embeds.shape[1]
        while True:
            last = logits[0, -1]
            tok = pick(last)
            yield Step(tok, last, past)
            emb = self.decoder.embed(torch.tensor([[tok]], dtype=torch.int64, device=dev))
            logits, past = self.decoder(emb, torch.tensor([[pos]], dtype=torch.int64, device=dev), past)
            pos += 1

    @torch.no_grad()
    def prefill_logits(
        self, input_ids: torch.Tensor | list[int], visuals: list[VisualInput] = ()
    ) -> torch.Tensor:
        prep = self.prepare_inputs(input_ids, visuals)
        return self.decoder(prep.inputs_embeds, prep.position_ids)[0][0]  # (L', V)


def _pick(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float, gen: torch.Generator
) -> int:
    x = logits.float()
    if not do_sample or temperature <= 0:
        return int(torch.argmax(x))
    x = x / temperature
    if top_k > 0:
        kth = torch.topk(x, min(top_k, x.numel())).values[-1]
        x = torch.where(x < kth, torch.full_like(x, float("-inf")), x)
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        cut = torch.cumsum(probs, dim=-1) - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_x = torch.where(cut, torch.full_like(sorted_x, float("-inf")), sorted_x)
        x = torch.full_like(x, float("-inf")).scatter(0, order, sorted_x)
    probs = torch.softmax(x, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))  # the generator lives on the CPU


__all__ = ["KV", "HuluMed", "PreparedInputs", "Step", "VisualInput", "greedy"]
