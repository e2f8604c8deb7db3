"""`huluexport verify`: run a bundle (read through hulurt.manifest) on onnxruntime next to the PyTorch reference
and compare every output, one row each, against huluexport/tolerances.py. Raises nothing; returns a Report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hulurt import manifest as rt
from hulurt.contract import assert_conforms, bind
from hulurt.rope import vision_rope

from huluexport.config import HuluConfig, from_checkpoint
from huluexport.errors import ConfigError, ManifestError
from huluexport.tolerances import Tolerance, get

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionCase:
    name: str
    grid: tuple[int, int]  # (gh, gw) in patches
    merge: int
    frames: int
    modal: str
    repeat_frame: bool = False  # frame 1 == frame 0 (a static slice: token reduction keeps its token 0)


# Sizes chosen so every dynamic dim takes >= 2 values: n_frames 1/2/3, n_groups 24/12/6/4, merge_group 1/4,
# seq_len (prefill lengths differ, decode 1), n_visual 0 and > 0, past_len 0 and growing.
CASES: tuple[VisionCase, ...] = (
    VisionCase("image 4x6", (4, 6), 1, 1, "image"),
    VisionCase("image 6x2", (6, 2), 1, 1, "image"),
    VisionCase("video 3x4x6", (4, 6), 2, 3, "video"),
    VisionCase("volume 2x4x4", (4, 4), 2, 2, "video", repeat_frame=True),
)


@dataclass(frozen=True)
class Row:
    piece: str
    case: str
    output: str
    max_abs: float
    max_rel: float  # max abs diff / max |reference|
    cosine: float
    top1: float | None
    tolerance: Tolerance
    failed: tuple[str, ...]
    ref_std: float = 0.0  # spread of the reference output: a near-constant one would make parity trivial

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class Report:
    bundle: Path
    precision: str
    rows: tuple[Row, ...]
    tokens_reference: dict[str, list[int]]
    tokens_bundle: dict[str, list[int]]
    seconds: float
    dims_seen: dict[str, tuple[int, ...]]  # every size each named dim took in this run

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        head = f"{'piece':8} {'case':22} {'output':16} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'top1':>7}  result"
        lines = [
            f"verify {self.bundle} ({self.precision}, onnxruntime CPU vs PyTorch reference fp32)",
            head,
            "-" * len(head),
        ]
        for r in self.rows:
            top1 = f"{r.top1:7.3f}" if r.top1 is not None else " " * 7
            res = "ok" if r.ok else "FAIL " + ", ".join(r.failed)
            lines.append(
                f"{r.piece:8} {r.case:22} {r.output:16} {r.max_abs:10.3e} {r.max_rel:10.3e} "
                f"{r.cosine:10.6f} {top1}  {res}"
            )
        for k, ref in self.tokens_reference.items():
            got = self.tokens_bundle[k]
            same = "identical" if got == ref else "DIFFER"
            lines.append(f"greedy {k}: {same} ({len(ref)} steps) reference {ref} bundle {got}")
        lines.append(
            f"{'PASS' if self.ok else 'FAIL'}: {sum(r.ok for r in self.rows)}/{len(self.rows)} rows "
            f"within tolerance ({self.seconds:.1f} s)"
        )
        return "\n".join(lines)


def compare(
    piece: str,
    case: str,
    output: str,
    got: np.ndarray,
    want: np.ndarray,
    tol: Tolerance,
    logits: bool = False,
) -> Row:
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return Row(
            piece,
            case,
            output,
            float("inf"),
            float("inf"),
            0.0,
            None,
            tol,
            (f"shape {g.shape} != reference {w.shape}",),
            float(w.std()) if w.size else 0.0,
        )
    diff = np.abs(g - w)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(w).max()) if w.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    denom = float(np.linalg.norm(g) * np.linalg.norm(w))
    cosine = float((g.ravel() @ w.ravel()) / denom) if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    top1 = None
    if logits:
        g2, w2 = g.reshape(-1, g.shape[-1]), w.reshape(-1, w.shape[-1])
        top1 = float(np.mean(g2.argmax(-1) == w2.argmax(-1)))
    failed = []
    if not np.isfinite(g).all():
        failed.append("non-finite values")
    if tol.max_abs is not None and not max_abs <= tol.max_abs:
        failed.append(f"max abs > {tol.max_abs:g}")
    if tol.max_rel is not None and not max_rel <= tol.max_rel:
        failed.append(f"max rel > {tol.max_rel:g}")
    if tol.min_cosine is not None and not cosine >= tol.min_cosine:
        failed.append(f"cosine < {tol.min_cosine:g}")
    if top1 is not None and tol.min_top1 is not None and not top1 >= tol.min_top1:
        failed.append(f"top1 < {tol.min_top1:g}")
    return Row(
        piece,
        case,
        output,
        max_abs,
        max_rel,
        cosine,
        top1,
        tol,
        tuple(failed),
        float(w.std()) if w.size else 0.0,
    )


class BundleRunner:
    """The bundle's three graphs on onnxruntime CPU; feeds and outputs checked against the contract."""

    def __init__(self, m: rt.Manifest, threads: int = 2) -> None:
        import onnxruntime as ort

        self.m = m
        self.specs = m.specs()
        self.act = np.dtype(m.dims.act_dtype)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.seen: dict[str, set[int]] = {}
        self.sessions = {}
        for name in ("vision", "embed", "decoder"):
            if name == "decoder" and name not in m.pieces:  # a bundle with only the gqa-static form
                continue
            path = m.piece_path(name)
            try:
                self.sessions[name] = ort.InferenceSession(
                    str(path), opts, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
                raise ManifestError(f"{path}: onnxruntime cannot load this graph ({exc})") from None

    def run(self, piece: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[piece]
        sizes = bind(spec, feeds, self.m.dim_ranges, where=str(self.m.piece_path(piece)))
        names = [t.name for t in spec.outputs]
        outs = dict(zip(names, self.sessions[piece].run(names, feeds)))
        sizes = assert_conforms(spec, outs, sizes, where=str(self.m.piece_path(piece)))
        for k, v in sizes.items():
            self.seen.setdefault(k, set()).add(v)
        return outs

    def vision(self, patches: np.ndarray, case: VisionCase) -> np.ndarray:
        gh, gw = case.grid
        g = case.merge * case.merge
        cos, sin = vision_rope(gh, gw, case.merge, self.m.vision.head_dim, self.m.vision.rope_theta)
        grouped = patches.reshape(patches.shape[0], -1, g, patches.shape[-1])  # (T, n, 588) -> (T, G, g, 588)
        feeds = {
            "pixel_patches": np.ascontiguousarray(grouped, dtype=np.float32),
            "rope_cos": np.asarray(cos),
            "rope_sin": np.asarray(sin),
        }
        return self.run("vision", feeds)["visual_embeds"]

    def embed(self, ids: np.ndarray, visual: np.ndarray) -> np.ndarray:
        return self.run(
            "embed",
            {"input_ids": ids.reshape(1, -1).astype(np.int64), "visual_embeds": visual.astype(self.act)},
        )["inputs_embeds"]

    def empty_past(self) -> list[np.ndarray]:
        d = self.m.dims
        return [np.zeros((1, d.kv_heads, 0, d.head_dim), self.act) for _ in range(2 * d.layers)]

    def decoder(
        self, embeds: np.ndarray, start: int, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        spec = self.specs["decoder"]
        n = embeds.shape[1]
        feeds = {
            "inputs_embeds": embeds.astype(self.act),
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
        }
        feeds.update({t.name: p for t, p in zip(spec.inputs[2:], past)})
        outs = self.run("decoder", feeds)
        return outs["logits"], [outs[t.name] for t in spec.outputs[1:]]


def _gqa_decoder(m: rt.Manifest, capacity: int) -> Any:
    """hulurt's StaticDecoder over the bundle's decoder_gqa + embed graphs on onnxruntime CPU (docs/gpu.md)."""
    from hulurt.backends.base import BackendOptions, open_session
    from hulurt.static_decode import StaticDecoder

    opts = BackendOptions(provider="cpu", threads=2)
    dec, emb = open_session(m.piece_path("decoder_gqa"), opts), open_session(m.piece_path("embed"), opts)
    return StaticDecoder(dec, emb, m.dims, capacity)


def _gqa_pass(static: Any, embeds: np.ndarray, tokens: list[int]) -> tuple[np.ndarray, list[int]]:
    """Prefill `embeds`, then one step per reference token (teacher-forced): logits rows and the argmaxes."""
    static.begin(embeds.shape[1] + len(tokens))
    tok, row = static.prefill(embeds, want_logits=True)
    rows, toks = [row], [tok]
    for t in tokens:
        tok, row = static.step(t, want_logits=True)
        rows.append(row)
        toks.append(tok)
    return np.concatenate(rows), toks


def case_patches(case: VisionCase, patch_dim: int, seed: int) -> np.ndarray:
    """Pixel-like patches in [-1, 1] (u8/127.5 - 1), [T, gh*gw, patch_dim] in merge-grouped order."""
    rng = np.random.default_rng(seed)
    gh, gw = case.grid
    u8 = rng.integers(0, 256, size=(case.frames, gh * gw, patch_dim))
    if case.repeat_frame and case.frames > 1:
        u8[1] = u8[0]
    return (u8 / 127.5 - 1.0).astype(np.float32)


def load_reference(m: rt.Manifest, checkpoint: str | Path | None) -> tuple[HuluConfig, Any]:
    """The reference model for a bundle: from --checkpoint, the recorded checkpoint, or the recorded random seed."""
    from huluexport.export.pipeline import (
        WeightSpec,
        config_from_dict,
        reference_model,
        slice_layers,
        weight_source,
    )

    cfg = config_from_dict(m.model)
    w = m.model.get("weights") or {}
    layers = w.get("layers")
    if checkpoint is not None or w.get("kind") == "checkpoint":
        ck = Path(checkpoint if checkpoint is not None else w["checkpoint"])
        if not ck.is_dir():
            raise ConfigError(
                f"{m.path}: the bundle was built from checkpoint {ck}, which is not a directory here; "
                "pass --checkpoint DIR"
            )
        full = from_checkpoint(ck)
        spec = WeightSpec("checkpoint", str(ck), 0, layers, w.get("vision_layers"))
    elif w.get("kind") == "random":
        from huluexport.config import preset

        full = preset(cfg.name)
        spec = WeightSpec("random", None, int(w.get("seed", 0)), layers, w.get("vision_layers"))
    else:
        raise ConfigError(
            f"{m.path}: model.weights does not say where the weights came from; pass --checkpoint DIR"
        )
    sliced = slice_layers(full, layers, spec.vision_layers)
    if sliced.decoder != cfg.decoder or sliced.vision != cfg.vision:
        raise ConfigError(
            f"{ck if checkpoint is not None else m.path}: checkpoint architecture differs from the "
            f"bundle's ({sliced.decoder} vs {cfg.decoder})"
        )
    return cfg, reference_model(sliced, weight_source(full, spec))


@dataclass
class _RefPrompt:
    input_ids: np.ndarray  # compacted ids
    inputs_embeds: np.ndarray  # [1, L, H]
    has_visual: bool
    prefill_logits: np.ndarray  # [1, V]
    prefill_present: np.ndarray  # every present tensor, flattened and concatenated
    step_logits: np.ndarray  # [steps, V], teacher-forced by the reference's own greedy tokens
    tokens: list[int]  # greedy: prefill argmax then one per step


def _reference_pass(m: rt.Manifest, model: Any, cfg: HuluConfig, steps: int, seed: int) -> tuple[list, dict]:
    """Everything the reference computes, so it can be freed before the bundle's sessions load (a 7B slice)."""
    from huluexport.reference.model import VisualInput

    vision = []
    for i, case in enumerate(CASES):
        patches = case_patches(case, m.dims.patch_dim, seed + i)
        vis = VisualInput(patches, case.grid, case.merge, case.modal)
        with torch.no_grad():
            want = model.encode(vis).numpy()  # (T, G, H)
        keep = model.keep_mask(vis).reshape(-1)  # host-side token reduction (the runtime's job too)
        vision.append((case, vis, patches, want, keep))

    rng = np.random.default_rng(seed)
    t = cfg.tokens
    specials = {t.image, t.endoftext, t.im_start, t.im_end, *t.eos}
    text_ids = np.array([i for i in range(min(cfg.decoder.vocab, t.image)) if i not in specials])

    def text(n: int) -> list[int]:
        return [int(x) for x in rng.choice(text_ids, size=n)]

    visuals = [v[1] for v in vision]
    image_ids = [t.image] * sum(v.frames * v.tokens_per_frame for v in visuals)
    prompts = {
        "multimodal": ([t.im_start, *text(5), *image_ids, *text(4)], visuals),
        "text-only": ([t.im_start, *text(6)], []),
    }
    out = {}
    with torch.no_grad():
        for pname, (ids, vis_list) in prompts.items():
            prep = model.prepare_inputs(ids, vis_list)
            logits, past = model.decoder(prep.inputs_embeds, prep.position_ids)
            present = np.concatenate([p.numpy().ravel() for kv in past for p in kv])
            tokens = [int(logits[0, -1].argmax())]
            prefill = logits[:, -1].numpy()
            step_logits = []
            pos = prep.inputs_embeds.shape[1]
            for _ in range(steps):
                e = model.decoder.embed(torch.tensor([[tokens[-1]]], dtype=torch.int64))
                logits, past = model.decoder(e, torch.tensor([[pos]]), past)
                step_logits.append(logits[:, -1].numpy())
                tokens.append(int(logits[0, -1].argmax()))
                pos += 1
            out[pname] = _RefPrompt(
                prep.input_ids.numpy(),
                prep.inputs_embeds.numpy(),
                bool(vis_list),
                prefill,
                present,
                np.concatenate(step_logits) if step_logits else prefill[:0],
                tokens,
            )
    return vision, out


def verify(
    bundle: str | Path,
    checkpoint: str | Path | None = None,
    steps: int = 16,
    seed: int = 0,
    backend: str = "ort",
    verify_hashes: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Reference pass first (then freed), bundle pass second: peak memory is the larger of the two, not the sum."""
    import gc

    t0 = time.perf_counter()
    m = rt.load_manifest(bundle, verify_hashes=verify_hashes)
    cfg, model = load_reference(m, checkpoint)
    say = progress or (lambda s: log.info("%s", s))
    vision, prompts = _reference_pass(m, model, cfg, steps, seed)
    del model
    gc.collect()
    say("reference done")

    runner = BundleRunner(m)
    prec = m.precision
    # per piece: a quantized bundle's decoder is "int4"/"int8" while the others stay at the bundle's precision
    tol = {p: get(p, m.pieces[p].precision, backend) for p in ("vision", "embed", "decoder", "decoder_gqa")
           if p in m.pieces}
    need = max(r.inputs_embeds.shape[1] for r in prompts.values()) + steps
    gqa = _gqa_decoder(m, need) if "decoder_gqa" in m.pieces else None
    rows: list[Row] = []
    bundle_rows, ref_rows = [], []
    for case, _vis, patches, want, keep in vision:  # compared before any compaction
        got = runner.vision(patches, case)
        rows.append(compare("vision", case.name, "visual_embeds", got, want, tol["vision"]))
        bundle_rows.append(got.reshape(-1, got.shape[-1])[keep])
        ref_rows.append(want.reshape(-1, want.shape[-1])[keep])
        say(case.name)

    none = np.zeros((0, m.dims.hidden), np.float32)
    tokens_ref: dict[str, list[int]] = {}
    tokens_bundle: dict[str, list[int]] = {}
    for pname, ref in prompts.items():
        # embed alone: fed the reference's visual rows, so only the gather/scatter is compared
        emb = runner.embed(ref.input_ids, np.concatenate(ref_rows) if ref.has_visual else none)
        rows.append(compare("embed", pname, "inputs_embeds", emb, ref.inputs_embeds, tol["embed"]))
        # end to end: the bundle's own visual rows feed its embed and decoder
        emb = runner.embed(ref.input_ids, np.concatenate(bundle_rows) if ref.has_visual else none)
        if gqa is not None:  # the gqa-static form (decoder_gqa.onnx) on the same embeddings, same steps
            got_rows, got_tok = _gqa_pass(gqa, emb, ref.tokens[:steps])
            rows.append(compare("decoder_gqa", f"{pname} prefill", "logits", got_rows[:1], ref.prefill_logits,
                                tol["decoder_gqa"], logits=True))
            if steps:
                rows.append(compare("decoder_gqa", f"{pname} decode x{steps}", "logits", got_rows[1:],
                                    ref.step_logits, tol["decoder_gqa"], logits=True))
            tokens_ref[f"{pname} gqa-static"], tokens_bundle[f"{pname} gqa-static"] = ref.tokens, got_tok
        if "decoder" not in m.pieces:
            say(pname)
            continue
        logits, past = runner.decoder(emb, 0, runner.empty_past())
        rows.append(
            compare(
                "decoder",
                f"{pname} prefill",
                "logits",
                logits,
                ref.prefill_logits,
                tol["decoder"],
                logits=True,
            )
        )
        rows.append(
            compare(
                "decoder",
                f"{pname} prefill",
                "present.*",
                np.concatenate([p.ravel() for p in past]),
                ref.prefill_present,
                tol["decoder"],
            )
        )
        # decode teacher-forced with the reference's greedy tokens: bundle argmax == reference token at every
        # step <=> the bundle's own greedy run produces the same tokens
        got_tok = [int(logits[0].argmax())]
        step_got = []
        pos = ref.inputs_embeds.shape[1]
        for tok in ref.tokens[:steps]:
            e = runner.embed(np.array([[tok]], np.int64), none)
            logits, past = runner.decoder(e, pos, past)
            step_got.append(logits)
            got_tok.append(int(logits[0].argmax()))
            pos += 1
        if steps:
            rows.append(
                compare(
                    "decoder",
                    f"{pname} decode x{steps}",
                    "logits",
                    np.concatenate(step_got),
                    ref.step_logits,
                    tol["decoder"],
                    logits=True,
                )
            )
        tokens_ref[pname], tokens_bundle[pname] = ref.tokens, got_tok
        say(pname)
    seen = {k: tuple(sorted(v)) for k, v in runner.seen.items()}
    return Report(Path(bundle), prec, tuple(rows), tokens_ref, tokens_bundle, time.perf_counter() - t0, seen)
