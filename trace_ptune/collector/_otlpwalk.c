/*
 * Native walk over an OTLP ExportTraceServiceRequest (protobuf wire format).
 *
 * The collector's Python converter (trace_ptune/collector/otlp.py, TraceConverter) spends most
 * of its time touching protobuf fields from Python. This module does the same walk in C: it
 * reads the wire format directly, validates ids and UTF-8 like the protobuf parser does, builds
 * the span columns (hex ids, attribute and event JSON, ISO event timestamps) and the span-event
 * evaluation rows, and calls back into Python only for what is cached there or rare: attribute
 * fragments on a cache miss, new event shapes, resources, links, complex evaluation rows and
 * adapter records. Its output is identical to the Python walk, which stays the fallback when
 * this extension is not built (tests compare the two on random requests).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <limits.h>

/* ------------------------------------------------------------------ wire format */

typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
} Slice;

typedef struct {
    Slice *v;
    Py_ssize_t n, cap;
} SliceVec;

static int vec_push(SliceVec *vec, const uint8_t *p, Py_ssize_t n) {
    if (vec->n == vec->cap) {
        Py_ssize_t cap = vec->cap ? vec->cap * 2 : 32;
        Slice *v = PyMem_Realloc(vec->v, (size_t)cap * sizeof(Slice));
        if (!v) {
            PyErr_NoMemory();
            return -1;
        }
        vec->v = v;
        vec->cap = cap;
    }
    vec->v[vec->n].p = p;
    vec->v[vec->n].n = n;
    vec->n++;
    return 0;
}

static int bad(const char *what) {
    PyErr_Format(PyExc_ValueError, "%s", what);
    return -1;
}

static int read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    if (p < end && !(*p & 0x80)) { /* one byte: tags, lengths and small values */
        *out = *p;
        *pp = p + 1;
        return 0;
    }
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (p >= end) return bad("truncated varint");
        uint8_t b = *p++;
        if (shift == 63 && b > 1) return bad("varint overflows 64 bits");
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return bad("varint longer than 10 bytes");
}

/* A field's tag; 1 on a clean end of the message. */
static int read_tag(const uint8_t **pp, const uint8_t *end, uint32_t *field, int *wt) {
    if (*pp >= end) return 1;
    uint64_t tag;
    if (read_varint(pp, end, &tag) < 0) return -1;
    if (tag >> 32) return bad("field tag out of range");
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    if (*field == 0) return bad("field number 0");
    return 0;
}

static int read_len(const uint8_t **pp, const uint8_t *end, Slice *out) {
    uint64_t n;
    if (read_varint(pp, end, &n) < 0) return -1;
    if (n > (uint64_t)(end - *pp)) return bad("length-delimited field runs past its message");
    out->p = *pp;
    out->n = (Py_ssize_t)n;
    *pp += n;
    return 0;
}

static int read_fixed64(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    if (end - *pp < 8) return bad("truncated fixed64");
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | (*pp)[i];
    *pp += 8;
    *out = v;
    return 0;
}

static int skip_field(const uint8_t **pp, const uint8_t *end, uint32_t field, int wt, int depth) {
    uint64_t v;
    Slice s;
    switch (wt) {
    case 0:
        return read_varint(pp, end, &v);
    case 1:
        if (end - *pp < 8) return bad("truncated fixed64");
        *pp += 8;
        return 0;
    case 2:
        return read_len(pp, end, &s);
    case 5:
        if (end - *pp < 4) return bad("truncated fixed32");
        *pp += 4;
        return 0;
    case 3: { /* a group: skip fields up to its end-group tag */
        if (depth > 64) return bad("groups nested too deeply");
        for (;;) {
            uint32_t f;
            int w;
            int r = read_tag(pp, end, &f, &w);
            if (r < 0) return -1;
            if (r > 0) return bad("unterminated group");
            if (w == 4) {
                if (f != field) return bad("mismatched end-group tag");
                return 0;
            }
            if (skip_field(pp, end, f, w, depth + 1) < 0) return -1;
        }
    }
    default:
        return bad("invalid wire type");
    }
}

/* ------------------------------------------------------------------ python helpers */

static PyObject *decode_str(Slice s) {
    PyObject *o = PyUnicode_DecodeUTF8((const char *)s.p, s.n, "strict");
    if (!o && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "a string field is not valid UTF-8");
    }
    return o;
}

static PyObject *hex_str(Slice s) {
    static const char digits[] = "0123456789abcdef";
    PyObject *o = PyUnicode_New(s.n * 2, 127);
    if (!o) return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(o);
    for (Py_ssize_t i = 0; i < s.n; i++) {
        d[2 * i] = (Py_UCS1)digits[s.p[i] >> 4];
        d[2 * i + 1] = (Py_UCS1)digits[s.p[i] & 15];
    }
    return o;
}

static int all_zero(Slice s) {
    for (Py_ssize_t i = 0; i < s.n; i++)
        if (s.p[i]) return 0;
    return 1;
}

typedef struct {
    char *b;
    Py_ssize_t n, cap;
} Buf;

static int buf_grow(Buf *buf, Py_ssize_t n);

static inline int buf_put(Buf *buf, const char *s, Py_ssize_t n) {
    if (buf->n + n > buf->cap && buf_grow(buf, n) < 0) return -1;
    memcpy(buf->b + buf->n, s, (size_t)n);
    buf->n += n;
    return 0;
}

static int buf_grow(Buf *buf, Py_ssize_t n) {
    Py_ssize_t cap = buf->cap ? buf->cap : 1024;
    while (cap < buf->n + n) cap *= 2;
    char *b = PyMem_Realloc(buf->b, (size_t)cap);
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    buf->b = b;
    buf->cap = cap;
    return 0;
}

static int buf_put_str(Buf *buf, PyObject *str) {
    if (!PyUnicode_Check(str)) {
        PyErr_SetString(PyExc_TypeError, "expected a str from the attribute cache");
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(str, &n);
    if (!s) return -1;
    return buf_put(buf, s, n);
}

/* ------------------------------------------------------------------ Arrow columns
 * Span columns are built as Arrow buffers (UTF-8 data + int32 offsets, or int64 values, and a
 * validity bitmap), which Python wraps without copying (pyarrow.Array.from_buffers). */

enum { COL_STR = 0, COL_I64 = 1, COL_F64 = 2 };

typedef struct {
    int kind;
    Buf data;
    int32_t *offsets; /* COL_STR: n + 1 entries */
    uint8_t *valid;   /* one byte per row, allocated at the first null */
    Py_ssize_t n, cap, nulls;
} Column;

static int col_grow(Column *c) {
    if (c->n < c->cap) return 0;
    Py_ssize_t cap = c->cap ? c->cap * 2 : 1024;
    if (c->kind == COL_STR) {
        int32_t *o = PyMem_Realloc(c->offsets, (size_t)(cap + 1) * sizeof(int32_t));
        if (!o) goto nomem;
        if (!c->offsets) o[0] = 0;
        c->offsets = o;
    }
    if (c->valid) {
        uint8_t *v = PyMem_Realloc(c->valid, (size_t)cap);
        if (!v) goto nomem;
        c->valid = v;
    }
    c->cap = cap;
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

/* Ends row n of a string column: its value is what was appended to c->data since row n - 1. */
static int col_end(Column *c) {
    if (c->data.n > INT32_MAX) return bad("a request's column exceeds 2 GiB");
    c->offsets[c->n + 1] = (int32_t)c->data.n;
    if (c->valid) c->valid[c->n] = 1;
    c->n++;
    return 0;
}

static int col_str(Column *c, const void *p, Py_ssize_t n) {
    if (col_grow(c) < 0 || buf_put(&c->data, p, n) < 0) return -1;
    return col_end(c);
}

static int col_null(Column *c) {
    if (col_grow(c) < 0) return -1;
    if (!c->valid) {
        c->valid = PyMem_Malloc((size_t)c->cap);
        if (!c->valid) {
            PyErr_NoMemory();
            return -1;
        }
        memset(c->valid, 1, (size_t)c->n);
    }
    c->valid[c->n] = 0;
    if (c->kind == COL_STR) {
        c->offsets[c->n + 1] = c->offsets[c->n];
    } else {
        int64_t zero = 0;
        if (buf_put(&c->data, (const char *)&zero, 8) < 0) return -1;
    }
    c->n++;
    c->nulls++;
    return 0;
}

static int col_i64(Column *c, int64_t v) {
    if (col_grow(c) < 0 || buf_put(&c->data, (const char *)&v, 8) < 0) return -1;
    if (c->valid) c->valid[c->n] = 1;
    c->n++;
    return 0;
}

/* A value from Python: None, a str (string column), an int (int64) or a float (float64). */
static int col_obj(Column *c, PyObject *o) {
    if (!o || o == Py_None) return col_null(c);
    if (c->kind == COL_F64) {
        double d = PyFloat_AsDouble(o);
        if (d == -1.0 && PyErr_Occurred()) return -1;
        if (col_grow(c) < 0 || buf_put(&c->data, (const char *)&d, 8) < 0) return -1;
        if (c->valid) c->valid[c->n] = 1;
        c->n++;
        return 0;
    }
    if (c->kind == COL_STR) {
        if (!PyUnicode_Check(o)) {
            PyErr_SetString(PyExc_TypeError, "a promoted string column got a non-str value");
            return -1;
        }
        if (col_grow(c) < 0 || buf_put_str(&c->data, o) < 0) return -1;
        return col_end(c);
    }
    if (!PyLong_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "a promoted integer column got a non-int value");
        return -1;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    return col_i64(c, v);
}

/* (kind, n, data, offsets | None, validity bitmap | None, null count) of a finished column. */
static PyObject *col_take(Column *c) {
    PyObject *data = PyBytes_FromStringAndSize(c->data.b ? c->data.b : "", c->data.n);
    PyObject *offsets = NULL, *valid = NULL;
    if (!data) return NULL;
    if (c->kind == COL_STR) {
        static const int32_t zero = 0;
        offsets = PyBytes_FromStringAndSize(c->offsets ? (const char *)c->offsets : (const char *)&zero,
                                            (c->n + 1) * (Py_ssize_t)sizeof(int32_t));
    } else {
        offsets = Py_NewRef(Py_None);
    }
    if (c->nulls) {
        Py_ssize_t nb = (c->n + 7) / 8;
        valid = PyBytes_FromStringAndSize(NULL, nb);
        if (valid) {
            uint8_t *bits = (uint8_t *)PyBytes_AS_STRING(valid);
            memset(bits, 0, (size_t)nb);
            for (Py_ssize_t i = 0; i < c->n; i++)
                if (c->valid[i]) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
        }
    } else {
        valid = Py_NewRef(Py_None);
    }
    PyObject *out = (offsets && valid) ? Py_BuildValue("(inOOOn)", c->kind, c->n, data, offsets, valid, c->nulls)
                                       : NULL;
    Py_DECREF(data);
    Py_XDECREF(offsets);
    Py_XDECREF(valid);
    return out;
}

/* A list of col_take() of n columns. */
static PyObject *cols_take(Column *c, Py_ssize_t n) {
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *col = col_take(&c[i]);
        if (!col) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, col);
    }
    return out;
}

static void col_free(Column *c) {
    PyMem_Free(c->data.b);
    PyMem_Free(c->offsets);
    PyMem_Free(c->valid);
    memset(c, 0, sizeof(*c));
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as protobuf requires. */
static int utf8_ok(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i + 8 <= n) { /* ASCII, 8 bytes at a time */
        uint64_t x;
        memcpy(&x, s + i, 8);
        if (x & 0x8080808080808080ULL) break;
        i += 8;
    }
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n) return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

static int col_utf8(Column *c, Slice s) {
    if (!utf8_ok(s.p, s.n)) return bad("a string field is not valid UTF-8");
    return col_str(c, s.p, s.n);
}

static int col_hex(Column *c, Slice s) {
    static const char digits[] = "0123456789abcdef";
    char tmp[64];
    if (s.n > 32) return bad("id too long");
    for (Py_ssize_t i = 0; i < s.n; i++) {
        tmp[2 * i] = digits[s.p[i] >> 4];
        tmp[2 * i + 1] = digits[s.p[i] & 15];
    }
    return col_str(c, tmp, s.n * 2);
}

static void two(char *out, int v) {
    out[0] = (char)('0' + v / 10);
    out[1] = (char)('0' + v % 10);
}

/* Seconds since the epoch as "YYYY-MM-DDTHH:MM:SS" (proleptic Gregorian, UTC). */
static int iso_seconds(uint64_t sec, char *out /* 32 bytes */) {
    uint64_t days = sec / 86400, rem = sec % 86400;
    /* civil_from_days (Howard Hinnant), days >= 0 */
    int64_t z = (int64_t)days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2) y++;
    if (y > 9999) return bad("event timestamp is past year 9999");
    two(out, (int)(y / 100));
    two(out + 2, (int)(y % 100));
    out[4] = '-';
    two(out + 5, (int)m);
    out[7] = '-';
    two(out + 8, (int)d);
    out[10] = 'T';
    two(out + 11, (int)(rem / 3600));
    out[13] = ':';
    two(out + 14, (int)(rem / 60 % 60));
    out[16] = ':';
    two(out + 17, (int)(rem % 60));
    out[19] = 0;
    return 0;
}

/* ------------------------------------------------------------------ scalar attributes */

/* A JSON string as Python's json module writes it with ensure_ascii=False. */
static int json_str(Buf *b, const uint8_t *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t start = 0, i = 0;
    if (buf_put(b, "\"", 1) < 0) return -1;
    while (i + 8 <= n) { /* skip 8 plain bytes at a time (no control byte, quote or backslash) */
        uint64_t x;
        memcpy(&x, s + i, 8);
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        uint64_t q = x ^ (ones * '"'), bs = x ^ (ones * '\\');
        uint64_t special = ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((bs - ones) & ~bs);
        if (special & highs) break;
        i += 8;
    }
    for (; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        int len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        }
        if (buf_put(b, (const char *)s + start, i - start) < 0 || buf_put(b, esc, len) < 0) return -1;
        start = i + 1;
    }
    if (buf_put(b, (const char *)s + start, n - start) < 0) return -1;
    return buf_put(b, "\"", 1);
}

/* Decimal digits of v (as Python's int.__repr__), written to out (at least 21 bytes); the length. */
static int fmt_i64(char *out, int64_t v) {
    char tmp[24];
    int n = 0, len = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) out[len++] = '-';
    while (n) out[len++] = tmp[--n];
    return len;
}

/* A float as Python's json module writes it (repr; NaN, Infinity, -Infinity). */
static int json_double(Buf *b, double d) {
    if (d != d) return buf_put(b, "NaN", 3);
    if (d == Py_HUGE_VAL) return buf_put(b, "Infinity", 8);
    if (d == -Py_HUGE_VAL) return buf_put(b, "-Infinity", 9);
    char *r = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!r) return -1;
    int rc = buf_put(b, r, (Py_ssize_t)strlen(r));
    PyMem_Free(r);
    return rc;
}

/* ------------------------------------------------------------------ the walk */

#define N_ROW 13  /* per-span columns before the promoted values */
#define N_EVAL 18 /* columns of the evaluations table */

typedef struct {
    /* callbacks and caches (borrowed) */
    PyObject *frag, *prom, *kv, *miss, *events, *event_fn, *links_fn, *eval_row_fn, *note_fn;
    PyObject *adapters, *complex_marker;
    Py_ssize_t n_pv, n_out_pv, eval_name_idx;
    const char *prom_key[64]; /* promoted attribute keys (UTF-8) */
    Py_ssize_t prom_len[64];
    const char *prom_kind;    /* 's' or 'i' per promoted key */
    uint64_t iso_sec;         /* the last event second formatted, and its text */
    char iso[32];
    int iso_ok;
    /* output (owned) */
    Column cols[N_ROW + 64]; /* N_ROW + n_out_pv span columns */
    Column ecols[N_EVAL]; /* the evaluations table's columns */
    PyObject *eval_spans;
    PyObject *seen; /* adapter hash -> identity tuple */
    Py_ssize_t n_rows, rejected;
    PyObject *bad_reason;
    /* scratch */
    SliceVec attrs, events_v, links, eattrs;
} Walk;

enum { V_NONE = 0, V_STR, V_BOOL, V_INT, V_DOUBLE, V_OTHER };

/* A serialized KeyValue with a scalar value, written as its JSON fragment ("key":value) to
 * out, with its promoted value set in pv when its key is promoted and the value has the
 * column's type. 1: done; 0: not handled here (arrays, maps, bytes, a promoted key with a
 * value of another type): the Python cache converts it; -1: error. */
static int kv_scalar(Walk *w, Slice raw, Buf *out, PyObject **pv) {
    const uint8_t *p = raw.p, *end = raw.p + raw.n;
    uint32_t f;
    int wt, r, vt = V_NONE;
    Slice key = {(const uint8_t *)"", 0}, sval = {NULL, 0};
    uint64_t u = 0;
    while ((r = read_tag(&p, end, &f, &wt)) == 0) {
        Slice x;
        if (f == 1 && wt == 2) {
            if (read_len(&p, end, &key) < 0) return -1;
        } else if (f == 2 && wt == 2) { /* AnyValue: repeated occurrences merge (last value wins) */
            if (read_len(&p, end, &x) < 0) return -1;
            const uint8_t *q = x.p, *qend = x.p + x.n;
            uint32_t g;
            int gwt, r2;
            while ((r2 = read_tag(&q, qend, &g, &gwt)) == 0) {
                if (g == 1 && gwt == 2) {
                    if (read_len(&q, qend, &sval) < 0) return -1;
                    vt = V_STR;
                } else if ((g == 2 || g == 3) && gwt == 0) {
                    if (read_varint(&q, qend, &u) < 0) return -1;
                    vt = g == 2 ? V_BOOL : V_INT;
                } else if (g == 4 && gwt == 1) {
                    if (read_fixed64(&q, qend, &u) < 0) return -1;
                    vt = V_DOUBLE;
                } else if (g >= 5 && g <= 7 && gwt == 2) {
                    return 0;
                } else if (skip_field(&q, qend, g, gwt, 0) < 0) {
                    return -1;
                }
            }
            if (r2 < 0) return -1;
        } else if (skip_field(&p, end, f, wt, 0) < 0) {
            return -1;
        }
    }
    if (r < 0) return -1;
    if (!utf8_ok(key.p, key.n) || (vt == V_STR && !utf8_ok(sval.p, sval.n)))
        return bad("an attribute key or value is not valid UTF-8");
    Py_ssize_t idx = -1;
    for (Py_ssize_t i = 0; i < w->n_pv; i++) {
        if (w->prom_len[i] == key.n && memcmp(w->prom_key[i], key.p, (size_t)key.n) == 0) {
            idx = i;
            break;
        }
    }
    PyObject *val = NULL;
    if (idx >= 0 && vt != V_NONE) {
        if (w->prom_kind[idx] == 's' && vt == V_STR) val = PyUnicode_DecodeUTF8((const char *)sval.p, sval.n, NULL);
        else if (w->prom_kind[idx] == 'i' && vt == V_INT) val = PyLong_FromLongLong((long long)(int64_t)u);
        else return 0;
        if (!val) return -1;
    }
    if (json_str(out, key.p, key.n) < 0 || buf_put(out, ":", 1) < 0) goto fail;
    int rc;
    char num[32];
    double d;
    switch (vt) {
    case V_STR: rc = json_str(out, sval.p, sval.n); break;
    case V_BOOL: rc = u ? buf_put(out, "true", 4) : buf_put(out, "false", 5); break;
    case V_INT: rc = buf_put(out, num, fmt_i64(num, (int64_t)u)); break;
    case V_DOUBLE:
        memcpy(&d, &u, sizeof(d));
        rc = json_double(out, d);
        break;
    default: rc = buf_put(out, "null", 4);
    }
    if (rc < 0) goto fail;
    if (val) Py_XSETREF(pv[idx], val);
    return 1;
fail:
    Py_XDECREF(val);
    return -1;
}


static PyObject *S_SPAN, *S_SPAN_EVENT, *S_EMPTY, *S_EMPTY_OBJ, *S_UNSPECIFIED, *S_UNSET;
static PyObject *KINDS[6], *STATUSES[3];

/* cache[key], or fill(key) on a miss (which fills the cache); a new reference. */
static PyObject *cached(PyObject *cache, PyObject *key, PyObject *fill) {
    PyObject *v = PyDict_GetItemWithError(cache, key);
    if (v) return Py_NewRef(v);
    return PyErr_Occurred() ? NULL : PyObject_CallOneArg(fill, key);
}

/* The fragment for one serialized KeyValue (new reference), and its promoted (index, value). */
static PyObject *frag_of(Walk *w, PyObject *raw, PyObject **pv) {
    PyObject *f = cached(w->frag, raw, w->miss);
    if (!f) return NULL;
    if (pv) {
        PyObject *pr = PyDict_GetItemWithError(w->prom, raw);
        if (pr) {
            if (!PyTuple_Check(pr) || PyTuple_GET_SIZE(pr) != 2) {
                Py_DECREF(f);
                PyErr_SetString(PyExc_TypeError, "bad promoted-attribute cache entry");
                return NULL;
            }
            Py_ssize_t idx = PyLong_AsSsize_t(PyTuple_GET_ITEM(pr, 0));
            if (idx < 0 || idx >= w->n_pv) {
                Py_DECREF(f);
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "promoted index out of range");
                return NULL;
            }
            PyObject *val = PyTuple_GET_ITEM(pr, 1);
            Py_INCREF(val);
            Py_XSETREF(pv[idx], val);
        } else if (PyErr_Occurred()) {
            Py_DECREF(f);
            return NULL;
        }
    }
    return f;
}

/* dict(key -> value) of serialized KeyValues, from the cache (filled on a miss). */
static PyObject *kv_dict(Walk *w, SliceVec *raws) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (Py_ssize_t i = 0; i < raws->n; i++) {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)raws->v[i].p, raws->v[i].n);
        if (!raw) goto fail;
        PyObject *kv = PyDict_GetItemWithError(w->kv, raw);
        if (!kv) {
            if (PyErr_Occurred()) {
                Py_DECREF(raw);
                goto fail;
            }
            PyObject *f = PyObject_CallOneArg(w->miss, raw);
            Py_XDECREF(f);
            kv = f ? PyDict_GetItemWithError(w->kv, raw) : NULL;
            if (!kv) {
                if (f && !PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "attribute cache lost an entry");
                Py_DECREF(raw);
                goto fail;
            }
        }
        Py_DECREF(raw);
        if (!PyTuple_Check(kv) || PyTuple_GET_SIZE(kv) != 2) {
            PyErr_SetString(PyExc_TypeError, "bad key-value cache entry");
            goto fail;
        }
        if (PyDict_SetItem(d, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1)) < 0) goto fail;
    }
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *pv_list(Walk *w, PyObject **pv) {
    PyObject *l = PyList_New(w->n_pv);
    if (!l) return NULL;
    for (Py_ssize_t i = 0; i < w->n_pv; i++) {
        PyObject *v = pv[i] ? pv[i] : Py_None;
        Py_INCREF(v);
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

static PyObject *pvv(PyObject **pv, Py_ssize_t i) { return pv[i] ? pv[i] : Py_None; }

typedef struct {
    Slice tid, sid, psid, trace_state, name, status_msg;
    int32_t kind, status_code;
    uint64_t start, end;
} SpanView;

static int parse_status(Slice s, SpanView *v) {
    const uint8_t *p = s.p, *end = s.p + s.n;
    uint32_t f;
    int wt, r;
    while ((r = read_tag(&p, end, &f, &wt)) == 0) {
        uint64_t x;
        if (f == 2 && wt == 2) {
            if (read_len(&p, end, &v->status_msg) < 0) return -1;
        } else if (f == 3 && wt == 0) {
            if (read_varint(&p, end, &x) < 0) return -1;
            v->status_code = (int32_t)(uint32_t)x;
        } else if (skip_field(&p, end, f, wt, 0) < 0) {
            return -1;
        }
    }
    return r < 0 ? -1 : 0;
}

static int parse_span(Walk *w, Slice s, SpanView *v) {
    const uint8_t *p = s.p, *end = s.p + s.n;
    uint32_t f;
    int wt, r;
    memset(v, 0, sizeof(*v));
    w->attrs.n = w->events_v.n = w->links.n = 0;
    while ((r = read_tag(&p, end, &f, &wt)) == 0) {
        Slice x;
        uint64_t u;
        if (wt == 2 && (f <= 5 || f == 9 || f == 11 || f == 13 || f == 15)) {
            if (read_len(&p, end, &x) < 0) return -1;
            switch (f) {
            case 1: v->tid = x; break;
            case 2: v->sid = x; break;
            case 3: v->trace_state = x; break;
            case 4: v->psid = x; break;
            case 5: v->name = x; break;
            case 9: if (vec_push(&w->attrs, x.p, x.n) < 0) return -1; break;
            case 11: if (vec_push(&w->events_v, x.p, x.n) < 0) return -1; break;
            case 13: if (vec_push(&w->links, x.p, x.n) < 0) return -1; break;
            case 15: if (parse_status(x, v) < 0) return -1; break;
            }
        } else if (f == 6 && wt == 0) {
            if (read_varint(&p, end, &u) < 0) return -1;
            v->kind = (int32_t)(uint32_t)u;
        } else if ((f == 7 || f == 8) && wt == 1) {
            if (read_fixed64(&p, end, f == 7 ? &v->start : &v->end) < 0) return -1;
        } else if (skip_field(&p, end, f, wt, 0) < 0) {
            return -1;
        }
    }
    return r < 0 ? -1 : 0;
}

static int check_str(Slice s) {
    PyObject *o = decode_str(s);
    Py_XDECREF(o);
    return o ? 0 : -1;
}

/* UTF-8 of a span's strings and its events' names (for spans rejected before their walk). */
static int check_strings(Walk *w, SpanView *v) {
    if (check_str(v->trace_state) < 0 || check_str(v->name) < 0 || check_str(v->status_msg) < 0) return -1;
    for (Py_ssize_t i = 0; i < w->events_v.n; i++) {
        const uint8_t *p = w->events_v.v[i].p, *end = p + w->events_v.v[i].n;
        uint32_t f;
        int wt, r;
        while ((r = read_tag(&p, end, &f, &wt)) == 0) {
            Slice x;
            if ((f == 2 || f == 3) && wt == 2) {
                if (read_len(&p, end, &x) < 0 || (f == 2 && check_str(x) < 0)) return -1;
            } else if (skip_field(&p, end, f, wt, 0) < 0) {
                return -1;
            }
        }
        if (r < 0) return -1;
    }
    return 0;
}

static int reject(Walk *w, Slice name, const char *what) {
    PyObject *n = decode_str(name);
    if (!n) return -1;
    PyObject *msg = PyUnicode_FromFormat("span %R has %s", n, what);
    Py_DECREF(n);
    if (!msg) return -1;
    Py_XSETREF(w->bad_reason, msg);
    w->rejected++;
    return 0;
}

/* An evaluations row built in Python (a tuple in EVAL_COLUMNS order) into the columns. */
static int eval_row_tuple(Walk *w, PyObject *row) {
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != N_EVAL) {
        PyErr_SetString(PyExc_TypeError, "an evaluation row must be a tuple of the table's columns");
        return -1;
    }
    for (Py_ssize_t i = 0; i < N_EVAL; i++)
        if (col_obj(&w->ecols[i], PyTuple_GET_ITEM(row, i)) < 0) return -1;
    return 0;
}

/* The span's hex ids as str (made once, when an evaluation row needs them). */
static int span_ids(SpanView *v, PyObject **trace_id, PyObject **span_id) {
    if (!*trace_id && !(*trace_id = hex_str(v->tid))) return -1;
    if (!*span_id && !(*span_id = hex_str(v->sid))) return -1;
    return 0;
}

/* One event: appends its JSON to the Events column's open row and, for an evaluation result,
 * its row to the evaluation columns. */
static int walk_event(Walk *w, Slice ev, SpanView *v, PyObject **trace_id, PyObject **span_id, PyObject **pv,
                      PyObject *service) {
    Buf *out = &w->cols[11].data;
    const uint8_t *p = ev.p, *end = ev.p + ev.n;
    uint32_t f;
    int wt, r;
    uint64_t et = 0;
    Slice name = {(const uint8_t *)"", 0};
    w->eattrs.n = 0;
    while ((r = read_tag(&p, end, &f, &wt)) == 0) {
        Slice x;
        if (f == 1 && wt == 1) {
            if (read_fixed64(&p, end, &et) < 0) return -1;
        } else if ((f == 2 || f == 3) && wt == 2) {
            if (read_len(&p, end, &x) < 0) return -1;
            if (f == 2) name = x;
            else if (vec_push(&w->eattrs, x.p, x.n) < 0) return -1;
        } else if (skip_field(&p, end, f, wt, 0) < 0) {
            return -1;
        }
    }
    if (r < 0) return -1;

    int rc = -1;
    PyObject *key = NULL, *raws = NULL, *ent = NULL, *name_s = decode_str(name);
    if (!name_s) return -1;
    raws = PyTuple_New(w->eattrs.n);
    if (!raws) goto done;
    for (Py_ssize_t i = 0; i < w->eattrs.n; i++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)w->eattrs.v[i].p, w->eattrs.v[i].n);
        if (!b) goto done;
        PyTuple_SET_ITEM(raws, i, b);
    }
    key = PyTuple_Pack(2, name_s, raws);
    if (!key) goto done;
    ent = cached(w->events, key, w->event_fn);
    if (!ent) goto done;
    if (!PyTuple_Check(ent) || PyTuple_GET_SIZE(ent) != 2) {
        PyErr_SetString(PyExc_TypeError, "bad event cache entry");
        goto done;
    }
    /* {"Timestamp":"<iso>[.ffffff]Z<tail> */
    uint64_t eus = et / 1000, sec = eus / 1000000, rem = eus % 1000000;
    char iso[48];
    if (sec != w->iso_sec || !w->iso_ok) { /* events of one batch mostly share their second */
        if (iso_seconds(sec, w->iso) < 0) goto done;
        w->iso_sec = sec;
        w->iso_ok = 1;
    }
    memcpy(iso, w->iso, 19);
    int len = 19;
    if (rem) {
        iso[len++] = '.';
        for (int k = 5; k >= 0; k--, rem /= 10) iso[len + k] = (char)('0' + rem % 10);
        len += 6;
    }
    iso[len++] = 'Z';
    if (buf_put(out, "{\"Timestamp\":\"", 14) < 0 || buf_put(out, iso, len) < 0 ||
        buf_put_str(out, PyTuple_GET_ITEM(ent, 0)) < 0)
        goto done;

    PyObject *score = PyTuple_GET_ITEM(ent, 1);
    if (score != Py_None) {
        uint64_t ts = (et ? et : v->end) / 1000;
        if (score == w->complex_marker) { /* extra attributes: the Python row builder */
            if (span_ids(v, trace_id, span_id) < 0) goto done;
            PyObject *attrs = kv_dict(w, &w->eattrs);
            PyObject *pvl = attrs ? pv_list(w, pv) : NULL;
            PyObject *tso = pvl ? PyLong_FromUnsignedLongLong(ts) : NULL;
            PyObject *row = tso ? PyObject_CallFunctionObjArgs(w->eval_row_fn, tso, *trace_id, *span_id, Py_None,
                                                               S_SPAN_EVENT, attrs, pvl, service, NULL)
                                : NULL;
            Py_XDECREF(attrs);
            Py_XDECREF(pvl);
            Py_XDECREF(tso);
            int e = !row || eval_row_tuple(w, row) < 0;
            Py_XDECREF(row);
            if (e) goto done;
        } else { /* name, score, label, explanation from the event cache; the rest from the span */
            if (!PyTuple_Check(score) || PyTuple_GET_SIZE(score) != 4) {
                PyErr_SetString(PyExc_TypeError, "bad evaluation cache entry");
                goto done;
            }
            Column *e = w->ecols;
            if (col_i64(&e[0], (int64_t)ts) < 0 || col_hex(&e[1], v->tid) < 0 || col_hex(&e[2], v->sid) < 0 ||
                col_null(&e[3]) < 0 || col_obj(&e[4], S_SPAN_EVENT) < 0)
                goto done;
            for (int k = 0; k < 4; k++)
                if (col_obj(&e[5 + k], PyTuple_GET_ITEM(score, k)) < 0) goto done;
            static const int from_pv[7] = {10, 0, 1, 3, 4, 5, 7}; /* response_id, identity columns */
            for (int k = 0; k < 7; k++)
                if (col_obj(&e[9 + k], pv[from_pv[k]]) < 0) goto done;
            if (col_obj(&e[16], service) < 0 || col_obj(&e[17], S_EMPTY_OBJ) < 0) goto done;
        }
    }
    rc = 0;
done:
    Py_XDECREF(name_s);
    Py_XDECREF(raws);
    Py_XDECREF(key);
    Py_XDECREF(ent);
    return rc;
}

static int note_adapter(Walk *w, PyObject **pv, uint64_t start_us) {
    PyObject *h = pv[0];
    if (!h || h == Py_None) return 0;
    static const int idx[7] = {1, 2, 16, 17, 18, 6, 7};
    PyObject *ident = PyTuple_New(7);
    if (!ident) return -1;
    for (int i = 0; i < 7; i++) {
        PyObject *x = idx[i] < w->n_pv ? pvv(pv, idx[i]) : Py_None;
        Py_INCREF(x);
        PyTuple_SET_ITEM(ident, i, x);
    }
    int rc = -1;
    PyObject *ts = PyLong_FromUnsignedLongLong(start_us);
    if (!ts) goto done;
    PyObject *prev = PyDict_GetItemWithError(w->seen, h);
    int same = 0;
    if (prev) {
        same = PyObject_RichCompareBool(prev, ident, Py_EQ);
        if (same < 0) goto done;
    } else if (PyErr_Occurred()) {
        goto done;
    }
    if (!same) {
        if (PyDict_SetItem(w->seen, h, ident) < 0) goto done;
        PyObject *r = PyObject_CallFunctionObjArgs(w->note_fn, w->adapters, h, ident, ts, NULL);
        if (!r) goto done;
        Py_DECREF(r);
    } else {
        PyObject *rec = PyDict_GetItemWithError(w->adapters, h);
        if (!rec) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, h);
            goto done;
        }
        PyObject *first = PySequence_GetItem(rec, 8);
        PyObject *last = first ? PySequence_GetItem(rec, 9) : NULL;
        int lt = last ? PyObject_RichCompareBool(ts, first, Py_LT) : -1;
        int gt = lt == 0 ? PyObject_RichCompareBool(ts, last, Py_GT) : 0;
        Py_XDECREF(first);
        Py_XDECREF(last);
        if (lt < 0 || gt < 0) goto done;
        if (lt && PySequence_SetItem(rec, 8, ts) < 0) goto done;
        if (gt && PySequence_SetItem(rec, 9, ts) < 0) goto done;
    }
    rc = 0;
done:
    Py_DECREF(ident);
    Py_XDECREF(ts);
    return rc;
}

static int walk_span(Walk *w, Slice s, PyObject *service) {
    SpanView v;
    if (parse_span(w, s, &v) < 0) return -1;
    int invalid_ids = v.tid.n != 16 || v.sid.n != 8 || all_zero(v.tid) || all_zero(v.sid);
    if (invalid_ids || (v.psid.n && v.psid.n != 8)) {
        /* the protobuf parser validates every string of a span, rejected or not */
        if (check_strings(w, &v) < 0) return -1;
        return reject(w, v.name, invalid_ids ? "an invalid trace id or span id" : "an invalid parent span id");
    }

    int rc = -1;
    PyObject *pv[64] = {0};
    PyObject *trace_id = NULL, *span_id = NULL;
    Column *c = w->cols;
    int has_parent = v.psid.n && !all_zero(v.psid);
    uint64_t start_us = v.start / 1000;
    if (col_i64(&c[0], (int64_t)start_us) < 0 || col_hex(&c[1], v.tid) < 0 || col_hex(&c[2], v.sid) < 0 ||
        (has_parent ? col_hex(&c[3], v.psid) : col_str(&c[3], "", 0)) < 0 || col_utf8(&c[4], v.trace_state) < 0 ||
        col_utf8(&c[5], v.name) < 0)
        goto done;
    PyObject *kind = (v.kind >= 0 && v.kind < 6) ? KINDS[v.kind] : S_UNSPECIFIED;
    if (col_grow(&c[6]) < 0 || buf_put_str(&c[6].data, kind) < 0 || col_end(&c[6]) < 0) goto done;

    /* attributes: JSON from cached fragments, promoted values */
    Column *ac = &c[7];
    if (col_grow(ac) < 0 || buf_put(&ac->data, "{", 1) < 0) goto done;
    for (Py_ssize_t i = 0; i < w->attrs.n; i++) {
        if (i && buf_put(&ac->data, ",", 1) < 0) goto done;
        Py_ssize_t mark = ac->data.n;
        int done_here = kv_scalar(w, w->attrs.v[i], &ac->data, pv);
        if (done_here < 0) goto done;
        if (done_here) continue;
        ac->data.n = mark; /* the Python cache converts this one */
        PyObject *raw = PyBytes_FromStringAndSize((const char *)w->attrs.v[i].p, w->attrs.v[i].n);
        if (!raw) goto done;
        PyObject *f = frag_of(w, raw, pv);
        Py_DECREF(raw);
        if (!f) goto done;
        int e = buf_put_str(&ac->data, f) < 0;
        Py_DECREF(f);
        if (e) goto done;
    }
    if (buf_put(&ac->data, "}", 1) < 0 || col_end(ac) < 0) goto done;
    if (col_i64(&c[8], v.end >= v.start ? (int64_t)(v.end - v.start) : 0) < 0) goto done;
    PyObject *status = (v.status_code >= 0 && v.status_code < 3) ? STATUSES[v.status_code] : S_UNSET;
    if (col_grow(&c[9]) < 0 || buf_put_str(&c[9].data, status) < 0 || col_end(&c[9]) < 0 ||
        col_utf8(&c[10], v.status_msg) < 0)
        goto done;

    Column *ec = &c[11];
    if (col_grow(ec) < 0 || buf_put(&ec->data, "[", 1) < 0) goto done;
    for (Py_ssize_t i = 0; i < w->events_v.n; i++) {
        if ((i && buf_put(&ec->data, ",", 1) < 0) ||
            walk_event(w, w->events_v.v[i], &v, &trace_id, &span_id, pv, service) < 0)
            goto done;
    }
    if (buf_put(&ec->data, "]", 1) < 0 || col_end(ec) < 0) goto done;

    if (w->links.n) {
        PyObject *lr = PyList_New(w->links.n), *lj = NULL;
        int ok = lr != NULL;
        for (Py_ssize_t i = 0; ok && i < w->links.n; i++) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)w->links.v[i].p, w->links.v[i].n);
            if (!b) ok = 0;
            else PyList_SET_ITEM(lr, i, b);
        }
        if (ok) lj = PyObject_CallOneArg(w->links_fn, lr);
        Py_XDECREF(lr);
        ok = lj && col_grow(&c[12]) == 0 && buf_put_str(&c[12].data, lj) == 0 && col_end(&c[12]) == 0;
        Py_XDECREF(lj);
        if (!ok) goto done;
    } else if (col_str(&c[12], "[]", 2) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < w->n_out_pv; i++)
        if (col_obj(&c[N_ROW + i], pv[i]) < 0) goto done;
    w->n_rows++;

    if (pv[w->eval_name_idx] && pv[w->eval_name_idx] != Py_None) { /* child-span evaluation */
        if (span_ids(&v, &trace_id, &span_id) < 0) goto done;
        PyObject *parent = has_parent ? hex_str(v.psid) : Py_NewRef(Py_None);
        PyObject *attrs = parent ? kv_dict(w, &w->attrs) : NULL;
        PyObject *pvl = attrs ? pv_list(w, pv) : NULL;
        PyObject *ts = pvl ? PyLong_FromUnsignedLongLong(start_us) : NULL;
        PyObject *pair = ts ? Py_BuildValue("(nO)", w->ecols[0].n, parent) : NULL;
        PyObject *row = pair ? PyObject_CallFunctionObjArgs(w->eval_row_fn, ts, trace_id, parent, span_id,
                                                            S_SPAN, attrs, pvl, service, NULL)
                             : NULL;
        int e = !row || PyList_Append(w->eval_spans, pair) < 0 || eval_row_tuple(w, row) < 0;
        Py_XDECREF(parent);
        Py_XDECREF(attrs);
        Py_XDECREF(pvl);
        Py_XDECREF(ts);
        Py_XDECREF(pair);
        Py_XDECREF(row);
        if (e) goto done;
    }
    if (note_adapter(w, pv, start_us) < 0) goto done;
    rc = 0;
done:
    for (Py_ssize_t i = 0; i < w->n_pv; i++) Py_XDECREF(pv[i]);
    Py_XDECREF(trace_id);
    Py_XDECREF(span_id);
    return rc;
}


static int parse_scope(Slice s, Slice *name, Slice *version) {
    const uint8_t *p = s.p, *end = s.p + s.n;
    uint32_t f;
    int wt, r;
    while ((r = read_tag(&p, end, &f, &wt)) == 0) {
        if ((f == 1 || f == 2) && wt == 2) {
            if (read_len(&p, end, f == 1 ? name : version) < 0) return -1;
        } else if (skip_field(&p, end, f, wt, 0) < 0) {
            return -1;
        }
    }
    return r < 0 ? -1 : 0;
}

/* walk(body, frag, prom, kv, miss, events, event_fn, resource_fn, links_fn, eval_row_fn, note_fn,
 *      adapters, complex_marker, n_pv, n_out_pv, eval_name_idx, kinds, promoted_keys, promoted_kinds)
 * -> (columns, groups, eval_columns, eval_spans, rejected, bad_reason)
 * kinds: b"s" (string) or b"i" (int64) per span column (N_ROW + n_out_pv);
 * promoted_keys / promoted_kinds: the n_pv promoted attribute keys and b"s"/b"i" for each;
 * eval_kinds: b"s", b"i" or b"f" (float64) per evaluations column; eval_columns like columns;
 * eval_spans: (index of the row in eval_columns, scored span id) of child-span evaluations;
 * columns: (kind, n, data, offsets, validity, null count) per span column, Arrow layout;
 * groups: (service, resource_json, scope_name, scope_version, n_rows) per scope with rows. */
static PyObject *walk(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer body;
    PyObject *resource_fn;
    const char *kinds;
    Py_ssize_t n_kinds;
    Walk w;
    memset(&w, 0, sizeof(w));
    PyObject *prom_keys;
    Py_ssize_t n_prom_kinds;
    const char *eval_kinds;
    Py_ssize_t n_eval_kinds;
    if (!PyArg_ParseTuple(args, "y*OOOOOOOOOOOOnnny#O!y#y#", &body, &w.frag, &w.prom, &w.kv, &w.miss,
                          &w.events, &w.event_fn, &resource_fn, &w.links_fn, &w.eval_row_fn, &w.note_fn,
                          &w.adapters, &w.complex_marker, &w.n_pv, &w.n_out_pv, &w.eval_name_idx, &kinds,
                          &n_kinds, &PyTuple_Type, &prom_keys, &w.prom_kind, &n_prom_kinds, &eval_kinds,
                          &n_eval_kinds))
        return NULL;
    if (n_eval_kinds != N_EVAL) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_TypeError, "walk(): bad evaluation column kinds");
        return NULL;
    }
    for (int i = 0; i < N_EVAL; i++) {
        char k = eval_kinds[i];
        if (k != 's' && k != 'i' && k != 'f') {
            PyBuffer_Release(&body);
            PyErr_SetString(PyExc_TypeError, "walk(): bad evaluation column kinds");
            return NULL;
        }
        w.ecols[i].kind = k == 's' ? COL_STR : k == 'i' ? COL_I64 : COL_F64;
    }
    if (w.n_pv > 64 || PyTuple_GET_SIZE(prom_keys) != w.n_pv || n_prom_kinds != w.n_pv) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_TypeError, "walk(): bad promoted keys");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < w.n_pv; i++) {
        PyObject *k = PyTuple_GET_ITEM(prom_keys, i);
        w.prom_key[i] = PyUnicode_Check(k) ? PyUnicode_AsUTF8AndSize(k, &w.prom_len[i]) : NULL;
        if (!w.prom_key[i] || (w.prom_kind[i] != 's' && w.prom_kind[i] != 'i')) {
            PyBuffer_Release(&body);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "walk(): bad promoted keys");
            return NULL;
        }
    }
    PyObject *result = NULL, *groups = NULL, *cols = NULL, *ecols = NULL;
    Py_ssize_t n_cols = N_ROW + w.n_out_pv;
    if (w.n_pv > 64 || w.n_out_pv < 0 || w.n_out_pv > w.n_pv || w.eval_name_idx < 0 ||
        w.eval_name_idx >= w.n_pv || w.n_pv < 19 || n_kinds != n_cols || !PyDict_Check(w.frag) ||
        !PyDict_Check(w.prom) || !PyDict_Check(w.kv) || !PyDict_Check(w.events) || !PyDict_Check(w.adapters)) {
        PyErr_SetString(PyExc_TypeError, "walk(): bad arguments");
        goto out;
    }
    static const char row_kinds[N_ROW + 1] = "isssssssissss";
    for (Py_ssize_t i = 0; i < n_cols; i++) {
        if ((kinds[i] != 's' && kinds[i] != 'i') || (i < N_ROW && kinds[i] != row_kinds[i])) {
            PyErr_SetString(PyExc_TypeError, "walk(): bad column kinds");
            goto out;
        }
        w.cols[i].kind = kinds[i] == 's' ? COL_STR : COL_I64;
    }
    w.eval_spans = PyList_New(0);
    w.seen = PyDict_New();
    groups = PyList_New(0);
    if (!w.eval_spans || !w.seen || !groups) goto out;
    w.bad_reason = Py_NewRef(S_EMPTY);

    const uint8_t *p = body.buf, *end = p + body.len;
    uint32_t f;
    int wt, r;
    while ((r = read_tag(&p, end, &f, &wt)) == 0) {
        if (f != 1 || wt != 2) {
            if (skip_field(&p, end, f, wt, 0) < 0) goto out;
            continue;
        }
        Slice rs;
        if (read_len(&p, end, &rs) < 0) goto out;
        /* ResourceSpans: the resource (last one wins) first, then its scopes */
        const uint8_t *q = rs.p, *qend = rs.p + rs.n;
        Slice resource = {(const uint8_t *)"", 0};
        uint32_t g;
        int gwt, r2;
        while ((r2 = read_tag(&q, qend, &g, &gwt)) == 0) {
            Slice x;
            if (g == 1 && gwt == 2) {
                if (read_len(&q, qend, &resource) < 0) goto out;
            } else if (g == 2 && gwt == 2) {
                if (read_len(&q, qend, &x) < 0) goto out;
            } else if (skip_field(&q, qend, g, gwt, 0) < 0) {
                goto out;
            }
        }
        if (r2 < 0) goto out;
        PyObject *res_raw = PyBytes_FromStringAndSize((const char *)resource.p, resource.n);
        PyObject *res = res_raw ? PyObject_CallOneArg(resource_fn, res_raw) : NULL;
        Py_XDECREF(res_raw);
        if (!res) goto out;
        if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_TypeError, "bad resource cache entry");
            goto out;
        }
        PyObject *service = PyTuple_GET_ITEM(res, 0), *res_json = PyTuple_GET_ITEM(res, 1);
        q = rs.p;
        int failed = 0;
        while (!failed && (r2 = read_tag(&q, qend, &g, &gwt)) == 0) {
            Slice ss;
            if (g != 2 || gwt != 2) {
                if (skip_field(&q, qend, g, gwt, 0) < 0) failed = 1;
                continue;
            }
            if (read_len(&q, qend, &ss) < 0) {
                failed = 1;
                break;
            }
            /* ScopeSpans, in one pass: the scope (merged over repeats, wherever it comes) names
             * the group of rows its spans make */
            Slice sname = {(const uint8_t *)"", 0}, sversion = {(const uint8_t *)"", 0};
            const uint8_t *t = ss.p, *tend = ss.p + ss.n;
            uint32_t h;
            int hwt, r3;
            Py_ssize_t before = w.n_rows;
            while ((r3 = read_tag(&t, tend, &h, &hwt)) == 0) {
                Slice x;
                int rc = 0;
                if ((h == 1 || h == 2) && hwt == 2) {
                    rc = read_len(&t, tend, &x);
                    if (rc == 0) rc = h == 1 ? parse_scope(x, &sname, &sversion) : walk_span(&w, x, service);
                } else {
                    rc = skip_field(&t, tend, h, hwt, 0);
                }
                if (rc < 0) {
                    r3 = -1;
                    break;
                }
            }
            if (r3 < 0 || check_str(sname) < 0 || check_str(sversion) < 0) {
                failed = 1;
                break;
            }
            if (w.n_rows > before) {
                PyObject *sn = decode_str(sname), *sv = sn ? decode_str(sversion) : NULL;
                PyObject *grp = sv ? Py_BuildValue("(OOOOn)", service, res_json, sn, sv, w.n_rows - before) : NULL;
                Py_XDECREF(sn);
                Py_XDECREF(sv);
                if (!grp || PyList_Append(groups, grp) < 0) failed = 1;
                Py_XDECREF(grp);
            }
        }
        Py_DECREF(res);
        if (failed || r2 < 0) goto out;
    }
    if (r < 0) goto out;
    cols = cols_take(w.cols, n_cols);
    ecols = cols ? cols_take(w.ecols, N_EVAL) : NULL;
    if (!ecols) goto out;
    result = Py_BuildValue("(OOOOnO)", cols, groups, ecols, w.eval_spans, w.rejected, w.bad_reason);
out:
    PyBuffer_Release(&body);
    for (Py_ssize_t i = 0; i < N_ROW + 64; i++) col_free(&w.cols[i]);
    for (Py_ssize_t i = 0; i < N_EVAL; i++) col_free(&w.ecols[i]);
    Py_XDECREF(cols);
    Py_XDECREF(ecols);
    Py_XDECREF(w.eval_spans);
    Py_XDECREF(w.seen);
    Py_XDECREF(w.bad_reason);
    Py_XDECREF(groups);
    PyMem_Free(w.attrs.v);
    PyMem_Free(w.events_v.v);
    PyMem_Free(w.links.v);
    PyMem_Free(w.eattrs.v);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "Walk a serialized OTLP ExportTraceServiceRequest into span columns."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_otlpwalk", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__otlpwalk(void) {
    static const char *kinds[6] = {"Unspecified", "Internal", "Server", "Client", "Producer", "Consumer"};
    static const char *statuses[3] = {"Unset", "Ok", "Error"};
    for (int i = 0; i < 6; i++)
        if (!(KINDS[i] = PyUnicode_InternFromString(kinds[i]))) return NULL;
    for (int i = 0; i < 3; i++)
        if (!(STATUSES[i] = PyUnicode_InternFromString(statuses[i]))) return NULL;
    S_UNSPECIFIED = KINDS[0];
    S_UNSET = STATUSES[0];
    if (!(S_SPAN = PyUnicode_InternFromString("span")) ||
        !(S_SPAN_EVENT = PyUnicode_InternFromString("span_event")) ||
        !(S_EMPTY = PyUnicode_InternFromString("")) || !(S_EMPTY_OBJ = PyUnicode_InternFromString("{}")))
        return NULL;
    return PyModule_Create(&module);
}
