"""Vector settings of an embedding space: how its vectors are kept and searched (``--vectors``).

One setting per named vector, chosen at ``init`` or ``reindex`` and recorded in ``store.json``
(``qdrant.vectors``, space id to setting; a space not listed is ``float32``):

- ``float32``: the vectors as they are; search is exact below :data:`INDEXING_THRESHOLD_KB`, HNSW above.
- ``float16``: half-precision storage (Qdrant's ``float16`` datatype), half the bytes, no rescoring needed.
- ``int8``: scalar quantization to one byte per dimension at the 0.99 quantile (Qdrant's scalar quantization),
  the quantized codes searched first and the best ``oversampling * top_k`` rescored on the original vectors.
- ``binary``: one bit per dimension (Qdrant's binary quantization, sign of each component), 32x smaller codes,
  rescored on the originals with a larger oversampling because the codes rank coarsely.
- ``pq``: product quantization (Jégou et al. 2011, "Product quantization for nearest neighbor search") at 16x
  compression, rescored on the originals.

Quantized codes are kept in RAM and the original vectors beside them, so rescoring reads exact floats. This module
is the one place that maps a setting to Qdrant Edge's and to qdrant-client's configuration and search parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InputError

if TYPE_CHECKING:
    from qdrant_client import models as qm

Quantization = Literal["none", "scalar", "binary", "product"]

INDEXING_THRESHOLD_KB = 20_000
"""Size of a segment's vectors (KB) below which it keeps no HNSW graph and is searched exactly (about 10,000
512-d float32 vectors); Qdrant's ``indexing_threshold`` and HNSW ``full_scan_threshold``."""
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
"""HNSW graph parameters (Malkov & Yashunin 2018): edges per node and build-time candidate list (Qdrant's defaults)."""
HNSW_EF_MIN = 128
"""Least candidate list of an HNSW search (Qdrant's ``hnsw_ef``); a search for more candidates than this (``top_k``
times the oversampling) uses that many. At 100,000 clustered 512-d float32 vectors ef 64 / 128 / 256 gave recall@10
0.970 / 0.997 / 1.000 at p50 0.66 / 0.73 / 1.00 ms; on uniform random vectors (HNSW's worst case, unlike
embeddings) 0.072 / 0.129 / 0.227 at 3.1 / 2.6 / 9.4 ms (README, Index benchmark)."""
SCALAR_QUANTILE = 0.99
"""Quantile of the vector components that bounds int8 scalar quantization (outliers are clipped)."""


@dataclass(frozen=True)
class VectorSetting:
    """How one space's vectors are stored and searched.

    Attributes:
        name: the ``--vectors`` value.
        datatype: storage datatype of the original vectors (``float32`` or ``float16``).
        quantization: the quantized codes searched first, or ``none``.
        oversampling: candidates fetched from the codes per result wanted, before rescoring.
        help: one line for ``--help`` and the README.
    """

    name: str
    datatype: Literal["float32", "float16"]
    quantization: Quantization
    oversampling: float
    help: str

    @property
    def rescore(self) -> bool:
        """Whether candidates are rescored on the original vectors (every quantized setting)."""
        return self.quantization != "none"


_SETTINGS = (
    VectorSetting("float32", "float32", "none", 1.0, "exact 4-byte floats"),
    VectorSetting("float16", "float16", "none", 1.0, "2-byte floats (half the storage)"),
    VectorSetting("int8", "float32", "scalar", 2.0, "int8 scalar quantization, rescored on the floats"),
    VectorSetting("binary", "float32", "binary", 64.0, "1-bit binary quantization, rescored on the floats"),
    VectorSetting("pq", "float32", "product", 16.0, "product quantization (16x), rescored on the floats"),
)
"""Oversampling per kind: the least of 1, 2, 4, 8, 16, 32, 64 that reached recall@10 >= 0.95 on 100,000 clustered
512-d vectors at ``hnsw_ef`` 128 (the searches of ``bench --index --oversampling``; README, Index benchmark): int8
0.998 at 2x (0.951 at 1x), pq 0.975 at 16x (0.920 at 8x), binary 0.981 at 64x (0.858 at 32x). Rescoring binary's
640 candidates on the floats costs about 0.5 ms a query more than 160 did."""
VECTOR_SETTINGS: dict[str, VectorSetting] = {}
for _setting in _SETTINGS:
    if _setting.name in VECTOR_SETTINGS:
        raise RuntimeError(f"vector setting {_setting.name!r} declared twice")
    VECTOR_SETTINGS[_setting.name] = _setting

VECTOR_CHOICES: tuple[str, ...] = tuple(VECTOR_SETTINGS)
"""The values ``--vectors`` accepts."""
DEFAULT_VECTORS = "float32"
"""The vector setting of a space when none is chosen (and of every space of an older store)."""


def vector_setting(name: str | None) -> VectorSetting:
    """The setting called ``name`` (``None``: the default).

    Raises:
        InputError: no such setting; the message lists the known ones.
    """
    setting = VECTOR_SETTINGS.get(DEFAULT_VECTORS if name is None else name)
    if setting is None:
        raise InputError(f"unknown vector setting {name!r}", hint=f"use one of {', '.join(VECTOR_CHOICES)} (--vectors)")
    return setting


def add_vectors_flag(parser: Any, *, default: str | None = DEFAULT_VECTORS) -> None:
    """Adds ``--vectors`` (choices and default from this module) to an argparse parser."""
    lines = "; ".join(f"{s.name}: {s.help}" for s in _SETTINGS)
    parser.add_argument(
        "--vectors", choices=VECTOR_CHOICES, default=default, help=f"how the space's vectors are kept ({lines})"
    )


def edge_vector_params(setting: VectorSetting, dim: int) -> Any:
    """Qdrant Edge's ``EdgeVectorParams`` of a cosine named vector of ``dim`` dimensions under ``setting``."""
    import qdrant_edge as qe

    datatype = qe.VectorStorageDatatype.Float16 if setting.datatype == "float16" else qe.VectorStorageDatatype.Float32
    return qe.EdgeVectorParams(
        size=dim, distance=qe.Distance.Cosine, datatype=datatype, quantization_config=edge_quantization(setting)
    )


def edge_quantization(setting: VectorSetting) -> Any:
    """Qdrant Edge's quantization config of ``setting``, None for unquantized settings."""
    import qdrant_edge as qe

    if setting.quantization == "scalar":
        return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=SCALAR_QUANTILE, always_ram=True)
    if setting.quantization == "binary":
        return qe.BinaryQuantizationConfig(always_ram=True)
    if setting.quantization == "product":
        return qe.ProductQuantizationConfig(qe.CompressionRatio.X16, always_ram=True)
    return None


def edge_hnsw_config() -> Any:
    """The shard's HNSW config: :data:`HNSW_M`, :data:`HNSW_EF_CONSTRUCT`, exact below the threshold."""
    import qdrant_edge as qe

    return qe.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=INDEXING_THRESHOLD_KB)


def search_ef(setting: VectorSetting, limit: int, hnsw_ef: int | None = None) -> int:
    """The HNSW candidate list of a search for ``limit`` results: ``hnsw_ef`` when given, else
    :data:`HNSW_EF_MIN` or the candidates the setting fetches (``limit`` times its oversampling), the larger."""
    if hnsw_ef is not None:
        return hnsw_ef
    return max(HNSW_EF_MIN, math.ceil(limit * setting.oversampling))


def edge_search_params(setting: VectorSetting, limit: int, *, hnsw_ef: int | None = None, exact: bool = False) -> Any:
    """Qdrant Edge's ``SearchParams`` for a query of ``limit`` results under ``setting`` (``exact``: no HNSW, no codes;
    ``hnsw_ef``: instead of :func:`search_ef`'s default)."""
    import qdrant_edge as qe

    if exact:
        return qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True))
    quantization = None
    if setting.rescore:
        quantization = qe.QuantizationSearchParams(rescore=True, oversampling=setting.oversampling)
    return qe.SearchParams(hnsw_ef=search_ef(setting, limit, hnsw_ef), quantization=quantization)


def client_vector_params(setting: VectorSetting, dim: int) -> qm.VectorParams:
    """qdrant-client's ``VectorParams`` of a cosine named vector under ``setting`` (for a server collection)."""
    from qdrant_client import models as qm

    datatype = qm.Datatype.FLOAT16 if setting.datatype == "float16" else None
    return qm.VectorParams(
        size=dim, distance=qm.Distance.COSINE, datatype=datatype, quantization_config=client_quantization(setting)
    )


def client_quantization(setting: VectorSetting) -> qm.QuantizationConfig | None:
    """qdrant-client's quantization config of ``setting``, None for unquantized settings."""
    from qdrant_client import models as qm

    if setting.quantization == "scalar":
        scalar = qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=SCALAR_QUANTILE, always_ram=True)
        return qm.ScalarQuantization(scalar=scalar)
    if setting.quantization == "binary":
        return qm.BinaryQuantization(binary=qm.BinaryQuantizationConfig(always_ram=True))
    if setting.quantization == "product":
        product = qm.ProductQuantizationConfig(compression=qm.CompressionRatio.X16, always_ram=True)
        return qm.ProductQuantization(product=product)
    return None


def client_search_params(
    setting: VectorSetting, limit: int, *, hnsw_ef: int | None = None, exact: bool = False
) -> qm.SearchParams:
    """qdrant-client's ``SearchParams`` of a query of ``limit`` results (as :func:`edge_search_params`)."""
    from qdrant_client import models as qm

    if exact:
        return qm.SearchParams(exact=True, quantization=qm.QuantizationSearchParams(ignore=True))
    quantization = None
    if setting.rescore:
        quantization = qm.QuantizationSearchParams(rescore=True, oversampling=setting.oversampling)
    return qm.SearchParams(hnsw_ef=search_ef(setting, limit, hnsw_ef), quantization=quantization)
