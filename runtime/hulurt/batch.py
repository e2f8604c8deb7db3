"""`hulurt batch STUDIES --bundle B --prompt TEXT --out results.jsonl`: answer one question per study for every
study under a folder (a DICOM series directory, a NIfTI file, an image, a video, a single DICOM file) or listed
in a CSV (`path,prompt`), one JSON line per study appended as soon as it is answered. A study that fails is
recorded with its error and the batch goes on; re-running skips every (study, prompt) already in the output
(`--retry-errors` redoes the failed ones). Exit 0 when every study of this run succeeded, 1 when some failed,
2 for bad arguments."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hulurt.backends.base import PROVIDERS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    key: str  # the study's name in the output: its path relative to STUDIES (or as the CSV gives it)
    path: Path
    kind: str  # "dicom" (series directory or file) | "nifti" | "image" | "video"
    prompt: str
    series_uid: str | None = None  # read while grouping DICOM files


# ------------------------------------------------------------------------------------------ discovery


def _kind(p: Path) -> str | None:
    from hulurt.media import DICOM_EXTS, IMAGE_EXTS, NIFTI_EXTS, VIDEO_EXTS

    name = p.name.lower()
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return None
    if name.endswith(NIFTI_EXTS):
        return "nifti"
    suffix = p.suffix.lower()
    if suffix in IMAGE_EXTS:
        return "image"
    if suffix in VIDEO_EXTS:
        return "video"
    if suffix in DICOM_EXTS:
        return "dicom"
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    return "dicom" if len(head) == 132 and head[128:132] == b"DICM" else None


def _series_uid(p: Path) -> str | None:
    try:
        import pydicom

        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        uid = getattr(ds, "SeriesInstanceUID", None)
        return str(uid) if uid else None
    except Exception:  # noqa: BLE001 - an unreadable file becomes its own study and fails there, by name
        return None


def discover(root: Path, prompt: str) -> list[Study]:
    """Every study under `root`, in path order. A directory whose DICOM files form one series (>= 2 files, one
    SeriesInstanceUID) is one study; any other DICOM file is a study of its own."""
    if root.is_file():
        kind = _kind(root)
        return [Study(root.name, root, kind or "unknown", prompt)]
    studies: list[Study] = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        here = Path(d)
        dicoms: list[Path] = []
        for name in sorted(files):
            p = here / name
            kind = _kind(p)
            if kind == "dicom":
                dicoms.append(p)
            elif kind is not None:
                studies.append(Study(p.relative_to(root).as_posix(), p, kind, prompt))
        if dicoms:
            uids = [_series_uid(p) for p in dicoms]
            if len(dicoms) >= 2 and None not in uids and len(set(uids)) == 1:
                studies.append(Study(here.relative_to(root).as_posix() or ".", here, "dicom", prompt, uids[0]))
            else:
                studies += [Study(p.relative_to(root).as_posix(), p, "dicom", prompt, u) for p, u in zip(dicoms, uids)]
    return sorted(studies, key=lambda s: s.key)


def read_csv(path: Path, default_prompt: str | None) -> list[Study]:
    """Rows of `path,prompt` (a header row `path,prompt` is allowed; relative paths are from the CSV's folder)."""
    studies: list[Study] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for k, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if k == 1 and row[0].strip().lower() == "path":
                continue
            rel = row[0].strip()
            prompt = row[1].strip() if len(row) > 1 and row[1].strip() else default_prompt
            if not prompt:
                raise ValueError(f"{path}:{k}: no prompt for {rel!r}; add one in the second column or pass --prompt")
            p = Path(rel) if Path(rel).is_absolute() else path.parent / rel
            kind = "dicom" if p.is_dir() else (_kind(p) or "unknown")
            uid = _series_uid(next((x for x in sorted(p.iterdir()) if x.is_file()), p)) if p.is_dir() else None
            studies.append(Study(rel, p, kind, prompt, uid))
    return studies


def done_keys(out: Path, retry_errors: bool) -> set[tuple[str, str]]:
    """(study, prompt) pairs already in the output; a cut last line (a crash mid-write) is ignored."""
    keys: set[tuple[str, str]] = set()
    if not out.is_file():
        return keys
    with open(out, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if retry_errors and rec.get("status") != "ok":
                continue
            keys.add((rec.get("study"), rec.get("prompt")))
    return keys


# ------------------------------------------------------------------------------------------------ work


def answer(model: Any, study: Study, max_new_tokens: int | None, sampling: Any) -> dict[str, Any]:
    """One study through the model: the record's fields other than study/prompt/status."""
    from hulurt.api import feed_of
    from hulurt.errors import UnsupportedInputError
    from hulurt.inputs import build_inputs
    from hulurt.media import load_media

    if study.kind == "unknown":
        raise UnsupportedInputError(study.path, "not a file hulurt can read (image, DICOM, NIfTI or video)")
    if not model.has_vision:
        raise UnsupportedInputError(study.path, "this bundle is text-only (no vision piece)")
    t0 = time.perf_counter()
    opts, ro = model.input_options()
    media = load_media(study.path, **dict(ro.get(study.kind, {})))
    inputs = build_inputs([media], study.prompt, model.tokenizer, model.facts.image_token_id, opts,
                          model.chat_template, reader_options=ro)
    gen = model.run(feed_of(inputs, preprocess_s=time.perf_counter() - t0), max_new_tokens=max_new_tokens,
                    sampling=sampling).result()
    t = gen.timings
    info = media.info
    rec: dict[str, Any] = {
        "answer": gen.text,
        "stop_reason": gen.stop_reason,
        "new_tokens": len(gen.token_ids),
        "timings": {"preprocess_s": t.preprocess_s, "vision_s": t.vision_s, "prefill_s": t.prefill_s,
                    "ttft_s": t.ttft_s, "decode_s": t.decode_s, "decode_tok_s": t.decode_tok_s,
                    "prompt_tokens": t.prompt_tokens},
        "visual_tokens": {"before": t.visual_tokens_before, "after": t.visual_tokens_after},
        "frames": media.n_frames,
    }
    if study.kind == "dicom":
        window = info.get("window")
        rec["dicom"] = {
            "series_uid": info.get("series_uid") or study.series_uid,
            "sorted_by": info.get("sorted_by"),
            "window": list(window) if isinstance(window, tuple) else window,
            "files": info.get("files", 1),
        }
    elif "window" in info:
        rec["window"] = info.get("window")
    return rec


def run(studies: list[Study], model: Any, out: Path, *, max_new_tokens: int | None, sampling: Any,
        retry_errors: bool = False, progress: bool = True) -> tuple[int, int, int]:
    """Answer every study not yet in `out`; returns (ok, failed, skipped)."""
    from hulurt.errors import HuluRuntimeError

    done = done_keys(out, retry_errors)
    todo = [s for s in studies if (s.key, s.prompt) not in done]
    skipped = len(studies) - len(todo)
    ok = failed = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
        with open(out, "ab") as f:  # a cut last line: start ours on a fresh one
            f.write(b"\n")
    bar = _bar(len(todo), progress)
    with open(out, "a", encoding="utf-8") as f:
        for s in todo:
            rec: dict[str, Any] = {"study": s.key, "path": str(s.path), "kind": s.kind, "prompt": s.prompt}
            t0 = time.perf_counter()
            try:
                rec.update(answer(model, s, max_new_tokens, sampling))
                rec["status"] = "ok"
                ok += 1
            except HuluRuntimeError as e:
                rec.update(status="error", error=str(e))
                failed += 1
            except Exception as e:
                log.debug("study %s failed", s.key, exc_info=True)
                rec.update(status="error", error=f"{type(e).__name__}: {e}")
                failed += 1
            rec["seconds"] = round(time.perf_counter() - t0, 4)
            rec["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(s.key, ok, failed)
    bar.close()
    return ok, failed, skipped


class _bar:
    """tqdm when installed (the `batch` extra), else one line per study on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled, self.total, self.n = enabled, total, 0
        self.tq = None
        if enabled:
            try:
                from tqdm import tqdm

                self.tq = tqdm(total=total, unit="study", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, key: str, ok: int, failed: int) -> None:
        self.n += 1
        if self.tq is not None:
            self.tq.set_postfix(ok=ok, failed=failed, refresh=False)
            self.tq.update(1)
        elif self.enabled:
            print(f"[{self.n}/{self.total}] {key} (ok {ok}, failed {failed})", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tq is not None:
            self.tq.close()


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hulurt batch",
        description="Answer a question about every study under a folder (DICOM series folders, NIfTI files, "
        "images, videos) or listed in a CSV of path,prompt; one JSON line per study in --out.",
    )
    p.add_argument("studies", type=Path, help="a folder of studies, one study file, or a .csv of path,prompt")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory written by `huluexport build`")
    p.add_argument("--prompt", default=None, help="the question (required unless the CSV gives one per row)")
    p.add_argument("--out", type=Path, required=True, help="results file (JSON lines; appended, never truncated)")
    p.add_argument("--retry-errors", action="store_true", help="answer again the studies recorded as errors")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="default: the bundle's default")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="sample (default: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="sampling: nucleus mass")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="intra-op threads (0 = engine default)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="execution provider")
    p.add_argument("--skip-hash-check", action="store_true", help="check bundle file sizes only, not sha256")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress; tracebacks of failed studies")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from hulurt.errors import HuluRuntimeError
    from hulurt.sampling import SamplingConfig

    try:
        if not args.studies.exists():
            raise ValueError(f"{args.studies}: not found; expected a folder of studies, a study file or a .csv")
        if args.studies.is_file() and args.studies.suffix.lower() == ".csv":
            studies = read_csv(args.studies, args.prompt)
        else:
            if not args.prompt or not args.prompt.strip():
                raise ValueError("--prompt is required for a folder of studies")
            studies = discover(args.studies, args.prompt)
        if not studies:
            raise ValueError(f"{args.studies}: no studies found (DICOM series folders, NIfTI, images or videos)")
        if args.temperature is None:
            sampling = SamplingConfig(greedy=True)
        else:
            sampling = SamplingConfig(greedy=False, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        from hulurt.api import load

        todo = len(studies) - len(done_keys(args.out, args.retry_errors) & {(s.key, s.prompt) for s in studies})
        if todo == 0:
            print(f"{len(studies)} studies, all already in {args.out}; nothing to do", file=sys.stderr)
            return 0
        model = load(args.bundle, provider=args.provider, threads=args.threads,
                     verify_hashes=not args.skip_hash_check)
        ok, failed, skipped = run(studies, model, args.out, max_new_tokens=args.max_new_tokens, sampling=sampling,
                                  retry_errors=args.retry_errors, progress=not args.no_progress)
    except (HuluRuntimeError, ValueError, OSError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the studies answered so far are in the output, re-run to continue", file=sys.stderr)
        return 130
    print(f"{ok} ok, {failed} failed, {skipped} already done -> {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
