"""Image queries in an ``adapter`` space: shifted views re-align a crop with the latent grid, and a thumbnail of a
stored image is also searched at the stored scale (:mod:`licsearch.query_views`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from licsearch.model.codec import CODEC_ARCHS
from licsearch.ops.search import merge_hits, search
from licsearch.query_views import (
    LATENT_GRID,
    SHIFT_MAX_PIXELS,
    SHIFT_PX,
    THUMBNAIL_MIN_RATIO,
    THUMBNAIL_UPSCALE,
    query_views,
    shift_views,
    thumbnail_view,
)
from licsearch.storage.index import Hit
from licsearch.storage.store import Store
from tests.conftest import make_image, run_cli


def test_thumbnail_view_and_merge() -> None:
    px = make_image(3, 40, 60)
    view = thumbnail_view(px, max_pixels=10**6)
    assert view is not None and view.shape == (40 * THUMBNAIL_UPSCALE, 60 * THUMBNAIL_UPSCALE, 3)
    assert thumbnail_view(px, max_pixels=40 * 60 * THUMBNAIL_UPSCALE**2 - 1) is None  # never past the store's limit
    a = [Hit("x", 0.5, {}), Hit("y", 0.4, {})]
    b = [Hit("y", 0.9, {"v": 2}), Hit("z", 0.1, {})]
    merged = merge_hits([a, b], top_k=2)
    assert [(h.id, h.score) for h in merged] == [("y", 0.9), ("x", 0.5)]


def test_the_latent_grid_is_every_codecs() -> None:
    for name in CODEC_ARCHS.names():
        assert CODEC_ARCHS.get(name).downsampling // 4 == LATENT_GRID, name  # y is four times z's resolution


def test_shift_views_pad_the_top_and_left_edges() -> None:
    px = make_image(4, 40, 60)
    views = shift_views(px, max_pixels=10**6)
    assert [v.shape[:2] for v in views] == [(40 + SHIFT_PX, 60), (40, 60 + SHIFT_PX), (40 + SHIFT_PX, 60 + SHIFT_PX)]
    for v, (top, left) in zip(views, ((SHIFT_PX, 0), (0, SHIFT_PX), (SHIFT_PX, SHIFT_PX)), strict=True):
        assert (v[top:, left:] == px).all() and (v[:top, left:] == px[:1]).all()  # the image moved, edges replicated
    assert len(shift_views(px, max_pixels=(40 + SHIFT_PX) * 60)) == 2  # none past the store's limit
    assert shift_views(px, max_pixels=40 * 60) == []
    assert shift_views(make_image(4, 16, SHIFT_MAX_PIXELS // 16 + 1), max_pixels=10**9) == []  # large queries: none
    # The thumbnail view joins them only where some stored image is wide enough for it.
    assert [v.min_width for v in query_views(px, 10**6, lambda w: False)] == [0, 0, 0]
    assert [v.min_width for v in query_views(px, 10**6, lambda w: w <= 90)] == [0, 0, 0, 90]


@pytest.mark.slow
def test_half_size_copies_and_crops_find_their_originals(tmp_path: Path) -> None:
    from licsearch.world import sample_images

    folder, queries = tmp_path / "photos", tmp_path / "queries"
    folder.mkdir()
    queries.mkdir()
    n = 16
    for i, (_, pixels) in enumerate(sample_images(n, seed=23, size=(256, 256))):
        image = Image.fromarray(pixels)
        image.save(folder / f"{i}.png")
        image.resize((128, 128), Image.Resampling.BICUBIC).save(queries / f"{i}_half.png")
        image.crop((13, 13, 243, 243)).save(queries / f"{i}_crop.png")
    store_dir = tmp_path / "store"
    run_cli("init", "--store", str(store_dir), "--preset", "offline", check=True)
    run_cli("ingest", "--store", str(store_dir), "--no-progress", str(folder), check=True)
    with Store.open(store_dir) as store:
        names = {pid: Path(str(payload["source_path"])).stem for page in store.index.scroll() for pid, payload in page}
        assert len(names) == n

        def top(path: Path) -> str:
            return names[search(store, image=path, top_k=3).hits[0].id]

        def single_view(path: Path) -> str:  # the query as given only: what search did before the thumbnail view
            from licsearch.bundle.codec_cache import embed_image
            from licsearch.imageio import load_image

            vec = embed_image(store.models, load_image(path).pixels)
            return names[store.index.search(store.space_id, vec, top_k=1)[0].id]

        half = sum(top(queries / f"{i}_half.png") == str(i) for i in range(n))
        half_before = sum(single_view(queries / f"{i}_half.png") == str(i) for i in range(n))
        crop = sum(top(queries / f"{i}_crop.png") == str(i) for i in range(n))
        crop_before = sum(single_view(queries / f"{i}_crop.png") == str(i) for i in range(n))
        every = search(store, image=queries / "0_half.png", top_k=n).hits
    assert len({h.id for h in every}) == len(every) == n  # both views merged, each point once, best score first
    assert [h.score for h in every] == sorted((h.score for h in every), reverse=True)
    print(f"half-size r@1 {half}/{n} (single view {half_before}), crop {crop}/{n} (single view {crop_before})")
    assert half >= max(half_before, 0.9 * n), (half, half_before)
    # a 90 % crop is too wide for the thumbnail view; its shift views re-align it with the stored image's grid
    assert 230 * THUMBNAIL_MIN_RATIO > 256 and crop >= crop_before, (crop, crop_before)
