"""`huluexport build`: checkpoint (or random weights) -> bundle directory, as an ordered list of phases
(huluexport/progress.py: each shown while it runs, timed in wall and CPU time, logged at INFO).

Every size takes the large-model path: the model is built on the meta device, each piece is traced without
weights, and weights are attached lazily, one tensor at a time, while the graph is saved (external data).
The bundle is written into a hidden sibling directory and moved into place only when complete
(huluexport/export/staging.py: the --out and --overwrite rules, clean-up of interrupted runs).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
from hulurt import manifest as rt
from hulurt.contract import DECODER_FORMS
from hulurt.contract import pieces as contract_pieces

from huluexport import progress
from huluexport.checkpoint import (
    EMBED,
    LM_HEAD,
    from_checkpoint,
    inside,
    parameter_shapes,
    plan,
    root_of,
    side_file,
)
from huluexport.checkpoint.hub import file_hashes, locate, read_files
from huluexport.checkpoint.random_weights import random_tensor
from huluexport.config import (
    DecoderConfig,
    HuluConfig,
    PreprocessConfig,
    ProjectorConfig,
    ReductionConfig,
    TokenConfig,
    VisionConfig,
    preset,
    slice_layers,
    to_dims,
)
from huluexport.devices import get_target
from huluexport.errors import ConfigError
from huluexport.export import onnx as onnx_export
from huluexport.export import pieces as P
from huluexport.export.hashing import Background, copy_hashed, save_hashed
from huluexport.export.manifest import build_manifest, write_manifest
from huluexport.export.passes import (
    attach_weights,
    drop_unused_outputs,
    fold_constants,
    fold_weight_casts,
    fold_weight_concats,
    fold_weight_transposes,
    name_dims,
    replicate_layers,
    strip_build_paths,
)
from huluexport.export.staging import check_out, staged

log = logging.getLogger(__name__)

# source(reference name, dtype=None) -> tensor (see weight_source)
WeightSource = Callable[..., torch.Tensor]

PIECES = ("vision", "embed", "decoder")
INLINE_BYTES = (
    1024  # tensors up to this size stay inside the .onnx (shape constants must: ORT infers with them)
)
# ir.save: two loader threads read + cast the next tensors while others are written; at most this many bytes
# of loaded tensors at once (one tensor larger than that is let through alone: the 7B's 1.1 GB embedding).
# Measured in benchmarks/results/build_7b.md ("save phase").
SAVE_WORKERS = 2
SAVE_IN_FLIGHT_BYTES = 512 << 20
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "generation_config.json",
    "preprocessor_config.json",
)
# Fields a checkpoint must share with the preset named by --size (layers are checked unless --layers slices).
_SIZE_FIELDS = {
    "decoder": ("hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "qkv_bias", "qk_norm"),
    "vision": ("hidden", "intermediate", "heads", "patch"),
}


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    checkpoint: str | Path | None = None  # a folder, or a Hugging Face Hub repo id (org/name)
    revision: str | None = None  # Hub revision (branch, tag or commit) of a repo id
    cache_dir: Path | None = None  # Hugging Face cache (default: huggingface_hub's, HF_HUB_CACHE)
    offline: bool | None = None  # None: HF_HUB_OFFLINE decides
    size: str | None = None  # preset; with a checkpoint it must match, with random weights it is required
    random_weights: bool = False
    seed: int = 0
    layers: int | None = None  # shallow slice: the first N decoder and vision layers
    vision_layers: int | None = None  # vision depth on its own (default: as --layers, capped at the tower's)
    precision: str = "fp32"
    target: str = "generic"
    overwrite: bool = False
    dump_dir: Path | None = None  # graphs (no weights) after every pass
    # decoder forms to export (hulurt.contract.DECODER_FORMS): "v1-concat" (decoder.onnx, every backend) and/or
    # "gqa-static" (decoder_gqa.onnx: in-place KV buffers, CUDA-graph friendly; onnxruntime CPU/CUDA only)
    decoder_forms: tuple[str, ...] = ("v1-concat",)
    # trace every layer (slow, the old path: parity tests and debugging); default: trace 3 layers, fold them and
    # clone layer 1 for the rest (passes/replicate_layers.py)
    trace_all_layers: bool = False


@dataclass(frozen=True)
class WeightSpec:
    """Where a bundle's weights came from (recorded in the manifest so `verify` can rebuild the reference)."""

    kind: str  # "checkpoint" | "random"
    checkpoint: str | None = None  # the local directory read by this process (never written to the manifest)
    seed: int = 0
    layers: int | None = None
    vision_layers: int | None = None  # None: min(layers, the tower's) as slice_layers does
    source: dict[str, str] | None = None  # {"repo_id", "revision"} or {"folder": name}
    files: dict[str, str] | None = None  # checkpoint file -> sha256

    def record(self) -> dict[str, Any]:
        """The manifest's `model.weights`: where the weights came from, with no path of this machine."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "seed": self.seed,
            "layers": self.layers,
            "vision_layers": self.vision_layers,
        }
        if self.kind == "checkpoint":
            out.update(source=self.source, files=self.files)
        return out


# --------------------------------------------------------------------------------------------------
# Config and weight sources
# --------------------------------------------------------------------------------------------------


def check_size(cfg: HuluConfig, size: str, where: Path, sliced: bool) -> None:
    """Reject a checkpoint whose architecture differs from the preset `size` (before any export work)."""
    want = preset(size)
    diffs = []
    for part, names in _SIZE_FIELDS.items():
        for n in names + (() if sliced else ("layers",)):
            a, b = getattr(getattr(cfg, part), n), getattr(getattr(want, part), n)
            if a != b:
                diffs.append(f"{part}.{n} = {a} (--size {size} has {b})")
    if diffs:
        raise ConfigError(
            f"{where / 'config.json'}: checkpoint does not match --size {size}: "
            + "; ".join(diffs)
            + ". Drop --size to export the checkpoint as it is, or pass the right size."
        )


def resolve(opts: BuildOptions, hash_files: bool = True) -> tuple[HuluConfig, WeightSpec]:
    """The config and the weight spec of a build; `hash_files=False` leaves the checkpoint's file hashes to the
    caller (`build` computes them in the background, see `_checkpoint_hashes`)."""
    bad = [f for f in opts.decoder_forms if f not in DECODER_FORMS]
    if bad or not opts.decoder_forms:
        raise ConfigError(
            f"--decoder-form {','.join(opts.decoder_forms) or '(none)'}: expected one or more of "
            f"{', '.join(DECODER_FORMS)}"
        )
    if opts.precision not in rt.PRECISIONS:
        raise ConfigError(f"--precision {opts.precision!r}: expected one of {', '.join(rt.PRECISIONS)}")
    if opts.checkpoint is not None and opts.random_weights:
        raise ConfigError("--checkpoint and --random-weights exclude each other")
    if opts.checkpoint is not None:
        with progress.phase("resolve checkpoint"):
            found = locate(opts.checkpoint, revision=opts.revision, cache_dir=opts.cache_dir, offline=opts.offline)
            full = from_checkpoint(found.path)  # config.json checked before anything else is read
            if opts.size is not None:
                check_size(full, opts.size, found.path, sliced=opts.layers is not None)
        hashes = None
        if hash_files:
            with progress.phase("hash checkpoint", unit="B"):
                hashes = file_hashes(found.path)
        return full, WeightSpec(
            "checkpoint", str(found.path), 0, opts.layers, opts.vision_layers, found.source, hashes
        )
    if opts.revision is not None:
        raise ConfigError("--revision applies to --checkpoint ORG/NAME (a Hub repo id)")
    if not opts.random_weights:
        raise ConfigError("give --checkpoint DIR, or --size SIZE --random-weights")
    if opts.size is None:
        raise ConfigError("--random-weights needs --size (e.g. --size 7b)")
    return preset(opts.size), WeightSpec("random", None, opts.seed, opts.layers, opts.vision_layers)


def weight_source(full_cfg: HuluConfig, spec: WeightSpec) -> WeightSource:
    """reference name -> tensor, read one at a time. Names/shapes checked up front (plan).

    `source(ref, dtype)` returns the tensor in `dtype` (default: as stored) in memory of its own: for
    safetensors the one copy is that cast, straight from the shard's mapping (huluexport/checkpoint/shards.py,
    each shard mapped once); safe to call from several threads (ir.save's loader workers)."""
    from huluexport.checkpoint.shards import ShardReader
    from huluexport.reference.weights import load_bin

    if spec.kind == "random":
        shapes = parameter_shapes(full_cfg)

        def generate(ref: str, dtype: torch.dtype | None = None) -> torch.Tensor:
            t = random_tensor(ref, shapes[ref], spec.seed)
            return t if dtype is None else t.to(dtype)

        return generate
    assert spec.checkpoint is not None
    p = plan(spec.checkpoint, full_cfg)
    shards = ShardReader()
    bins: dict[Path, dict[str, torch.Tensor]] = {}  # .bin files load memory-mapped, once
    bins_lock = threading.Lock()

    def read(ref: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if ref == LM_HEAD and p.tie_lm_head:
            ref = EMBED
        e = p.entries[ref]
        if e.file.suffix == ".safetensors":
            return shards.read(e.file, e.stored, dtype)
        with bins_lock:
            if e.file not in bins:
                bins[e.file] = load_bin(e.file)
        t = bins[e.file][e.stored]
        return t if dtype is None else t.to(dtype)

    return read


def reference_model(cfg: HuluConfig, source: WeightSource, dtype=torch.float32):
    """The reference HuluMed (CPU, `dtype`) filled from `source`: what `verify` compares against."""
    from huluexport.reference.model import HuluMed

    with torch.device("meta"):
        model = HuluMed(cfg)
    for ref in model.state_dict(keep_vars=True):
        mod_path, _, attr = ref.rpartition(".")
        setattr(
            model.get_submodule(mod_path),
            attr,
            torch.nn.Parameter(source(ref, dtype).contiguous(), requires_grad=False),
        )
    return model.eval()


def config_from_dict(d: Any, where: Path | str = "manifest.json") -> HuluConfig:
    """Inverse of dataclasses.asdict(HuluConfig) (the manifest's `model` section). ManifestError naming the
    field when a section or key is missing, unknown or of the wrong kind (`verify` rebuilds the reference from it)."""
    from hulurt.errors import ManifestError

    def section(key: str) -> dict[str, Any]:
        v = d.get(key)
        if not isinstance(v, dict):
            raise ManifestError(f"{where}: field 'model.{key}': expected an object, found {type(v).__name__}; "
                                "`verify` rebuilds the reference from it. Rebuild the bundle")
        return v

    if not isinstance(d, dict):
        raise ManifestError(f"{where}: field 'model': expected an object, found {type(d).__name__}")
    try:
        tok = dict(section("tokens"))
        tok["eos"] = tuple(tok["eos"])
        pre = dict(section("preprocess"))
        pre["image_mean"], pre["image_std"] = tuple(pre["image_mean"]), tuple(pre["image_std"])
        return HuluConfig(
            name=d["name"],
            vision=VisionConfig(**section("vision")),
            decoder=DecoderConfig(**section("decoder")),
            tokens=TokenConfig(**tok),
            projector=ProjectorConfig(**section("projector")),
            reduction=ReductionConfig(**section("reduction")),
            preprocess=PreprocessConfig(**pre),
            torch_dtype=d.get("torch_dtype", "bfloat16"),
        )
    except KeyError as exc:
        raise ManifestError(f"{where}: field 'model': missing key {exc}; rebuild the bundle") from None
    except (TypeError, ValueError, ConfigError) as exc:
        raise ManifestError(f"{where}: field 'model': {str(exc).splitlines()[0][:200]}; rebuild the bundle") from None


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


def _dump(model: ir.Model, dump_dir: Path | None, name: str) -> None:
    if dump_dir is None:
        return
    dump_dir.mkdir(parents=True, exist_ok=True)
    inits = dict(model.graph.initializers)
    model.graph.initializers.clear()  # graph structure only: weights may not be materialisable here
    try:
        ir.save(model, dump_dir / f"{name}.onnx")
    finally:
        for v in inits.values():
            model.graph.initializers.add(v)  # detached weights (no data) too


def piece_graph(
    name: str,
    module: torch.nn.Module,
    cfg: HuluConfig,
    precision: str,
    source: Callable[[str], torch.Tensor],
    dump_dir: Path | None = None,
    trace_cfg: HuluConfig | None = None,
) -> ir.Model:
    """Trace `module` (built from `trace_cfg`, default `cfg`) and run the passes; weights attached lazily.
    When `trace_cfg` is replicate_layers.shallow(cfg), a layered piece is folded shallow, then deepened to `cfg`."""
    act = rt.ACT_DTYPE[precision]
    spec = contract_pieces(to_dims(cfg, act))[name]
    trace_cfg = trace_cfg or cfg
    trace_spec = contract_pieces(to_dims(trace_cfg, act))[name]
    translations = None
    if name == "decoder_gqa":
        from huluexport.export.gqa import TRANSLATIONS as translations
    with progress.phase(f"{name}: trace"):
        model = onnx_export.export_graph(
            module, trace_spec, image_token_id=cfg.tokens.image, translations=translations
        )
    _dump(model, dump_dir, f"{name}.0-exported")
    attach = ("attach_weights", lambda m: attach_weights.run(m, source, lambda n: P.reference_name(name, n)))
    depth, traced = replicate_layers.depths(name, cfg, trace_cfg)
    phases: list[tuple[str, Callable[[ir.Model], ir.Model]]]
    if depth == traced:
        phases = [
            ("name_dims", lambda m: name_dims.run(m, spec)),
            attach,
            ("fold_weight_concats", fold_weight_concats.run),
            ("fold_weight_transposes", fold_weight_transposes.run),
            ("fold_weight_casts", fold_weight_casts.run),
            ("fold_constants", fold_constants.run),
            ("name_dims (after folding)", lambda m: name_dims.run(m, spec)),
        ]
    else:  # fold the shallow graph with its weights detached, then clone layer 1 up to the full depth
        phases = [
            ("detach_weights", replicate_layers.detach),
            ("name_dims", lambda m: name_dims.run(m, trace_spec)),
            ("fold_constants", replicate_layers.folding(fold_constants.run)),
            ("name_dims (after folding)", lambda m: name_dims.run(m, trace_spec)),
            ("replicate_layers", lambda m: replicate_layers.run(m, name, spec, depth)),
            ("name_dims (after replicating)", lambda m: name_dims.run(m, spec)),
            attach,
            ("fold_weight_concats", fold_weight_concats.run),
            ("fold_weight_transposes", fold_weight_transposes.run),
            ("fold_weight_casts", fold_weight_casts.run),
        ]
    for i, (phase, fn) in enumerate(phases, start=1):
        with progress.phase(f"{name}: {phase}"):
            model = fn(model)
        _dump(model, dump_dir, f"{name}.{i}-{phase}")
    drop_unused_outputs.run(model)
    strip_build_paths.run(model)  # no source path of this machine in a shipped graph
    model.producer_name = "huluexport"
    model.doc_string = f"huluexport {name} piece ({precision})"
    return model


def external_bytes(model: ir.Model) -> int:
    """Bytes of the initializers ir.save writes to the external data file (those over INLINE_BYTES)."""
    sizes = (v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    return sum(n for n in sizes if n > INLINE_BYTES)


def export_piece(
    name: str,
    module: torch.nn.Module,
    cfg: HuluConfig,
    precision: str,
    source: Callable[[str], torch.Tensor],
    out_dir: Path,
    dump_dir: Path | None = None,
    trace_cfg: HuluConfig | None = None,
    files: dict[str, rt.FileEntry] | None = None,
) -> rt.PieceEntry:
    """Trace and rewrite the piece (piece_graph), then save it with its weights into `out_dir`; `files` (if
    given) receives the sha256 and size of each file written (hashed while written: huluexport/export/hashing.py)."""
    model = piece_graph(name, module, cfg, precision, source, dump_dir, trace_cfg)
    spec = contract_pieces(to_dims(cfg, rt.ACT_DTYPE[precision]))[name]
    path = out_dir / spec.file
    data = f"{spec.file}.data"
    with progress.phase(f"{name}: save", total=external_bytes(model), unit="B") as step:

        def saved(tensor: ir.TensorProtocol, info: Any) -> None:  # per external tensor, possibly from workers
            step.note(str(tensor.name))
            step.advance(tensor.nbytes)

        written = save_hashed(
            model,
            path,
            data,
            size_threshold_bytes=INLINE_BYTES,
            callback=saved,
            max_workers=SAVE_WORKERS,
            max_in_flight_bytes=SAVE_IN_FLIGHT_BYTES,
        )
    if files is not None:
        files.update(written)
    return rt.PieceEntry(
        file=spec.file,
        data=data if (out_dir / data).exists() else None,
        precision=precision,
        opset=onnx_export.OPSET,
        compute=dict(P.COMPUTE[precision]),
    )


def build(opts: BuildOptions) -> Path:
    """Run every phase; return the bundle directory. Nothing is written at `opts.out` until the end.

    Every file is read and hashed once: the checkpoint's files on a background thread while the pieces are
    traced (which also brings them into the page cache for the save), each bundle file while it is written
    (huluexport/export/hashing.py), the side files while they are copied (their hash serves the checkpoint's
    record and the bundle's file list)."""
    t_start = time.perf_counter()
    inputs = [opts.checkpoint] if opts.checkpoint is not None and Path(opts.checkpoint).is_dir() else []
    check_out(opts.out, inputs, overwrite=opts.overwrite)  # the --out rules, before any work
    full_cfg, wspec = resolve(opts, hash_files=False)
    if wspec.checkpoint is not None and not inputs:  # a Hub repo id: its cache snapshot is the input
        inputs = [wspec.checkpoint]
        check_out(opts.out, inputs, overwrite=opts.overwrite)
    target = get_target(opts.target)
    with progress.phase("plan weights"):
        source = weight_source(full_cfg, wspec)  # checks every name and shape before any export work
    cfg = slice_layers(full_cfg, opts.layers, opts.vision_layers)
    log.info(
        "build: %s (%s, %d decoder layers), %s weights, %s, target %s",
        cfg.name,
        cfg.decoder.flavor,
        cfg.decoder.layers,
        wspec.kind,
        opts.precision,
        target.name,
    )
    out = Path(opts.out)
    background = Background()
    try:
        weights_hashed: dict[str, Future] = {}
        copied: list[str] = []
        if wspec.checkpoint is not None:  # hashed from now on: the trace below runs on the other core
            ckpt_root = root_of(wspec.checkpoint)
            ckpt_names = read_files(ckpt_root)
            copied = [n for n in SIDE_FILES if n in ckpt_names]
            weights_hashed = {n: background.file(inside(ckpt_root, n)) for n in ckpt_names if n not in copied}
        with staged(out, inputs, overwrite=opts.overwrite) as tmp:
            from huluexport.reference.model import HuluMed

            trace_cfg = cfg if opts.trace_all_layers else replicate_layers.shallow(cfg)
            with progress.phase("model on the meta device"):
                with torch.device("meta"):
                    model = HuluMed(trace_cfg)
                max_context = target.ranges(cfg.decoder.max_position)["total_len"].max
                pieces = P.make_pieces(model, opts.decoder_forms, max_context)
            entries = {}
            files: dict[str, rt.FileEntry] = {}
            for name, module in pieces.items():
                module = P.to_precision(module, opts.precision, copy_first=False)
                entries[name] = export_piece(
                    name, module, cfg, opts.precision, source, tmp, opts.dump_dir, trace_cfg=trace_cfg, files=files
                )
            del model
            # the bundle's files were hashed as they were written; this waits for the checkpoint's, if need be
            with progress.phase("manifest", unit="B") as step:
                side = _copy_side_files(wspec, tmp, copied)
                files.update(side)
                tok = _tokenizer_files(tmp)
                ckpt_hashes = {n: f.result().sha256 for n, f in weights_hashed.items()}
                if wspec.kind == "checkpoint":
                    ckpt_hashes.update({n: side[n].sha256 for n in copied})
                    wspec = dataclasses.replace(wspec, files=dict(sorted(ckpt_hashes.items())))
                step.advance(sum(e.bytes for e in side.values()))
                manifest = build_manifest(
                    root=tmp, cfg=cfg, precision=opts.precision, target=target, pieces=entries, tokenizer=tok,
                    files=files,
                )
                manifest["model"]["weights"] = wspec.record()
                write_manifest(tmp, manifest)
    finally:
        background.close()
    log.info("build: %s done in %.1f s", out, time.perf_counter() - t_start)
    return out


def _copy_side_files(wspec: WeightSpec, dst: Path, names: list[str]) -> dict[str, rt.FileEntry]:
    """Copy the checkpoint's side files `names` into the bundle, hashing each while it is copied."""
    if wspec.kind != "checkpoint" or wspec.checkpoint is None:
        return {}
    src = root_of(wspec.checkpoint)
    out = {}
    for name in names:
        path = side_file(src, name)  # refuses a side file that resolves outside the checkpoint
        if path is not None:
            out[name] = copy_hashed(path, dst / name)
    return out


def _tokenizer_files(dst: Path) -> rt.TokenizerFiles:
    def have(n: str) -> str | None:
        return n if (dst / n).is_file() else None

    return rt.TokenizerFiles(
        have("tokenizer.json"), have("chat_template.json"), have("generation_config.json")
    )
