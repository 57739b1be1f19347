/* The rANS decoder of licsearch.model.rans in C: the same loop as its numba kernel (rans._decode), statement for
 * statement, so that a command that only decodes (`licsearch get`, a search that shows its hits) does not pay
 * numba's start-up (0.5 s of imports and target set-up before a cached kernel runs).
 *
 * decode(data, indexes, run, cdfs, sizes, offsets, out) -> (failure, symbol)
 *   data: the coded bytes, little-endian 32-bit words (the caller checks a whole number of words, at least two);
 *   indexes: int32, the CDF of each run of `run` symbols; cdfs: int32 (n, L) C-contiguous; sizes, offsets:
 *   int32 (n,); out: int32, written with the symbols. The failure codes are rans._FAILURES' (0: decoded exactly).
 * The input is untrusted: every read is bounds-checked, every loop bounded by the data or MAX_BYPASS_NIBBLES. The
 * GIL is released while the loop runs. The constants are exported so Python can check they are its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PRECISION 16
#define STATE_LOW ((int64_t)1 << 31)
#define BYPASS_BITS 4
#define MAX_BYPASS_NIBBLES 8

static inline int64_t word_at(const unsigned char *p, Py_ssize_t i) {
    const unsigned char *w = p + 4 * i;
    return (int64_t)((uint32_t)w[0] | (uint32_t)w[1] << 8 | (uint32_t)w[2] << 16 | (uint32_t)w[3] << 24);
}

/* Takes in the next word for a state below the interval: 1 the words ran out, 2 still below it, else 0. */
static inline int renorm(int64_t *x, Py_ssize_t *pos, const unsigned char *data, Py_ssize_t n_words) {
    if (*pos >= n_words) return 1;
    *x = (*x << 32) | word_at(data, *pos);
    *pos += 1;
    return *x < STATE_LOW ? 2 : 0;
}

static int decode_loop(const unsigned char *data, Py_ssize_t n_words, const int32_t *indexes, Py_ssize_t run,
                       const int32_t *cdfs, Py_ssize_t row, const int32_t *sizes, const int32_t *offsets,
                       Py_ssize_t n_cdfs, int32_t *out, Py_ssize_t n_out, Py_ssize_t *where) {
    const int64_t mask = ((int64_t)1 << PRECISION) - 1;
    const int64_t bypass_mask = ((int64_t)1 << BYPASS_BITS) - 1;
    int64_t w0 = word_at(data, 0), w1 = word_at(data, 1);
    int64_t x = w0 | (w1 << 32);
    Py_ssize_t pos = 2;
    int failure;
    *where = 0;
    if (w1 >= STATE_LOW || x < STATE_LOW) return 2;
    for (Py_ssize_t i = 0; i < n_out; i++) {
        *where = i;
        int64_t k = indexes[i / run];
        if (k < 0 || k >= n_cdfs) return 3;
        const int32_t *cdf = cdfs + k * row;
        int64_t size = sizes[k];
        int64_t cum = x & mask;
        int64_t lo = 0, hi = size - 1;
        /* Probe the symbol of value 0 and its neighbours before the binary search, as the numba kernel does. */
        int64_t c = -(int64_t)offsets[k];
        if (c < 0) c = 0;
        if (c > size - 2) c = size - 2;
        if (cdf[c] <= cum) {
            if (cdf[c + 1] > cum) {
                lo = c;
                hi = c + 1;
            } else {
                lo = c + 1;
            }
        } else if (cdf[c - 1] <= cum) { /* c >= 1 here, as cdf[0] = 0 <= cum */
            lo = c - 1;
            hi = c;
        } else {
            hi = c - 1;
        }
        while (hi - lo > 1) {
            int64_t mid = (lo + hi) >> 1;
            if (cdf[mid] <= cum)
                lo = mid;
            else
                hi = mid;
        }
        int64_t s = lo;
        int64_t start = cdf[s];
        x = (cdf[s + 1] - start) * (x >> PRECISION) + cum - start;
        if (x < STATE_LOW && (failure = renorm(&x, &pos, data, n_words))) return failure;
        int64_t value = s;
        if (s == size - 2) { /* the escape sentinel: a nibble count (all ones continues it), then the nibbles */
            int64_t n_bypass = 0, j = 0, raw = 0;
            int counting = 1;
            while (counting || j < n_bypass) {
                int64_t val = x & bypass_mask;
                x >>= BYPASS_BITS;
                if (x < STATE_LOW && (failure = renorm(&x, &pos, data, n_words))) return failure;
                if (counting) {
                    n_bypass += val;
                    if (n_bypass > MAX_BYPASS_NIBBLES) return 4;
                    counting = val == bypass_mask;
                } else {
                    raw |= val << (j * BYPASS_BITS);
                    j++;
                }
            }
            if (raw > 0x7FFFFFFF) return 5;
            value = (raw & 1) ? -(raw >> 1) - 1 : (raw >> 1) + s;
        }
        value += offsets[k];
        if (value < -(int64_t)0x80000000 || value > 0x7FFFFFFF) return 5;
        out[i] = (int32_t)value;
    }
    *where = n_out;
    if (pos != n_words) return 6;
    if (x != STATE_LOW) return 7;
    *where = 0;
    return 0;
}

static int int32_view(PyObject *obj, Py_buffer *view, int writable, const char *name, int ndim) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    if (view->itemsize != 4 || !(strcmp(f, "i") == 0 || strcmp(f, "l") == 0) || view->ndim != ndim) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous int32 array of %d dimension(s)", name, ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *rans_decode(PyObject *self, PyObject *args) {
    PyObject *o_data, *o_idx, *o_cdfs, *o_sizes, *o_offsets, *o_out;
    Py_ssize_t run;
    if (!PyArg_ParseTuple(args, "OOnOOOO", &o_data, &o_idx, &run, &o_cdfs, &o_sizes, &o_offsets, &o_out)) return NULL;
    Py_buffer data, idx, cdfs, sizes, offsets, out;
    int got = 0, failure = 0;
    Py_ssize_t where = 0;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(o_data, &data, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    got = 1;
    if (int32_view(o_idx, &idx, 0, "indexes", 1) < 0) goto done;
    got = 2;
    if (int32_view(o_cdfs, &cdfs, 0, "cdfs", 2) < 0) goto done;
    got = 3;
    if (int32_view(o_sizes, &sizes, 0, "sizes", 1) < 0) goto done;
    got = 4;
    if (int32_view(o_offsets, &offsets, 0, "offsets", 1) < 0) goto done;
    got = 5;
    if (int32_view(o_out, &out, 1, "out", 1) < 0) goto done;
    got = 6;
    Py_ssize_t n_cdfs = cdfs.shape[0], row = cdfs.shape[1], n_out = out.shape[0], n_idx = idx.shape[0];
    if (data.len < 8 || data.len % 4 || run < 1 || sizes.shape[0] != n_cdfs || offsets.shape[0] != n_cdfs ||
        n_cdfs < 1 || n_out > n_idx * run) {
        PyErr_SetString(PyExc_ValueError, "decode: inconsistent arguments");
        goto done;
    }
    /* The tables were checked by RansTables.from_arrays (2 <= size <= row, cdf[0] = 0, strictly rising to
     * 2**PRECISION); check the sizes again here, since every CDF read below relies on them. */
    const int32_t *sz = (const int32_t *)sizes.buf;
    for (Py_ssize_t k = 0; k < n_cdfs; k++) {
        if (sz[k] < 2 || sz[k] > row) {
            PyErr_SetString(PyExc_ValueError, "decode: a CDF size is outside its table row");
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    failure = decode_loop((const unsigned char *)data.buf, data.len / 4, (const int32_t *)idx.buf, run,
                          (const int32_t *)cdfs.buf, row, sz, (const int32_t *)offsets.buf, n_cdfs,
                          (int32_t *)out.buf, n_out, &where);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(in)", failure, where);
done:
    if (got >= 6) PyBuffer_Release(&out);
    if (got >= 5) PyBuffer_Release(&offsets);
    if (got >= 4) PyBuffer_Release(&sizes);
    if (got >= 3) PyBuffer_Release(&cdfs);
    if (got >= 2) PyBuffer_Release(&idx);
    if (got >= 1) PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", rans_decode, METH_VARARGS, "decode(data, indexes, run, cdfs, sizes, offsets, out) -> (failure, symbol)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rans", "licsearch's rANS decoder in C", -1, methods};

PyMODINIT_FUNC PyInit__rans(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "PRECISION", PRECISION) < 0 ||
        PyModule_AddIntConstant(m, "STATE_LOW", (long)STATE_LOW) < 0 ||
        PyModule_AddIntConstant(m, "BYPASS_BITS", BYPASS_BITS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_BYPASS_NIBBLES", MAX_BYPASS_NIBBLES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
