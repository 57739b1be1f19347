"""Optional dependencies: the installation extras and the one error for a missing one.

``pip install licsearch`` gives the library and the CLI (codec, CLIP, bundles on ONNX Runtime, the store). The
serving stack and the plotting stack are extras: ``[serve]`` (TorchServe and its model archiver), ``[eval]``
(matplotlib for figures, pytorch-msssim for MS-SSIM; without it a reference implementation is used) ``[gpu]``
(onnxruntime-gpu) and ``[ui]`` (FastAPI and uvicorn for ``licsearch ui``).
"""

from __future__ import annotations

from .errors import LicsearchError

EXTRAS = {
    "serve": ("torchserve", "torch-model-archiver"),
    "eval": ("matplotlib", "pytorch-msssim"),
    "gpu": ("onnxruntime-gpu",),
    "ui": ("fastapi", "uvicorn", "jinja2", "python-multipart"),
}
"""Each extra and the distributions it installs (pyproject.toml's optional-dependencies say the same)."""


class MissingExtraError(LicsearchError):
    """A feature needs an optional dependency that is not installed."""


def missing_extra(extra: str, what: str) -> MissingExtraError:
    """The error for ``what`` (e.g. "plots") needing the ``extra`` that is not installed."""
    return MissingExtraError(
        f"{what} needs the [{extra}] extra ({', '.join(EXTRAS[extra])}), which is not installed",
        hint=f"pip install 'licsearch[{extra}]' (in a checkout: pip install -e '.[{extra}]' or `make setup`)",
    )


def need(module: str, extra: str, what: str) -> None:
    """Raises :class:`MissingExtraError` unless ``module`` can be imported (checked without importing it).

    Args:
        module: the top-level module (e.g. ``"matplotlib"``).
        extra: the extra of :data:`EXTRAS` that installs it.
        what: the feature that needs it, for the message.
    """
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise missing_extra(extra, what)
