"""Image queries in an ``adapter`` space: a thumbnail of a stored image is also searched at the stored scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from licsearch.ops.search import merge_hits, search
from licsearch.query_views import THUMBNAIL_MIN_RATIO, THUMBNAIL_UPSCALE, thumbnail_view
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


@pytest.mark.slow
def test_a_half_size_copy_finds_its_original(tmp_path: Path) -> None:
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
    # a 90 % crop is narrower than THUMBNAIL_MIN_RATIO times the stored width, so its ranking is the single view's
    assert 230 * THUMBNAIL_MIN_RATIO > 256 and crop == crop_before, (crop, crop_before)
