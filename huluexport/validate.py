"""`huluexport verify`: run a bundle through the runtime (hulurt's backend and the pieces of its generation
loop, every call checked against the contract) next to the PyTorch reference, and compare every output, one
row each, against huluexport/tolerances.py. Raises nothing past a tolerance; returns a Report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hulurt import manifest as rt
from hulurt.api import facts_of
from hulurt.backends import open_session
from hulurt.backends.base import BackendError, BackendOptions
from hulurt.backends.checked import CheckedSession
from hulurt.generate import Generator, VisualFeed
from hulurt.reduction import kept_rows

from huluexport.config import HuluConfig
from huluexport.errors import ManifestError
from huluexport.export.bundle_reference import reference_for_bundle
from huluexport.progress import phase  # (not the module: verify() has a `progress` argument)
from huluexport.reference.ranges import FP16_MAX, HEADROOM_WARN, Peak, RangeRecorder
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
    # the fp32 reference's largest |activation| per piece where an fp16 graph stores one (reference/ranges.py)
    ranges: dict[str, Peak] = field(default_factory=dict)

    @property
    def overflows(self) -> list[Peak]:
        """Peaks past the fp16 maximum in an fp16 bundle's pieces: values its graphs cannot hold."""
        return [p for p in self.ranges.values() if self.precision == "fp16" and p.overflows_fp16]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and not self.overflows

    def range_lines(self) -> list[str]:
        lines = []
        for p in self.ranges.values():
            state = (f"{p.headroom:.3g}x below" if not p.overflows_fp16 else "PAST") + f" the fp16 maximum {FP16_MAX:g}"
            line = f"fp16 range {p.piece}: largest |activation| {p.value:.4g} at {p.where}, {state}"
            if p.overflows_fp16:
                line += (" (this bundle's fp16 graphs hold it in fp16 and overflow there on a GPU provider; "
                         "onnxruntime's CPU provider widens fp16 matmuls to fp32, so the rows above may not show it: "
                         "build --precision fp32)" if self.precision == "fp16" else
                         " (an fp16 build of this checkpoint would overflow there)")
            elif p.headroom < HEADROOM_WARN:
                line += f" (warning: under {HEADROOM_WARN:g}x; a real prompt may go further than verify's)"
            lines.append(line)
        return lines

    def table(self) -> str:
        head = (f"{'piece':8} {'case':22} {'output':16} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'top1':>7}"
                "  result")
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
        lines += self.range_lines()
        past = "".join(f"; {p.piece} past the fp16 range" for p in self.overflows)
        lines.append(
            f"{'PASS' if self.ok else 'FAIL'}: {sum(r.ok for r in self.rows)}/{len(self.rows)} rows "
            f"within tolerance{past} ({self.seconds:.1f} s)"
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
    """The bundle's three pieces opened by hulurt's backend factory (onnxruntime CPU), each call checked
    against the contract, driven by the runtime's own Generator (vision, embed, decoder steps, KV cache)."""

    def __init__(self, m: rt.Manifest, threads: int = 2) -> None:
        opts = BackendOptions(provider="cpu", threads=threads)
        specs = m.specs()
        self.sessions: dict[str, CheckedSession] = {}
        for name in ("vision", "embed", "decoder"):
            # a bundle with only the gqa-static form: its decoder_gqa serves the Generator (verify drives that
            # form through hulurt.static_decode, _gqa_pass)
            piece = name if name in m.pieces or name != "decoder" else "decoder_gqa"
            try:
                inner = open_session(m.piece_path(piece), opts)
            except BackendError as exc:
                raise ManifestError(str(exc)) from None
            self.sessions[name] = CheckedSession(inner, specs[piece], m.dim_ranges)
        self.gen = Generator(self.sessions, facts_of(m))  # type: ignore[arg-type]  # CheckedSession is a Session

    @property
    def seen(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for sess in self.sessions.values():
            for k, v in sess.seen.items():
                out.setdefault(k, set()).update(v)
        return out

    def vision(self, patches: np.ndarray, case: VisionCase) -> np.ndarray:
        g = case.merge * case.merge
        grouped = patches.reshape(patches.shape[0], -1, g, patches.shape[-1])  # (T, n, 588) -> (T, G, g, 588)
        return self.gen.vision(VisualFeed(grouped, case.grid, case.merge))

    def embed(self, ids: np.ndarray, visual: np.ndarray) -> np.ndarray:
        return self.gen.embed(ids.reshape(-1).astype(np.int64), visual)


def _gqa_decoder(m: rt.Manifest, capacity: int) -> Any:
    """hulurt's StaticDecoder over the bundle's decoder_gqa + embed graphs on onnxruntime CPU (docs/gpu.md)."""
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
    with phase("reference: vision", total=len(CASES), unit="cases") as ph:
        for i, case in enumerate(CASES):
            ph.note(case.name)
            patches = case_patches(case, m.dims.patch_dim, seed + i)
            vis = VisualInput(patches, case.grid, case.merge, case.modal)
            with torch.no_grad():
                want = model.encode(vis).numpy()  # (T, G, H)
            keep = model.keep_mask(vis)  # host-side token reduction (the runtime's job too)
            vision.append((case, vis, patches, want, keep))
            ph.advance()

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
    with torch.no_grad(), phase("reference: prefill + decode", total=len(prompts), unit="prompts") as ph:
        for pname, (ids, vis_list) in prompts.items():
            ph.note(pname)
            prep = model.prepare_inputs(ids, vis_list)
            run = model.steps(prep)  # greedy: each step fed the previous argmax
            first = next(run)
            present = np.concatenate([p.numpy().ravel() for kv in first.past for p in kv])
            prefill = first.logits[None].numpy()  # [1, V]
            tokens = [first.token]
            step_logits = []
            for _ in range(steps):
                step = next(run)
                step_logits.append(step.logits[None].numpy())
                tokens.append(step.token)
            out[pname] = _RefPrompt(
                prep.input_ids.numpy(),
                prep.inputs_embeds.numpy(),
                bool(vis_list),
                prefill,
                present,
                np.concatenate(step_logits) if step_logits else prefill[:0],
                tokens,
            )
            ph.advance()
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
    from huluexport.export.graph_io import check_graphs

    with phase("check the bundle" + (" (sha256)" if verify_hashes else "")):
        m = rt.load_manifest(bundle, verify_hashes=verify_hashes)
        check_graphs(m)  # the manifest's dims are the graphs' own, before the reference is sized from them
    with phase("reference model (PyTorch, fp32)"):
        cfg, model = reference_for_bundle(m, checkpoint)
    say = progress or (lambda s: log.info("%s", s))
    with RangeRecorder(model) as ranges:
        vision, prompts = _reference_pass(m, model, cfg, steps, seed)
    del model
    gc.collect()
    say("reference done")

    with phase("open the bundle (onnxruntime)"):
        runner = BundleRunner(m)
    prec = m.precision
    # per piece: a quantized bundle's decoder is "int4"/"int8" while the others stay at the bundle's precision
    # a QDQ int4 decoder (quantize --format qdq) has its own entry: "int4-qdq"
    tol = {
        p: get(p, m.pieces[p].precision + ("-qdq" if m.pieces[p].compute.get("quant_format") == "qdq" else ""),
               backend)
        for p in ("vision", "embed", "decoder", "decoder_gqa")
        if p in m.pieces
    }
    need = max(r.inputs_embeds.shape[1] for r in prompts.values()) + steps
    with phase("open decoder_gqa (onnxruntime)") if "decoder_gqa" in m.pieces else nullcontext():
        gqa = _gqa_decoder(m, need) if "decoder_gqa" in m.pieces else None
    rows: list[Row] = []
    bundle_rows, ref_rows = [], []
    with phase("bundle: vision rows", total=len(vision), unit="cases") as ph:
        for case, _vis, patches, want, keep in vision:  # compared before any compaction
            ph.note(case.name)
            got = runner.vision(patches, case)
            rows.append(compare("vision", case.name, "visual_embeds", got, want, tol["vision"]))
            bundle_rows.append(kept_rows(got, keep))
            ref_rows.append(kept_rows(want, keep))
            say(case.name)
            ph.advance()
    none = np.zeros((0, m.dims.hidden), np.float32)
    tokens_ref: dict[str, list[int]] = {}
    tokens_bundle: dict[str, list[int]] = {}
    with phase("bundle: embed + decoder rows", total=len(prompts), unit="prompts") as ph:
        for pname, ref in prompts.items():
            ph.note(pname)
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
                ph.advance()
                continue
            cache = runner.gen.new_cache(emb.shape[1] + steps)
            logits = runner.gen.decode(emb, 0, cache)
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
                    np.concatenate([np.asarray(p).ravel() for p in cache.feeds().values()]),
                    ref.prefill_present,
                    tol["decoder"],
                )
            )
            # decode teacher-forced with the reference's greedy tokens: bundle argmax == reference token at every
            # step <=> the bundle's own greedy run produces the same tokens
            got_tok = [int(logits[0].argmax())]
            step_got = []
            for tok in ref.tokens[:steps]:
                e = runner.embed(np.array([tok], np.int64), none)
                logits = runner.gen.decode(e, cache.length, cache)
                step_got.append(logits)
                got_tok.append(int(logits[0].argmax()))
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
            ph.advance()
    seen = {k: tuple(sorted(v)) for k, v in runner.seen.items()}
    return Report(Path(bundle), prec, tuple(rows), tokens_ref, tokens_bundle, time.perf_counter() - t0, seen,
                  ranges.peaks(p for p in ("vision", "decoder", "decoder_gqa") if p in m.pieces))
