"""``licsearch ui``: the JSON API in-process (FastAPI's TestClient) and the page in a real headless Chromium.

The semantic checks use the shipped offline preset over ``licsearch samples`` (its text search is real); the
browser runs against a real uvicorn on a free loopback port. Set ``LICSEARCH_UI_SCREENSHOT=docs/ui.png`` to keep
the results screenshot for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeDir, run_cli
from tests.test_cli import cli_inprocess

pytest.importorskip("fastapi", reason="the [ui] extra (fastapi, uvicorn) is not installed")
from fastapi.testclient import TestClient

from licsearch.storage.store import Store
from licsearch.ui.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def sample_store(module_tmp: MakeDir) -> tuple[Path, Path, list[dict[str, Any]]]:
    """An offline-preset store of 12 sample scenes with a ``taken`` date each (via --meta, as EXIF may be absent)."""
    base = module_tmp("ui")
    samples, root = base / "samples", base / "store"
    run_cli("samples", "--out", str(samples), "-n", "12", "--size", "192x128", check=True)
    run_cli("init", "--store", str(root), "--preset", "offline", check=True)
    caps = [json.loads(line) for line in (samples / "captions.jsonl").read_text().splitlines()]
    early, late = [c["file"] for c in caps[:6]], [c["file"] for c in caps[6:]]
    run_cli("ingest", "--store", str(root), *[str(samples / f) for f in early], "--meta", "album=early", check=True)
    run_cli("ingest", "--store", str(root), *[str(samples / f) for f in late], "--meta", "album=late", check=True)
    return root, samples, caps


@pytest.fixture(scope="module")
def client(sample_store: tuple[Path, Path, list[dict[str, Any]]]) -> Iterator[TestClient]:
    with Store.open(sample_store[0]) as store, TestClient(create_app(store, max_upload_bytes=2_000_000)) as c:
        yield c


def _hits(doc: dict[str, Any]) -> list[str]:
    return [Path(h["payload"]["source_path"]).name for h in doc["hits"]]


def test_text_search_finds_the_captioned_scene_first(client: TestClient, sample_store: Any) -> None:
    _, _, caps = sample_store
    r = client.post("/api/search", json={"text": caps[3]["caption"], "top_k": 5})
    assert r.status_code == 200, r.text
    first = _hits(r.json())[0]
    assert next(c["caption"] for c in caps if c["file"] == first) == caps[3]["caption"]


def test_search_document_equals_the_cli_json(
    client: TestClient, sample_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _, caps = sample_store
    api = client.post("/api/search", json={"text": caps[0]["caption"], "top_k": 4, "filters": ["meta.album=late"]})
    assert api.status_code == 200, api.text
    # The CLI cannot open the store while the client holds its lock: compare against a copy.
    copy = root.parent / "copy"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.lock", ".lock"), dirs_exist_ok=True)
    res = cli_inprocess(
        capsys, "search", "--store", str(copy), "--text", caps[0]["caption"], "--top-k", "4",
        "--filter", "meta.album=late", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    cli_doc = json.loads(res.stdout)
    doc = api.json()
    # Scores are equal up to float rounding: the CLI's copy of the store is a second Qdrant local-mode instance.
    assert [h["score"] for h in cli_doc["hits"]] == pytest.approx([h["score"] for h in doc["hits"]], abs=1e-6)
    for h in (*cli_doc["hits"], *doc["hits"]):
        h.pop("score")
    assert cli_doc == doc
    assert all(h["payload"]["meta"]["album"] == "late" for h in api.json()["hits"])


def test_image_upload_finds_itself_and_like_leaves_itself_out(client: TestClient, sample_store: Any) -> None:
    _, samples, caps = sample_store
    data = (samples / caps[5]["file"]).read_bytes()
    r = client.post("/api/search/image", files={"file": (caps[5]["file"], data, "image/png")}, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    hit = r.json()["hits"][0]
    assert Path(hit["payload"]["source_path"]).name == caps[5]["file"]
    like = client.post("/api/search", json={"like": hit["id"], "top_k": 3}).json()
    assert hit["id"] not in [h["id"] for h in like["hits"]] and len(like["hits"]) == 3


def test_detail_preview_download_and_stats(client: TestClient, sample_store: Any) -> None:
    import io

    from PIL import Image

    root = sample_store[0]
    hit = client.post("/api/search", json={"text": "a scene", "top_k": 1}).json()["hits"][0]
    d = client.get(f"/api/images/{hit['id']}").json()
    assert d["bytes"] == hit["payload"]["bytes"]
    source = Path(hit["payload"]["source_path"]).stat().st_size
    assert d["source_bytes"] == hit["payload"]["source_bytes"] == source
    assert d["compression_ratio"] == pytest.approx(d["source_bytes"] / d["bytes"])
    p = client.get(f"/api/images/{hit['id']}/preview")
    assert p.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(p.content)).format == "WEBP"
    assert (root / "previews" / f"{hit['payload']['blob'].split(':')[1]}.webp").read_bytes() == p.content
    for fmt, name in (("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")):
        img = client.get(f"/api/images/{hit['id']}/image", params={"format": fmt, "download": "true"})
        assert img.status_code == 200 and "attachment" in img.headers["content-disposition"]
        assert Image.open(io.BytesIO(img.content)).size == (d["width"], d["height"])
        assert Image.open(io.BytesIO(img.content)).format == name
    s = client.get("/api/stats").json()
    assert s["images"] == 12 and s["previews"] >= 1 and s["preview_bytes"] > 0
    assert [(sp["state"], sp["with_vector"]) for sp in s["space_states"]] == [("active", 12)]
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/api/search", "/api/search/image", "/api/stats"}


@pytest.mark.parametrize(
    ("call", "status", "words"),
    [
        (lambda c: c.post("/api/search/image", files={"file": ("x.png", b"not an image", "image/png")}), 400, "image"),
        (lambda c: c.post("/api/search/image", files={"file": ("x.png", b"\0" * 2_100_000)}), 413, "limit"),
        (lambda c: c.post("/api/search", json={"text": "x", "filters": ["width"]}), 400, "filter"),
        (lambda c: c.post("/api/search", json={"text": "x", "top_k": 0}), 400, "top-k"),
        (lambda c: c.get("/api/images/00000000-0000-0000-0000-000000000000"), 400, "no stored image"),
        (lambda c: c.get("/api/images/00000000-0000-0000-0000-000000000000/image?format=gif"), 400, "format"),
    ],
    ids=["non-image", "huge", "bad-filter", "bad-top-k", "unknown-id", "bad-format"],
)
def test_bad_input_is_4xx_json_and_the_server_stays_up(client: TestClient, call: Any, status: int, words: str) -> None:
    r = call(client)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"].lower()
    assert client.get("/api/stats").status_code == 200


def test_token_is_required_when_set(sample_store: Any, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(sample_store[0], copy)
    with Store.open(copy) as store, TestClient(create_app(store, token="s3cret")) as c:
        assert c.get("/api/stats").status_code == 401
        assert c.get("/api/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/stats", headers={"Authorization": "Bearer s3cret"}).json()["images"] == 12


def test_ui_off_loopback_needs_a_token(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    res = cli_inprocess(capsys, "ui", "--store", str(tmp_path), "--host", "0.0.0.0")
    assert res.returncode == 2 and "--token" in res.stderr


def test_fsck_repair_removes_orphan_previews(sample_store: Any, tmp_path: Path) -> None:
    from licsearch.ops.maintenance import fsck

    copy = tmp_path / "store"
    shutil.copytree(sample_store[0], copy)
    orphan = copy / "previews" / ("ab" * 32 + ".webp")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"old")
    with Store.open(copy) as store:
        assert fsck(store, verify=False).preview_orphans == ["sha256:" + "ab" * 32]
        assert fsck(store, repair=True, verify=False).ok
    assert not orphan.exists()


def test_fsck_repair_rebuilds_a_damaged_preview(client: TestClient, sample_store: Any, tmp_path: Path) -> None:
    from licsearch.ops.maintenance import fsck

    hit = client.post("/api/search", json={"text": "a scene", "top_k": 1}).json()["hits"][0]
    good = client.get(f"/api/images/{hit['id']}/preview").content
    copy = tmp_path / "store"
    shutil.copytree(sample_store[0], copy)
    damaged = copy / "previews" / f"{hit['payload']['blob'].split(':')[1]}.webp"
    damaged.write_bytes(good[: len(good) // 2])  # a torn write
    with Store.open(copy) as store:
        assert fsck(store).preview_damaged == [hit["payload"]["blob"]]
        assert fsck(store, repair=True).ok
        assert fsck(store).preview_damaged == []
    assert damaged.read_bytes() == good


# ---- the page in a real browser -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """A real uvicorn serving one store on a free loopback port, in a thread."""

    def __init__(self, root: Path) -> None:
        import uvicorn

        self.store = Store.open(root)
        self.port = _free_port()
        config = uvicorn.Config(create_app(self.store), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the [dev] extra) is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _png_ok(data: bytes) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


@pytest.mark.slow
def test_page_search_upload_detail_download_filter(browser: Any, sample_store: Any, tmp_path: Path) -> None:
    root, samples, caps = sample_store
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    server = _Server(copy)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.goto(server.url)
        page.wait_for_selector("#message:has-text('12 images')")
        page.fill("#q", caps[3]["caption"])
        page.click("button[type=submit]")
        page.wait_for_selector("#grid .card img[src^='blob:']")
        first = page.locator("#grid .card").first.get_attribute("data-id")
        page.wait_for_function(
            "[...document.querySelectorAll('#grid .card img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        shot = page.screenshot()
        _png_ok(shot)
        if target := os.environ.get("LICSEARCH_UI_SCREENSHOT"):
            import io

            from PIL import Image

            # A 128-colour palette keeps the README's screenshot small (about 60 KB instead of 220 KB).
            small = Image.open(io.BytesIO(shot)).convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT)
            small.save(target, optimize=True)
        alt = page.locator("#grid .card img").first.get_attribute("alt") or ""
        assert next(c["caption"] for c in caps if c["file"] == Path(alt).name) == caps[3]["caption"]
        # upload an image: itself first
        page.set_input_files("#upload", str(samples / caps[8]["file"]))
        page.wait_for_selector("#message:has-text('Searching by')", state="detached", timeout=30000)
        page.wait_for_function("document.querySelector('#message').textContent.includes('results')")
        assert Path(page.locator("#grid .card img").first.get_attribute("alt") or "").name == caps[8]["file"]
        # detail view and download
        page.locator("#grid .card img").first.click()
        page.wait_for_selector("#full[src^='blob:']")
        assert page.locator("#detail").inner_text().count("compression ratio") == 1
        with page.expect_download() as dl:
            page.click(".dl-png")
        saved = tmp_path / "down.png"
        dl.value.save_as(saved)
        _png_ok(saved.read_bytes())
        # album filter (meta): only the late scenes remain
        page.click("#detail a")
        page.fill("#f-meta", "meta.album=early")
        page.fill("#q", "a scene")
        page.click("button[type=submit]")
        page.wait_for_selector("#message:has-text('6 results')")  # the six "early" scenes, not the old twelve
        names = [Path(a or "").name for a in page.locator("#grid .card img").evaluate_all("e => e.map(i => i.alt)")]
        assert names and set(names) <= {c["file"] for c in caps[:6]}
        assert first
        page.close()
    finally:
        server.stop()


def test_page_empty_store(browser: Any, tiny_store: Path) -> None:
    server = _Server(tiny_store)
    try:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("#empty")
        assert "This store is empty" in page.inner_text("#empty") and "licsearch ingest" in page.inner_text("#empty")
        _png_ok(page.screenshot())
        page.fill("#q", "anything")
        page.click("button[type=submit]")
        page.wait_for_selector("#message:has-text('No images match')")
        page.click("#show-stats")
        page.wait_for_selector("#stats table")
        text = page.inner_text("#stats")
        assert "images\t0" in text and "active, 0 of 0 vectors" in text
        page.close()
    finally:
        server.stop()


def test_page_date_and_camera_filters_on_exif(browser: Any, tiny_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    from tests.conftest import make_image

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, seed, make, taken in (
        ("june", 1, "Canon", "2024:06:15 10:30:00"),
        ("may", 2, "NIKON", "2024:05:31 23:59:59"),
    ):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = make, "Model X"  # Make, Model
        exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
        Image.fromarray(make_image(seed)).save(photos / f"{name}.jpg", "JPEG", quality=90, exif=exif)
    run_cli("ingest", "--store", str(tiny_store), str(photos), check=True)
    server = _Server(tiny_store)
    try:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("#message:has-text('2 images')")
        page.fill("#f-from", "2024-06-01")
        page.fill("#q", "a photo")
        page.click("button[type=submit]")
        page.wait_for_selector("#message:has-text('1 result')")
        assert Path(page.locator("#grid .card img").first.get_attribute("alt") or "").name == "june.jpg"
        page.fill("#f-from", "")
        page.fill("#f-camera", "NIKON Model X")
        page.click("button[type=submit]")
        page.wait_for_selector("#grid .card img[alt$='may.jpg']")
        assert page.locator("#grid .card").count() == 1
        page.fill("#f-camera", "")
        page.fill("#f-meta", "width>=")
        page.click("button[type=submit]")
        page.wait_for_selector("#message.error")
        assert "filter" in page.inner_text("#message")
        page.close()
    finally:
        server.stop()
