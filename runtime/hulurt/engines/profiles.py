"""Optimization-profile shapes of one piece, and which profile a set of feeds falls in (stdlib only).

`profile_shapes(spec, ranges)` turns the manifest's dim ranges (hulurt.contract.dim_ranges, the build target's
limits) into min/opt/max shapes per input; derived dims follow their operands (n_patches = n_groups*merge_group,
total_len = past_len + seq_len) so every profile point is a consistent feed. `narrow(ranges, ...)` caps the
ranges for a smaller device; `select_profile(profiles, shapes)` is what the native backend runs per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hulurt.contract import DERIVED_DIMS, DimRange, PieceSpec
from hulurt.errors import ContractError

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


def profile_shapes(spec: PieceSpec, ranges: Mapping[str, DimRange]) -> Profile:
    """input name -> (min, opt, max) shapes for `spec` under `ranges`; ContractError naming a dim without range."""
    out: Profile = {}
    points = []
    for which in ("min", "opt", "max"):
        pick = {name: getattr(r, which) for name, r in ranges.items()}
        for d, (kind, (a, b)) in DERIVED_DIMS.items():
            if a in pick and b in pick:
                pick[d] = pick[a] * pick[b] if kind == "mul" else pick[a] + pick[b]
        points.append(pick)
    for ts in spec.inputs:
        triple = []
        for pick in points:
            shape = []
            for dim in ts.shape:
                if isinstance(dim, int):
                    shape.append(dim)
                elif dim not in pick:
                    raise ContractError(f"{spec.name}: no range for dim {dim!r} of input {ts.name!r} in the manifest")
                else:
                    shape.append(pick[dim])
            triple.append(tuple(shape))
        out[ts.name] = (triple[0], triple[1], triple[2])
    return out


def narrow(
    ranges: Mapping[str, DimRange],
    *,
    max_context: int | None = None,
    max_frames: int | None = None,
    max_groups: int | None = None,
) -> dict[str, DimRange]:
    """The manifest's ranges capped for a smaller device (never widened: the bundle's limits are the contract).
    Caps: context -> seq_len, total_len, n_visual, past_len (= context - 1); frames -> n_frames; groups ->
    n_groups and n_patches (4 patches per merged token at most)."""
    caps: dict[str, int] = {}
    if max_context is not None:
        if max_context < 2:
            raise ContractError(f"max_context must be >= 2 (one prompt token + one generated); got {max_context}")
        caps.update(seq_len=max_context, total_len=max_context, n_visual=max_context, past_len=max_context - 1)
    if max_frames is not None:
        caps["n_frames"] = max_frames
    if max_groups is not None:
        caps.update(n_groups=max_groups, n_patches=4 * max_groups)
    out = {}
    for name, r in ranges.items():
        if name in caps and caps[name] < r.max:
            hi = max(caps[name], r.min)
            out[name] = DimRange(r.min, min(max(r.opt, r.min), hi), hi)
        else:
            out[name] = r
    return out


def max_shapes(profile: Profile) -> dict[str, Shape]:
    """The largest shape of each input: what a backend allocates once."""
    return {name: triple[2] for name, triple in profile.items()}


def contains(triple: tuple[Shape, Shape, Shape], shape: Sequence[int]) -> bool:
    lo, _opt, hi = triple
    return len(shape) == len(lo) and all(a <= int(s) <= b for a, s, b in zip(lo, shape, hi))


def select_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]], where: str = "engine") -> int:
    """Index of the first profile whose min..max holds every fed shape; ContractError naming the first input
    and dim that no profile admits (the engine cannot run it: rebuild for a larger target)."""
    for k, prof in enumerate(profiles):
        if all(name in prof and contains(prof[name], shape) for name, shape in shapes.items()):
            return k
    for name, shape in shapes.items():
        for prof in profiles:
            if name not in prof:
                raise ContractError(f"{where}: input {name!r} is not an input of this engine; it has {sorted(prof)}")
            lo, _opt, hi = prof[name]
            if len(shape) != len(lo):
                raise ContractError(f"{where}: input {name!r} has rank {len(shape)}; the engine expects {len(lo)}")
            for i, (a, s, b) in enumerate(zip(lo, shape, hi)):
                if not a <= int(s) <= b:
                    raise ContractError(
                        f"{where}: input {name!r} dim {i} = {s} is outside the engine's profile [{a}, {b}]; "
                        "rebuild the engines for a larger target (python -m hulurt.engines BUNDLE --max-context ...)"
                    )
    raise ContractError(f"{where}: no optimization profile holds these input shapes together")
