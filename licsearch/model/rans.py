"""rANS coding byte-identical with CompressAI's ``RansEncoder`` / ``RansDecoder`` ``*_with_indexes``, in numba.

The encoder exists for speed: CompressAI's Python binding takes Python lists (``tolist()`` of every symbol, index
and the whole CDF table on each call), which costs far more than the coding itself. Here one compiled
loop codes a stream, the parameter path (offsets, escapes, CDF starts and frequencies) computed per symbol inside it.

Why we go around CompressAI's decoder: its C++ ``RansDecoder`` trusts its input. It reads 32-bit words past the end
of the string whenever the coded data runs out, and its bypass loop (``while (val == max_bypass_val)``) has no bound,
so a crafted ``.lics`` (an empty or short stream, for instance) makes it read out of bounds and kill the process
with SIGSEGV. Bitstreams reach the decoder from files and HTTP requests, so they are untrusted input. CompressAI's
encoder's output is what :func:`encode_with_indexes` writes byte for byte, and is decoded here symbol for symbol.

The decoder is compiled twice from the same loop: in C (``_rans.c``, built by ``pip install`` where a compiler
is found; a command that only decodes then never imports numba, whose start-up costs 0.5 s) and in numba
(:func:`_decode`: the fallback, and the reference the C one is tested against).

The coder is Fabian Giesen's rans64 (64-bit state in ``[2**31, 2**63)``, 32-bit words, 16-bit probability precision)
with CompressAI's escape for values outside a CDF's range: the last symbol of each CDF is a sentinel followed by a
4-bit "bypass" count and that many 4-bit nibbles of the raw value. Beyond the bounds checks, this decoder refuses
what no valid encoder writes: a state outside the coder's interval after any step, a bypass value longer than 32 bits
or outside int32, and a stream that is not consumed exactly (every word read, the state back at the encoder's
initial ``2**31``). Any such defect raises :class:`~licsearch.errors.BitstreamError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from ..errors import BitstreamError
from .jit import compile_kernel

if TYPE_CHECKING:
    import threading

    import numpy as np

PRECISION = 16  # probability bits (CompressAI's ``entropy_coder_precision``)
STATE_LOW = 1 << 31  # rans64's RANS64_L: the lower end of the state interval, and the encoder's initial state
WORD_BYTES = 4
FLUSH_BYTES = 8  # the encoder's final state, written as two words
BYPASS_BITS = 4
MAX_BYPASS_NIBBLES = 8  # CompressAI's encoder codes a uint32 raw value, at most eight nibbles
DECODER_ENV = "LICSEARCH_RANS_DECODER"  # "numba": decode with the numba kernel where the C one is built too
SYMBOL_SLACK_BITS = 1e-3  # per-symbol rounding of rANS against the ideal -log2(p), far above its ~2**-14 bound

_FAILURES = {
    1: "the coded data ended before every symbol was decoded",
    2: "the coder's state left its valid interval (the data cannot come from an rANS encoder)",
    3: "a CDF index is out of range",
    4: f"an escaped value is longer than {MAX_BYPASS_NIBBLES * BYPASS_BITS} bits",
    5: "an escaped value overflows a 32-bit integer",
    6: "coded data is left over after the last symbol",
    7: "the coder did not end in its initial state",
}


@dataclass(frozen=True)
class RansTables:
    """The quantized CDFs of one entropy model, as the decoder reads them.

    Attributes:
        cdfs: int32 (n, L): row i holds CDF i in its first ``sizes[i]`` entries, from 0 to ``2**PRECISION``.
        sizes: int32 (n,): entries of each CDF (symbols + 1; the last symbol is the escape sentinel).
        offsets: int32 (n,): the value of symbol 0 of each CDF.
        min_bits: (n,) the fewest bits a symbol coded with CDF i can cost.
        max_bits: (n,) the most bits it can cost, an escaped value of 32 bits included.
    """

    cdfs: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray
    min_bits: np.ndarray
    max_bits: np.ndarray

    @classmethod
    def from_entropy_model(cls, model: Any) -> RansTables:
        """Reads and checks the tables of an updated CompressAI ``EntropyModel``."""
        return cls.from_arrays(
            model._quantized_cdf.numpy(), model._cdf_length.reshape(-1).numpy(), model._offset.reshape(-1).numpy()
        )

    @classmethod
    def from_arrays(cls, cdfs: np.ndarray, sizes: np.ndarray, offsets: np.ndarray) -> RansTables:
        """Checks the arrays as CompressAI's encoder asserts them, and derives the cost bounds."""
        import numpy as np

        cdfs = np.ascontiguousarray(cdfs, dtype=np.int32)
        sizes = np.ascontiguousarray(sizes, dtype=np.int32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int32)
        if cdfs.ndim != 2 or sizes.shape != (len(cdfs),) or offsets.shape != (len(cdfs),) or not len(cdfs):
            raise ValueError("entropy tables need a 2-D CDF array and one size and offset per CDF")
        min_bits, max_bits = np.empty(len(cdfs)), np.empty(len(cdfs))
        for i, (cdf, n) in enumerate(zip(cdfs, sizes, strict=True)):
            freqs = np.diff(cdf[:n].astype(np.int64))
            if not 2 <= n <= cdfs.shape[1] or cdf[0] != 0 or cdf[n - 1] != 1 << PRECISION or (freqs <= 0).any():
                raise ValueError(f"CDF {i} is not a valid {PRECISION}-bit quantized CDF (run the model's update())")
            cost = PRECISION - np.log2(freqs)
            min_bits[i] = cost.min()
            max_bits[i] = max(cost.max(), cost[-1] + BYPASS_BITS * (1 + MAX_BYPASS_NIBBLES))
        return cls(cdfs, sizes, offsets, min_bits, max_bits)

    def length_bounds(self, count: int, per_cdf: np.ndarray | None = None) -> tuple[int, int]:
        """The fewest and most bytes any encoder can write for ``count`` symbols coded with these CDFs.

        Args:
            count: the number of symbols.
            per_cdf: how many of them each CDF codes, when known; otherwise any CDF of the table may be used.

        The decoder's information (log2 of its state plus 32 bits per unread word) starts within
        [31, 63) + 32 (W - 2) for W words, moves by no more than the slack per symbol besides the symbol's cost,
        and ends at 31 (the initial state), which bounds W from both sides.
        """
        if per_cdf is None:
            lo_bits, hi_bits = count * float(self.min_bits.min()), count * float(self.max_bits.max())
        else:
            lo_bits, hi_bits = float(per_cdf @ self.min_bits), float(per_cdf @ self.max_bits)
        lo = (lo_bits - count * SYMBOL_SLACK_BITS - 32) / 32
        hi = (hi_bits + count * SYMBOL_SLACK_BITS) / 32
        return FLUSH_BYTES + WORD_BYTES * max(0, math.floor(lo)), FLUSH_BYTES + WORD_BYTES * math.ceil(hi)


def decode_with_indexes(
    data: bytes, indexes: np.ndarray, tables: RansTables, *, stream: str, run: int = 1
) -> np.ndarray:
    """Decodes one stream to int32 symbols exactly as CompressAI's ``RansDecoder.decode_with_indexes`` would.

    Args:
        data: the coded bytes (untrusted).
        indexes: the CDF index of the symbols, in coding order, each for ``run`` consecutive symbols.
        tables: the entropy model's CDFs.
        stream: the stream's name, for messages.
        run: symbols per index (a channel's plane shares one CDF); memory beyond the indexes is only touched as
            far as the data decodes, so a size claim far beyond the data costs little before it is refused.

    Raises:
        BitstreamError: the bytes are not an rANS stream of exactly these symbols.
    """
    import numpy as np

    if len(data) < FLUSH_BYTES or len(data) % WORD_BYTES:
        raise BitstreamError(
            f"bitstream's {stream!r} stream is {len(data)} bytes: an rANS stream is a whole number of "
            f"{WORD_BYTES}-byte words, at least {FLUSH_BYTES}",
            hint="the file is damaged or was not written by licsearch",
        )
    idx = np.ascontiguousarray(indexes, dtype=np.int32).reshape(-1)
    out = np.empty(idx.size * run, dtype=np.int32)
    code, where = _kernel()(data, idx, run, tables.cdfs, tables.sizes, tables.offsets, out)
    if code:
        raise BitstreamError(
            f"bitstream's {stream!r} stream is corrupt: {_FAILURES[code]} (at symbol {where} of {out.size})",
            hint="the file is damaged or was not written by this codec; nothing was decoded",
        )
    return out


def encode_with_indexes(symbols: np.ndarray, indexes: np.ndarray, tables: RansTables) -> bytes:
    """Encodes int32 symbols to the bytes CompressAI's ``RansEncoder.encode_with_indexes`` writes for them.

    Args:
        symbols: the integer symbols, in coding order.
        indexes: the CDF index of each symbol.
        tables: the entropy model's CDFs.

    Values outside a CDF's range are escaped as CompressAI does (the sentinel symbol, then 4-bit nibbles of the raw
    value), with its int32/uint32 arithmetic, wrap-around included.
    """
    import numpy as np

    sym = np.ascontiguousarray(symbols).reshape(-1).astype(np.int64, copy=False)
    idx = np.ascontiguousarray(indexes, dtype=np.int32).reshape(-1)
    if sym.size != idx.size:
        raise ValueError(f"{sym.size} symbols but {idx.size} CDF indexes: give one index per symbol")
    if idx.size and (idx.min() < 0 or idx.max() >= len(tables.sizes)):
        raise ValueError(f"CDF indexes must lie in [0, {len(tables.sizes)}): the indexes do not fit these tables")
    # Each symbol emits at most one word, an escape at most 1 + 1 + MAX_BYPASS_NIBBLES more; np.empty commits only
    # the pages the coder writes.
    out = np.empty(sym.size * (3 + MAX_BYPASS_NIBBLES) + FLUSH_BYTES // WORD_BYTES, dtype=np.uint32)
    first = _encoder_kernel()(sym, idx, tables.cdfs, tables.sizes, tables.offsets, out)
    if first < 0:
        raise ValueError("a CDF of a single symbol cannot be coded (CompressAI's coder stores frequencies in 16 bits)")
    return out[first:].astype("<u4", copy=False).tobytes()


def warm_up_in_background() -> threading.Thread:
    """Runs :func:`warm_up` in a daemon thread and returns it.

    numba's first load costs a CLI command 0.6-0.7 s (importing numba, then initialising its CPU target), nearly all
    of it Python holding the GIL; started before work that releases the GIL (ONNX Runtime's transforms, image
    decoding, file I/O), it runs meanwhile. A failure is left for the caller's own first call to raise.
    """
    import threading

    def run() -> None:
        with contextlib.suppress(Exception):
            warm_up()

    thread = threading.Thread(target=run, name="rans-warm-up", daemon=True)
    thread.start()
    return thread


def warm_up() -> None:
    """Compiles (or loads from numba's cache) both kernels now, by coding a few symbols and decoding them back.

    A serving worker calls this while it loads, so that its first request does not pay the 0.3-0.7 s of a JIT
    load (a canary of freshly started workers would otherwise measure it as latency).
    """
    import numpy as np

    tables = RansTables.from_arrays(
        np.array([[0, 1 << (PRECISION - 1), 1 << PRECISION]]), np.array([3]), np.array([0])
    )  # one CDF of two equally likely symbols
    symbols = np.array([0, 1, 5, -3], dtype=np.int32)  # in range, and escaped both ways
    indexes = np.zeros(symbols.size, dtype=np.int32)
    data = encode_with_indexes(symbols, indexes, tables)
    if not np.array_equal(decode_with_indexes(data, indexes, tables, stream="warm-up"), symbols):
        raise RuntimeError("the rANS kernels do not round-trip (numba miscompiled them?)")


@cache
def _encoder_kernel() -> Callable[..., int]:
    """The compiled encoder, compiled (or loaded from numba's cache) on first use (:mod:`.jit`)."""
    return compile_kernel(_encode)


def _encode(sym: Any, indexes: Any, cdfs: Any, sizes: Any, offsets: Any, out: Any) -> int:
    # rans64 (Giesen) run backwards over the symbols, as CompressAI's BufferedRansEncoder.flush pops its buffer, with
    # CompressAI's parameter path (offset, escape, CDF start and frequency) computed per symbol; returns the index of
    # the first word written, or -1 for a frequency that does not fit 16 bits. Every state stays below 2**63.
    low = 1 << 31
    bypass_max = (1 << BYPASS_BITS) - 1
    bypass_freq = 1 << (PRECISION - BYPASS_BITS)
    x = low
    pos = len(out)
    for i in range(len(sym) - 1, -1, -1):
        k = indexes[i]
        max_value = sizes[k] - 2
        value = ((sym[i] - offsets[k] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # int32 wrap-around, as CompressAI
        coded = value
        if value < 0 or value >= max_value:
            raw = ((-2 * value - 1) if value < 0 else (2 * (value - max_value))) & 0xFFFFFFFF
            coded = max_value
            n_bypass = 0
            while (raw >> (n_bypass * BYPASS_BITS)) != 0:
                n_bypass += 1
            # Pushed forwards as: the count in pieces of at most bypass_max, then the nibbles; popped backwards.
            for j in range(n_bypass - 1, -2 - n_bypass // bypass_max, -1):
                if j >= 0:
                    val = (raw >> (j * BYPASS_BITS)) & bypass_max
                elif j == -1:
                    val = n_bypass % bypass_max
                else:
                    val = bypass_max
                if x >= ((low >> PRECISION) << 32) * bypass_freq:
                    pos -= 1
                    out[pos] = x & 0xFFFFFFFF
                    x >>= 32
                x = (x << BYPASS_BITS) | val
        start = cdfs[k, coded]
        f = cdfs[k, coded + 1] - start
        if f >= 1 << PRECISION:
            return -1
        if x >= ((low >> PRECISION) << 32) * f:
            pos -= 1
            out[pos] = x & 0xFFFFFFFF
            x >>= 32
        x = ((x // f) << PRECISION) + (x % f) + start
    pos -= 2
    out[pos] = x & 0xFFFFFFFF
    out[pos + 1] = x >> 32
    return pos


@cache
def _kernel() -> Callable[..., tuple[int, int]]:
    """The decoder: the C extension where it was built (no numba start-up), else the numba kernel.

    ``LICSEARCH_RANS_DECODER=numba`` picks the numba kernel where both are there.
    """
    import os

    if os.environ.get(DECODER_ENV, "").strip().lower() != "numba":
        native = _native_kernel()
        if native is not None:
            return native
    return _numba_kernel()


def decoder_name() -> str:
    """Which decoder :func:`decode_with_indexes` runs: ``"c"`` or ``"numba"``."""
    return "c" if _kernel() is _native_kernel() else "numba"


@cache
def _native_kernel() -> Callable[..., tuple[int, int]] | None:
    """``_rans.decode`` (``_rans.c``, built by ``pip install`` where a C compiler is found), or None.

    Its constants are checked against this module's: a stale build of an older format is not used.
    """
    try:
        from . import _rans  # type: ignore[attr-defined]
    except ImportError:
        return None
    ours = (PRECISION, STATE_LOW, BYPASS_BITS, MAX_BYPASS_NIBBLES)
    if ours != (_rans.PRECISION, _rans.STATE_LOW, _rans.BYPASS_BITS, _rans.MAX_BYPASS_NIBBLES):
        return None
    decode: Callable[..., tuple[int, int]] = _rans.decode
    return decode


@cache
def _numba_kernel() -> Callable[..., tuple[int, int]]:
    """The numba decoder, compiled (or loaded from numba's cache) on first use (:mod:`.jit`); it takes the data as
    bytes, as the C one does."""
    import numpy as np
    from numba.extending import register_jitable

    register_jitable(_renorm)  # the decoder's helper, compiled into it (LLVM inlines it)
    kernel = compile_kernel(_decode)

    def decode(data: bytes, *args: Any) -> tuple[int, int]:
        return kernel(np.frombuffer(data, dtype="<u4").astype(np.int64), *args)

    decode.kernel = kernel  # type: ignore[attr-defined]
    return decode


def _decode(words: Any, indexes: Any, run: int, cdfs: Any, sizes: Any, offsets: Any, out: Any) -> tuple[int, int]:
    # Integer arithmetic on int64 throughout: states stay below 2**63 once the first one is checked.
    low = 1 << 31
    mask = (1 << PRECISION) - 1
    bypass_mask = (1 << BYPASS_BITS) - 1
    n_words = len(words)
    x = words[0] | (words[1] << 32)
    if words[1] >= low or x < low:
        return 2, 0
    pos = 2
    for i in range(len(out)):
        k = indexes[i // run]
        if k < 0 or k >= len(sizes):
            return 3, i
        size = sizes[k]
        cum = x & mask
        lo, hi = 0, size - 1  # the symbol is the last s with cdf[s] <= cum, and cdf[size - 1] = 2**PRECISION > cum
        # Most symbols are value 0 or next to it: probe that symbol and its neighbour before the binary search. The
        # interval keeps cdf[lo] <= cum < cdf[hi] (tables hold cdf[0] = 0 and rise strictly), so s is the same.
        c = min(max(-offsets[k], 0), size - 2)
        if cdfs[k, c] <= cum:
            if cdfs[k, c + 1] > cum:
                lo, hi = c, c + 1
            else:
                lo = c + 1
        elif cdfs[k, c - 1] <= cum:  # c >= 1 here, as cdf[0] = 0 <= cum
            lo, hi = c - 1, c
        else:
            hi = c - 1
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if cdfs[k, mid] <= cum:
                lo = mid
            else:
                hi = mid
        s = lo
        start = cdfs[k, s]
        x = (cdfs[k, s + 1] - start) * (x >> PRECISION) + cum - start
        if x < low:
            x, pos, failure = _renorm(x, pos, words, n_words)
            if failure:
                return failure, i
        value = s
        if s == size - 2:  # the escape sentinel: bypass-coded nibbles follow, first the count of the raw value's
            n_bypass, counting, j, raw = 0, True, 0, 0  # (a nibble of all ones continues it), then those, lowest first
            while counting or j < n_bypass:
                val = x & bypass_mask
                x >>= BYPASS_BITS
                if x < low:
                    x, pos, failure = _renorm(x, pos, words, n_words)
                    if failure:
                        return failure, i
                if counting:
                    n_bypass += val
                    if n_bypass > MAX_BYPASS_NIBBLES:
                        return 4, i
                    counting = val == bypass_mask
                else:
                    raw |= val << (j * BYPASS_BITS)
                    j += 1
            if raw > 0x7FFFFFFF:  # CompressAI's decoder keeps it in an int32
                return 5, i
            value = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + s
        value += offsets[k]
        if value < -0x80000000 or value > 0x7FFFFFFF:
            return 5, i
        out[i] = value
    if pos != n_words:
        return 6, len(out)
    if x != low:
        return 7, len(out)
    return 0, 0


def _renorm(x: int, pos: int, words: Any, n_words: int) -> tuple[int, int, int]:
    """The decoder's renormalisation, for a state that fell below the interval: it takes in the next word.

    Returns the state, the position and a failure: 1 the words ran out, 2 the state is still below the interval
    (no rANS encoder writes that), else 0. The caller tests ``x < STATE_LOW`` itself: the call costs nothing on the
    path that needs no word (calling it on every symbol measured some 5 % slower).
    """
    if pos >= n_words:
        return x, pos, 1
    x = (x << 32) | words[pos]
    return x, pos + 1, 2 if x < STATE_LOW else 0
