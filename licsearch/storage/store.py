"""A store: its config, bitstream blobs, Qdrant collection and the models that made them.

Layout of a store directory::

    store.json          the StoreConfig (models with weight fingerprints, space id, Qdrant location)
    credentials.json    Qdrant API key when one was given (mode 0600)
    blobs/objects/ab/cdef....lics   bitstreams, content-addressed by sha256
    blobs/tmp/          temp files of writes in flight
    edge/               the Qdrant Edge shard (engine ``edge``, the embedded default; absent with a server URL)
    qdrant/             qdrant-client local-mode data of a store made before Edge (``licsearch store upgrade``)
    totals.json         running totals of the points and bitstreams, for ``stats`` (:mod:`.totals`; embedded only)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import uuid
from pathlib import Path

from .. import defaults
from ..config import CONFIG_FILE, ModelsConfig, QdrantConfig, StoreConfig
from ..errors import ConfigMismatchError, StoreError
from ..jsondoc import read_json_file, write_json
from ..model.models import ModelPlane, ModelSet
from ..readonly import is_writable, read_only_error
from ..spaces import ADAPTER_KIND, PIXELS_KIND, pixels_space_id, space_id_for
from .blobs import BlobStore
from .index import VectorIndex
from .local import INDEX_REPAIR_HINT
from .totals import TOTALS_FILE, Totals, TotalsKeeper
from .vectors import DEFAULT_VECTORS, VECTOR_SETTINGS

DEFAULT_STORE = "./licsearch-data"
CREDENTIALS_FILE = "credentials.json"
API_KEY_ENV = "LICSEARCH_QDRANT_API_KEY"
UPGRADE_HINT = (
    "run `licsearch store upgrade --store DIR` to move it to Qdrant Edge (search and stats work meanwhile; "
    "qdrant-client's local mode opens slowly beyond ~20,000 points)"
)
"""What to do about a store still on qdrant-client's local mode."""
_noticed: set[Path] = set()


def default_store_dir() -> Path:
    """``$LICSEARCH_STORE`` when set, else ``./licsearch-data``."""
    return Path(os.environ.get("LICSEARCH_STORE") or DEFAULT_STORE)


def point_id(pixels_sha256: str) -> str:
    """The point id of an image: a UUID made from the hash of its decoded pixels (content identity)."""
    return str(uuid.UUID(hex=pixels_sha256[:32]))


class Store:
    """An opened store. Use :meth:`create` or :meth:`open`; close it (or use ``with``) to release Qdrant."""

    def __init__(self, root: Path, config: StoreConfig, *, api_key: str | None = None) -> None:
        self.root = root
        self.config = config
        self.models: ModelPlane = model_plane_for(config)
        self.blobs = BlobStore(root / "blobs")
        q = config.qdrant
        legacy = self.legacy_local(config)
        if legacy and root.resolve() not in _noticed:
            _noticed.add(root.resolve())
            print(f"note: the store at {root} uses qdrant-client's local mode; {UPGRADE_HINT}", file=sys.stderr)
        self.index = VectorIndex(
            path=None if q.url else root / q.path,
            url=q.url,
            api_key=api_key,
            collection=q.collection,
            engine="edge" if q.engine == "edge" else "client",
            vectors=q.vectors,
            legacy_hint=UPGRADE_HINT if legacy else None,
        )
        # Embedded stores only: a server's collection may have other writers, whose changes no file here sees.
        self.totals: TotalsKeeper | None = None
        if q.url is None:
            self.totals = TotalsKeeper(root / TOTALS_FILE, writable=not self.read_only)
            self.index.totals = self.blobs.totals = self.totals

    @staticmethod
    def legacy_local(config: StoreConfig) -> bool:
        """True for a store still on qdrant-client's local mode (made before the Edge engine)."""
        return config.qdrant.engine == "client" and config.qdrant.url is None

    @property
    def space_id(self) -> str:
        return self.config.space_id

    @property
    def local(self) -> bool:
        """True when Qdrant runs embedded (one process holds the store)."""
        return self.config.qdrant.url is None

    @property
    def read_only(self) -> bool:
        """True when this process cannot change the store (read-only media or mount, or permissions)."""
        return self.index.read_only or not (is_writable(self.root) and is_writable(self.blobs.root))

    def require_writable(self, action: str) -> None:
        """Refuses ``action`` (a change such as "ingest") on a read-only store, before anything is tried.

        Raises:
            StoreError: the store is read-only; the message says what still works on it.
        """
        if self.legacy_local(self.config):
            self.index.require_writable(action)
        if self.read_only:
            raise read_only_error(f"the store at {self.root}", action)

    @classmethod
    def create(
        cls,
        root: Path,
        models: ModelsConfig,
        *,
        qdrant: QdrantConfig | None = None,
        api_key: str | None = None,
        max_pixels: int = defaults.MAX_PIXELS,
        bundle: Path | None = None,
        kind: str = ADAPTER_KIND,
        vectors: str = DEFAULT_VECTORS,
    ) -> Store:
        """Initialises a store: loads the models to fingerprint them, writes the config, creates the collection.

        With ``bundle``, the models are the bundle's (``models`` is ignored) and its space id is used. ``kind`` is
        the active space's kind: ``pixels`` embeds ingested images with CLIP's image tower (no bundle then).
        ``vectors`` is the space's vector setting (:mod:`licsearch.storage.vectors`). Without a server URL the
        index is a Qdrant Edge shard in ``DIR/edge``.
        """
        if bundle is not None and kind == PIXELS_KIND:
            raise StoreError("a bundle has no CLIP image tower, so it cannot make a pixels space")
        if (root / CONFIG_FILE).exists():
            raise StoreError(f"a store already exists at {root}", hint="use it, or choose another --store DIR")
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} is not a directory")
        parent = next(p for p in (root, *root.parents) if p.exists())
        if not is_writable(parent):
            raise StoreError(
                f"cannot create a store at {root}: {parent} is not writable", hint="choose a writable --store DIR"
            )
        ms: ModelPlane
        if bundle is not None:
            from ..bundle.runtime import BundleModelSet

            bms = BundleModelSet(bundle.resolve())
            ms, fp, space = bms, bms.manifest.models, bms.space_id
            dim = bms.embed_dim
        else:
            eager = ModelSet(models, kind=kind)
            ms, fp = eager, eager.fingerprinted()
            space = pixels_space_id(fp) if kind == PIXELS_KIND else space_id_for(fp)
            dim = eager.embed_dim
        q = qdrant or QdrantConfig()
        q = dataclasses.replace(
            q,
            engine="client" if q.url else "edge",
            path=q.path if q.url or q.engine == "edge" else QdrantConfig.path,
            vectors={**q.vectors, space: vectors} if vectors != DEFAULT_VECTORS else dict(q.vectors),
        )
        cfg = StoreConfig(
            models=fp,
            space_id=space,
            qdrant=q,
            bundle=str(bundle.resolve()) if bundle is not None else None,
            max_pixels=max_pixels,
            kind=kind,
        )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create a store at {root}: {e.strerror or e}", hint="choose a writable --store DIR"
            ) from e
        if api_key:
            write_json(root / CREDENTIALS_FILE, {"qdrant_api_key": api_key})  # mode 0600, as atomic_write makes it
        store = cls(root, cfg, api_key=api_key)
        store.models = ms  # reuse the loaded models
        try:
            store.index.ensure_collection({cfg.space_id: dim}, {cfg.space_id: vectors})
            if store.totals is not None and store.index.count() == 0:
                store.totals.replace(Totals())
        except BaseException:
            store.close()
            raise
        cfg.save(root)  # written last: a store exists only once its collection does
        return store

    @classmethod
    def open(cls, root: Path, *, api_key: str | None = None) -> Store:
        """Opens an existing store (models load lazily, on first use); a read-only one opens for reading.

        Raises:
            StoreError: there is no store at ``root``, or its config or embedded index is damaged or missing.
        """
        cfg = StoreConfig.load(root)
        for space, setting in cfg.qdrant.vectors.items():
            if setting not in VECTOR_SETTINGS:
                raise StoreError(
                    f"{root / CONFIG_FILE} is damaged: store.qdrant.vectors[{json.dumps(space)}] {setting!r} is "
                    f"not a vector setting (known: {', '.join(VECTOR_SETTINGS)})",
                    hint="correct the named field by hand, or restore store.json from a backup",
                )
        if cfg.qdrant.url is None and not (root / cfg.qdrant.path).is_dir():
            raise StoreError(
                f"the vector index folder {root / cfg.qdrant.path} of the store at {root} is missing",
                hint=INDEX_REPAIR_HINT,
            )
        key = api_key or os.environ.get(API_KEY_ENV) or _read_api_key(root)
        return cls(root, cfg, api_key=key)

    def record_vectors(self, space_id: str, setting: str) -> None:
        """Records ``setting`` as the vector setting of ``space_id`` in ``store.json`` (before the space exists).

        Raises:
            InputError: the space exists already with another setting, or the setting is unknown.
        """
        from ..errors import InputError
        from .vectors import vector_setting

        chosen = vector_setting(setting).name
        q = self.config.qdrant
        current = q.vectors.get(space_id, DEFAULT_VECTORS)
        if current == chosen:
            return
        if space_id in self.index.spaces():
            raise InputError(
                f"embedding space {space_id!r} keeps its vectors as {current}, not {chosen}",
                hint="drop --vectors to resume it, or re-index into a new space id with the setting you want",
            )
        self.require_writable(f"record the vector setting of {space_id!r}")
        self.config = dataclasses.replace(
            self.config, qdrant=dataclasses.replace(q, vectors={**q.vectors, space_id: chosen})
        )
        self.config.save(self.root)
        self.index.use_setting(space_id, chosen)

    def check_models(self, requested: ModelsConfig | None) -> None:
        """Refuses model flags that differ from the store's models."""
        check_models(self.config, requested)

    def close(self) -> None:
        self.index.close()
        if self.totals is not None:
            self.totals.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_models(config: StoreConfig, requested: ModelsConfig | None) -> None:
    """Refuses models (from command-line flags) that differ from those a store was made with."""
    if requested is None:
        return
    mine = config.models.with_hashes("", "", "")
    if requested.with_hashes("", "", "") != mine:
        raise ConfigMismatchError(
            f"this store was made with other models ({_describe(mine)}; asked for {_describe(requested)})",
            hint="drop the model flags to use the store's models, or make a new store with `licsearch init`",
        )


def model_plane_for(config: StoreConfig) -> ModelPlane:
    """The store's models: eager PyTorch, or its bundle on ONNX Runtime."""
    if config.bundle is None:
        return ModelSet(config.models, kind=config.kind)
    from ..bundle.runtime import BundleModelSet

    return BundleModelSet(Path(config.bundle))


def _describe(m: ModelsConfig) -> str:
    return (
        f"codec {m.codec.arch}:{m.codec.quality} ({m.codec.weights}), clip {m.clip.model} ({m.clip.weights}), "
        f"adapter ({m.adapter.weights})"
    )


def _read_api_key(root: Path) -> str | None:
    p = root / CREDENTIALS_FILE
    if not p.is_file():
        return None
    hint = 'restore it from a backup, or write it again as {"qdrant_api_key": "KEY"} (mode 0600)'
    doc = read_json_file(p, "a credentials file", hint=hint)
    key = doc.get("qdrant_api_key") if isinstance(doc, dict) else None
    if not (key is None or isinstance(key, str)) or not isinstance(doc, dict):
        raise StoreError(f'{p} is damaged: it must be an object with a string "qdrant_api_key"', hint=hint)
    return key or None
