"""Shipping trained weights into the package (``licsearch/shipped/PRESET``) with their provenance and figures.

:func:`ship_run` copies a training run's weights file next to its ``provenance.json`` (data, steps, seed, command,
hardware); CLIP and adapter weights are stored as float16 (halving an 8.8 M-parameter CLIP to stay under the 25 MB a
file the repository allows, and each adapter to 5 MB; the tensors are cast back to float32 on load, and every
recorded figure is measured on the shipped float16 files). Codec weights stay float32: the entropy
tables written by ``update()`` were computed from the float32 quantiles, and rounding those would move the medians
the tables are offset by.

:func:`reference_figures` measures the shipped preset on inputs that every checkout can make (procedural-world test
scenes, rendered deterministically), so that a test can reload the shipped files and reproduce the recorded
figures within a tolerance without the development data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..fsutil import atomic_write
from ..model.weights import SHIPPED_PREFIX, load_state_dict_file, save_state_dict, shipped_dir

if TYPE_CHECKING:
    import numpy as np

    from ..config import ModelsConfig

REFERENCE_FILE = "reference.json"
REFERENCE_SIZE = (256, 256)
REFERENCE_CODEC_IMAGES = 4
REFERENCE_SCENES = 200
ADAPTER_EVAL_FILE = "eval/adapter.json"


def ship_run(run_dir: Path, weights_name: str, preset: str, dest_name: str, *, half: bool = False) -> Path:
    """Copies ``run_dir/weights_name`` to ``licsearch/shipped/PRESET/dest_name`` with its provenance beside it."""
    src = run_dir / weights_name
    prov = run_dir / "provenance.json"
    if not src.is_file() or not prov.is_file():
        raise InputError(
            f"{run_dir} holds no finished training run", hint=f"expected {weights_name} and provenance.json"
        )
    out_dir = shipped_dir() / preset
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / dest_name
    if half:
        state = load_state_dict_file(src, what="weights")
        save_state_dict({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dest)
    else:
        shutil.copyfile(src, dest)
    record = json.loads(prov.read_text(encoding="utf-8"))
    record["shipped_as"] = {"file": dest_name, "float16": half, "bytes": dest.stat().st_size}
    stem = dest_name.removesuffix(".safetensors")
    atomic_write(out_dir / f"{stem}.provenance.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return dest


def world_test_scenes(n: int, size: tuple[int, int] = REFERENCE_SIZE) -> tuple[list[str], list[np.ndarray]]:
    """Captions and pixels of the first ``n`` scenes of the held-out test split (world seed 0)."""
    from ..world import render, sample_specs

    specs = sample_specs(n, seed=0, split="test")
    return [s.caption() for s in specs], [render(s, size) for s in specs]


def codec_figures(weights: str, arch: str, quality: int, images: list[np.ndarray]) -> dict[str, float]:
    """Mean container bpp and PSNR of ``images`` round-tripped through real bitstreams."""
    from .codec import round_trip_figures

    r = round_trip_figures(arch, quality, weights, images)
    return {"bpp": float(r["bpp"]), "psnr": float(r["psnr"]), "images": float(r["images"])}


def semantic_figures(cfg: ModelsConfig, captions: list[str], images: list[np.ndarray]) -> dict[str, float]:
    """Text-to-image hit@1/@5 over the distinct captions: adapter on compressed latents vs CLIP on the pixels.

    Also the adapter-vs-teacher cosine and the bpp the adapter's latents were coded at.
    """
    import numpy as np

    from ..eval.semantic import Teacher
    from ..metrics import hits_at_k
    from ..model.models import ModelSet

    models = ModelSet(cfg)
    encoded = [e for i in range(0, len(images), 16) for e in models.encode_batch(images[i : i + 16])]
    adapter = np.asarray([e.embedding for e in encoded], dtype=np.float32)
    teacher = Teacher(models.text.model).embed(images)
    texts = sorted(set(captions))
    queries = models.embed_texts(texts).vectors.float().numpy()
    relevant = [{i for i, c in enumerate(captions) if c == t} for t in texts]
    ad, px = hits_at_k(queries, adapter, relevant, (1, 5)), hits_at_k(queries, teacher, relevant, (1, 5))
    return {
        "scenes": float(len(images)),
        "queries": float(len(texts)),
        "bpp": float(np.mean([e.bpp for e in encoded])),
        "hit1_adapter": ad[1],
        "hit5_adapter": ad[5],
        "hit1_clip_pixels": px[1],
        "hit5_clip_pixels": px[5],
        "cos_mean": float(np.mean((adapter * teacher).sum(axis=1))),
    }


def reference_figures(
    preset: str = "offline", *, n_codec: int = REFERENCE_CODEC_IMAGES, n_scenes: int = REFERENCE_SCENES
) -> dict[str, Any]:
    """The shipped preset's figures on world test scenes: every shipped codec quality, and the semantic task."""
    from ..presets import PRESETS

    models = PRESETS.get(preset).models
    captions, images = world_test_scenes(max(n_codec, n_scenes))
    codecs = {}
    for path in sorted((shipped_dir() / preset).glob("codec-q*.safetensors")):
        q = int(path.stem.removeprefix("codec-q"))
        codecs[str(q)] = codec_figures(f"{SHIPPED_PREFIX}{preset}/{path.name}", models.codec.arch, q, images[:n_codec])
    return {
        "inputs": f"procedural world, held-out test split, seed 0, {REFERENCE_SIZE[0]}x{REFERENCE_SIZE[1]}",
        "codec": codecs,
        "semantic": semantic_figures(models, captions[:n_scenes], images[:n_scenes]),
    }


def write_reference(preset: str = "offline") -> Path:
    """Measures :func:`reference_figures` and records them as ``licsearch/shipped/PRESET/reference.json``."""
    path = shipped_dir() / preset / REFERENCE_FILE
    atomic_write(path, (json.dumps(reference_figures(preset), indent=2, sort_keys=True) + "\n").encode())
    return path


def ship_offline(runs: Path, qualities: tuple[int, ...] = (1, 2, 3, 4)) -> list[Path]:
    """Ships the runs of ``make train-offline``: ``RUNS/codec-qN``, ``RUNS/clip-world`` and the adapters
    (:func:`~licsearch.presets.offline_adapter_run`: ``RUNS/adapter-qN``, ``RUNS/adapter-long-qN``).

    The preset's own quality needs its adapter; other qualities ship theirs when they were trained (``licsearch
    eval`` measures the semantic task at every quality that has one).
    """
    from ..presets import OFFLINE_QUALITY, offline_adapter_file, offline_adapter_run

    own = offline_adapter_run(OFFLINE_QUALITY)
    if not (runs / own).is_dir():  # the preset's own adapter: never skipped, unlike the other qualities' below
        raise InputError(f"{runs} has no {own} run", hint="run `make train-offline` first")
    written = [
        ship_run(runs / f"codec-q{q}", "codec.safetensors", "offline", f"codec-q{q}.safetensors") for q in qualities
    ]
    written.append(ship_run(runs / "clip-world", "clip.safetensors", "offline", "clip-world.safetensors", half=True))
    if (runs / "clip-world-b").is_dir():  # a second, differently seeded world CLIP: what `migrate` moves to
        written.append(
            ship_run(runs / "clip-world-b", "clip.safetensors", "offline", "clip-world-b.safetensors", half=True)
        )
    for q in qualities:
        if (runs / offline_adapter_run(q)).is_dir():
            written.append(
                ship_run(
                    runs / offline_adapter_run(q), "adapter.safetensors", "offline", offline_adapter_file(q), half=True
                )
            )
    written.append(write_reference("offline"))
    written.append(write_summary("offline"))
    return written


def quality_models(preset: str, quality: int) -> ModelsConfig:
    """The preset's models with the shipped codec and adapter of ``quality`` (``codec-qN``,
    :func:`~licsearch.presets.offline_adapter_file`)."""
    import dataclasses

    from ..presets import PRESETS, offline_adapter_file

    m = PRESETS.get(preset).models
    codec = dataclasses.replace(
        m.codec, quality=quality, weights=f"{SHIPPED_PREFIX}{preset}/codec-q{quality}.safetensors"
    )
    adapter = dataclasses.replace(m.adapter, weights=f"{SHIPPED_PREFIX}{preset}/{offline_adapter_file(quality)}")
    return dataclasses.replace(m, codec=codec, adapter=adapter)


def _adapter_vectors(models: Any, images: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    """Adapter embeddings of ``images`` through real bitstreams (batched by image size) and each one's bpp."""
    import numpy as np

    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, px in enumerate(images):
        by_shape.setdefault(px.shape, []).append(i)
    vectors: list[Any] = [None] * len(images)
    bpp = [0.0] * len(images)
    for idx in by_shape.values():
        for k in range(0, len(idx), 16):
            part = idx[k : k + 16]
            for i, e in zip(part, models.encode_batch([images[i] for i in part]), strict=True):
                vectors[i], bpp[i] = e.embedding, e.bpp
    return np.asarray(vectors, dtype=np.float32), bpp


def adapter_figures(
    preset: str,
    images: list[np.ndarray],
    captions: list[str] | None,
    qualities: tuple[int, ...],
    near_duplicate_qualities: tuple[int, ...],
) -> dict[str, Any]:
    """The shipped adapters on one image set: cosine to the teacher, text hit@1/@5, near-duplicate recall@1.

    The teacher (CLIP's image tower on the original pixels, open_clip's eval preprocessing) gives the reference
    figures; near-duplicates are the edits of :data:`licsearch.eval.semantic.EDITS`, each searched among the
    originals (the adapter's vectors of both come from bitstreams).
    """
    import numpy as np

    from ..eval.semantic import EDITS, Teacher, near_duplicate_recall
    from ..metrics import hits_at_k
    from ..model.models import ModelSet

    first = ModelSet(quality_models(preset, qualities[0]))
    teacher = Teacher(first.text.model)
    pixels = teacher.embed(images)
    edited = {name: [EDITS.get(name)(px) for px in images] for name in EDITS}
    texts = sorted(set(captions)) if captions else []
    relevant = [{i for i, c in enumerate(captions or []) if c == t} for t in texts]
    queries = first.embed_texts(texts).vectors.float().numpy() if texts else None
    ref: dict[str, Any] = {
        "near_duplicate": {n: near_duplicate_recall(pixels, teacher.embed(e))["recall_at_1"] for n, e in edited.items()}
    }
    if queries is not None:
        ref.update({f"hit{k}": v for k, v in hits_at_k(queries, pixels, relevant, (1, 5)).items()})
    per_quality: dict[str, Any] = {}
    for q in qualities:
        models = ModelSet(quality_models(preset, q))
        vectors, bpp = _adapter_vectors(models, images)
        row: dict[str, Any] = {"bpp": float(np.mean(bpp)), "cos_mean": float(np.mean((vectors * pixels).sum(axis=1)))}
        if queries is not None:
            row.update({f"hit{k}_adapter": v for k, v in hits_at_k(queries, vectors, relevant, (1, 5)).items()})
            row["hit1_ratio_to_clip_pixels"] = row["hit1_adapter"] / max(ref["hit1"], 1e-12)
        if q in near_duplicate_qualities:
            row["near_duplicate"] = {
                n: near_duplicate_recall(vectors, _adapter_vectors(models, e)[0])["recall_at_1"]
                for n, e in edited.items()
            }
        per_quality[str(q)] = row
    return {"images": len(images), "queries": len(texts), "clip_pixels": ref, "per_quality": per_quality}


def write_adapter_eval(
    preset: str = "offline",
    *,
    kodak: Path | None,
    n_scenes: int = REFERENCE_SCENES,
    qualities: tuple[int, ...] = (1, 2, 3, 4),
    near_duplicate_qualities: tuple[int, ...] = (2, 3),
) -> Path:
    """``eval/adapter.json``: :func:`adapter_figures` on world test scenes and, when given, the Kodak folder."""
    from ..imageio import iter_image_files, load_image

    captions, images = world_test_scenes(n_scenes)
    doc: dict[str, Any] = {
        "world": {
            "inputs": f"procedural world, held-out test split, seed 0, {REFERENCE_SIZE[0]}x{REFERENCE_SIZE[1]}",
            **adapter_figures(preset, images, captions, qualities, near_duplicate_qualities),
        }
    }
    if kodak is not None:
        paths = sorted(p for p, err in iter_image_files([kodak]) if err is None)
        if not paths:
            raise InputError(f"no images in {kodak}", hint="pass the Kodak folder as --kodak")
        photos = [load_image(p).pixels for p in paths]
        doc["kodak"] = {
            "inputs": str(kodak),
            **adapter_figures(preset, photos, None, qualities, near_duplicate_qualities),
        }
    path = shipped_dir() / preset / ADAPTER_EVAL_FILE
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return path


def write_summary(preset: str) -> Path:
    """``PROVENANCE.md``: one line per shipped file (what, data, steps, time, hardware, command) and the figures."""
    folder = shipped_dir() / preset
    rows = ["| file | data | steps | seconds | hardware | command |", "|---|---|---|---|---|---|"]
    for prov_path in sorted(folder.glob("*.provenance.json")):
        p = json.loads(prov_path.read_text(encoding="utf-8"))
        env = p.get("environment", {})
        data = p.get("data", {})
        where = Path(data["images_dir"]).name if data.get("images_dir") else f"procedural world ({data.get('splits')})"
        gpus = ", ".join(env.get("gpus") or []) or "no GPU"
        hardware = (
            f"{env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores, {env.get('torch_threads')} threads, {gpus}"
        )
        cmd = " ".join(str(c) for c in p.get("command", []))
        rows.append(
            f"| {p['shipped_as']['file']} | {where} | {p.get('steps')} | {p.get('seconds')} | {hardware} | `{cmd}` |"
        )
    ref = json.loads((folder / REFERENCE_FILE).read_text(encoding="utf-8"))
    lines = [
        f"# Shipped models: preset `{preset}`",
        "",
        "Trained by this project's own code (`make train-offline`); never trained on Kodak. Each file's full record",
        "(options, seed, data, environment, final metrics) is in the `.provenance.json` beside it.",
        "",
        *rows,
        "",
        f"Reference figures ({ref['inputs']}; `tests/test_shipped.py` reproduces them):",
        "",
        "```json",
        json.dumps(ref, indent=2, sort_keys=True),
        "```",
        "",
    ]
    path = folder / "PROVENANCE.md"
    atomic_write(path, "\n".join(lines).encode())
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m licsearch.train.ship", description="ship the offline preset")
    p.add_argument("--runs", type=Path, help="the folder of `make train-offline`'s runs")
    p.add_argument("--reference-only", action="store_true", help="only re-measure reference.json and PROVENANCE.md")
    p.add_argument("--adapter-eval", action="store_true", help=f"only measure the adapters into {ADAPTER_EVAL_FILE}")
    p.add_argument("--kodak", type=Path, help="with --adapter-eval: the Kodak folder (near-duplicates on photos)")
    args = p.parse_args(argv)
    try:
        if args.adapter_eval:
            written = [write_adapter_eval("offline", kodak=args.kodak)]
        elif args.reference_only:
            written = [write_reference("offline"), write_summary("offline")]
        elif args.runs is None:
            raise InputError("--runs is required to ship", hint="pass the folder of `make train-offline`'s runs")
        else:
            written = ship_offline(args.runs)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
