/* Optional C kernels for skelact.models.bnact: training-mode BatchNorm fused with the residual add and the
 * ReLU that follow it in a CTR-GCN unit, forward and backward, on float32 tensors; and, at the end of the
 * file, skelact.models.tpool's temporal max-pooling and the small per-(channel, sample) matrix products of
 * skelact.models.ctrgcn's aggregation.
 *
 * A channels-last (B, C, T, V) tensor is N = B·T·V rows of C contiguous channels. The kernels see every
 * (N, C) operand as such rows, stored in one of three ways (a "matrix" argument, see parse_mat): one
 * channels-last tensor; several channels-last tensors concatenated along C (segments: the branches of a
 * temporal block, read without torch.cat, or an output written straight into its branches without a
 * split copy); or one channel-major tensor, element (r, j) at j·N + r (the graph convolution's output,
 * read and its gradient written without a layout transpose). Rows are handled in tiles of up to TILE
 * values that are gathered into / scattered from a contiguous buffer when the storage is not plain rows.
 * With per-channel batch statistics mean, var (biased) and invstd = 1/sqrt(var + eps):
 *
 *   forward   y = relu(x·s + h + res),  s = w·invstd, h = b − mean·s   (res and the ReLU optional)
 *   backward  g' = g·[y > 0] (g without the ReLU; NaN in y passes g, as ATen), the residual's gradient;
 *             dx = s·(g' − Σg'/N − x̂·Σg'x̂/N),  dw = Σg'x̂,  db = Σg'   with x̂ = (x − mean)·invstd
 *
 * Each direction is two passes over the rows: per-channel sums, then one elementwise pass (ATen needs a BN
 * kernel, an add and a ReLU, each a pass or more, and the same again backward). With the ReLU and a
 * residual, the backward sums pass also writes g' (the residual's gradient, wanted anyway), and the
 * elementwise pass reads it instead of g and y. The sums are taken in
 * double over a fixed partition of the rows (NCHUNK chunks, combined in order), so results do not depend
 * on the thread count, nor (built with -ffp-contract=off) on the vector width. NaN propagates as through
 * PyTorch's layers. Threads: OpenMP, as many as the caller asks (torch.get_num_threads()); the GIL is
 * released while a kernel runs. Pointers come from torch.Tensor.data_ptr(); the callers (bnact.py,
 * tpool.py, ctrgcn.py) check dtype, device, layout and sizes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NCHUNK 64
#define MAXC 4096  /* channels at most */
#define MAXSEG 8   /* segments of a matrix at most */
#define TILE 4096  /* values per tile buffer: a tile is max(1, TILE / C) rows */
_Static_assert(MAXC <= TILE, "a row must fit in a tile");

/* The row loops are compiled for AVX-512, AVX2 and baseline x86-64, chosen at load time (GCC, clang). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

typedef float v16 __attribute__((vector_size(64)));  /* GCC / clang vector extension: 16 floats */

static inline v16 load16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define HAVE_SHUFFLEVECTOR 1

/* Transposes the 16x16 block whose rows are r[0..15]: each level h swaps the off-diagonal h x h blocks
   of every 2h x 2h block (rows a and a + h exchange their halves), so after h = 8, 4, 2, 1 row i holds
   column i. */
#define SWAP_LEVEL(h, LO, HI)                                                     \
    for (int a = 0; a < 16; ++a)                                                  \
        if (!(a & (h))) {                                                         \
            v16 lo = __builtin_shufflevector(r[a], r[a + (h)], LO);               \
            r[a + (h)] = __builtin_shufflevector(r[a], r[a + (h)], HI);           \
            r[a] = lo;                                                            \
        }
#define LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
static inline void transpose16(v16 r[16])
{
    SWAP_LEVEL(8, LO8, HI8)
    SWAP_LEVEL(4, LO4, HI4)
    SWAP_LEVEL(2, LO2, HI2)
    SWAP_LEVEL(1, LO1, HI1)
}
#endif

/* Per-channel sums over rows: s1 = Σ a, s2 = Σ a·b, with a masked by m > 0 when m is given (and the masked
   rows then written to am, unless it is NULL). */
VECTOR_CLONES
static void chunk_sums(const float *restrict a, const float *restrict b, const float *restrict m,
                       float *restrict am, double *restrict s1, double *restrict s2, int64_t rows, int64_t c)
{
    for (int64_t r = 0; r < rows; ++r, a += c, b += c) {
        if (m) {
            float v[MAXC];  /* the masked row first: a select and a widening add do not vectorise together */
            for (int64_t j = 0; j < c; ++j) {
                float aj = a[j];
                v[j] = m[j] <= 0.f ? 0.f : aj;  /* as threshold_backward: a NaN output passes */
            }
            for (int64_t j = 0; j < c; ++j) {
                s1[j] += v[j];
                s2[j] += (double)v[j] * b[j];
            }
            if (am) {
                memcpy(am, v, (size_t)c * sizeof(float));
                am += c;
            }
            m += c;
        } else {
            for (int64_t j = 0; j < c; ++j) {
                s1[j] += a[j];
                s2[j] += (double)a[j] * b[j];
            }
        }
    }
}

/* An (n, c) matrix of rows (see the top of the file). */
typedef struct {
    int cm;                 /* 1: channel-major, element (r, j) at p[0][j·n + r]; 0: rows in segments */
    int nseg;               /* segment s: channels [Σ cs[<s], + cs[s]) of each row, rows of cs[s] values */
    float *p[MAXSEG];
    int64_t cs[MAXSEG];
} mat_t;

/* Parses a matrix argument: (0, ptr, channels, ptr, channels, ...) for rows in segments, (1, ptr) for
   channel-major; the channels must add up to c. 0 on success, -1 with a ValueError set. */
static int parse_mat(PyObject *o, mat_t *m, int64_t c, const char *name)
{
    Py_ssize_t len = PyTuple_Check(o) ? PyTuple_GET_SIZE(o) : 0;
    long long kind = len ? PyLong_AsLongLong(PyTuple_GET_ITEM(o, 0)) : -1;
    if (PyErr_Occurred())
        return -1;
    m->cm = kind == 1;
    m->nseg = m->cm ? 1 : (int)((len - 1) / 2);
    int ok = (kind == 1 && len == 2) || (kind == 0 && len >= 3 && len % 2 == 1 && m->nseg <= MAXSEG);
    int64_t total = 0;
    for (int s = 0; ok && s < m->nseg; ++s) {
        m->p[s] = (float *)(uintptr_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(o, 1 + 2 * s));
        m->cs[s] = m->cm ? c : PyLong_AsLongLong(PyTuple_GET_ITEM(o, 2 + 2 * s));
        if (PyErr_Occurred())
            return -1;
        ok = m->p[s] != NULL && m->cs[s] >= 1;
        total += m->cs[s];
    }
    if (!ok || total != c) {
        PyErr_Format(PyExc_ValueError, "_fused: bad matrix argument %s for %lld channels", name, (long long)c);
        return -1;
    }
    return 0;
}

static inline int plain(const mat_t *m) { return !m->cm && m->nseg == 1; }
static inline int64_t tile_rows(int64_t c) { return c >= TILE ? 1 : TILE / c; }

/* Between channel-major storage p (element (r, j) at p[j·n + r]) and the rows buf[(r - r0)·c + j] of
   rows [r0, r0 + rows): gathered into buf (to_cm = 0) or scattered from it (to_cm = 1). 16 x 16 blocks are
   transposed in vector registers where the compiler allows, the rest element by element. */
VECTOR_CLONES
static void cm_rows(float *p, int64_t n, int64_t r0, int64_t rows, int64_t c, float *buf, int to_cm)
{
    int64_t i0 = 0, j0 = 0;
#ifdef HAVE_SHUFFLEVECTOR
    for (; j0 + 16 <= c; j0 += 16)
        for (i0 = 0; i0 + 16 <= rows; i0 += 16) {
            v16 r[16];
            for (int k = 0; k < 16; ++k)
                r[k] = to_cm ? load16(buf + (i0 + k) * c + j0) : load16(p + (j0 + k) * n + r0 + i0);
            transpose16(r);
            for (int k = 0; k < 16; ++k) {
                if (to_cm)
                    store16(p + (j0 + k) * n + r0 + i0, r[k]);
                else
                    store16(buf + (i0 + k) * c + j0, r[k]);
            }
        }
    /* what the blocks left: rows [i0, rows) of channels [0, j0), and every row of channels [j0, c) */
#endif
    for (int64_t j = 0; j < c; ++j)
        for (int64_t i = j < j0 ? i0 : 0; i < rows; ++i) {
            if (to_cm)
                p[j * n + r0 + i] = buf[i * c + j];
            else
                buf[i * c + j] = p[j * n + r0 + i];
        }
}

/* Rows [r0, r0 + rows) of m as contiguous rows: m's own memory when it is plain, else gathered into buf. */
static const float *tile_in(const mat_t *m, int64_t r0, int64_t rows, int64_t n, int64_t c, float *buf)
{
    if (plain(m))
        return m->p[0] + r0 * c;
    if (m->cm) {
        cm_rows(m->p[0], n, r0, rows, c, buf, 0);
        return buf;
    }
    for (int s = 0, off = 0; s < m->nseg; off += (int)m->cs[s++]) {
        const float *src = m->p[s] + r0 * m->cs[s];
        for (int64_t i = 0; i < rows; ++i)
            memcpy(buf + i * c + off, src + i * m->cs[s], (size_t)m->cs[s] * sizeof(float));
    }
    return buf;
}

/* Where to compute rows [r0, ...) of an output m: its own memory when plain, else buf (then tile_out). */
static float *tile_dst(const mat_t *m, int64_t r0, int64_t c, float *buf)
{
    return plain(m) ? m->p[0] + r0 * c : buf;
}

static void tile_out(const mat_t *m, int64_t r0, int64_t rows, int64_t n, int64_t c, const float *buf)
{
    if (plain(m))
        return;
    if (m->cm) {
        cm_rows(m->p[0], n, r0, rows, c, (float *)buf, 1);
        return;
    }
    for (int s = 0, off = 0; s < m->nseg; off += (int)m->cs[s++]) {
        float *dst = m->p[s] + r0 * m->cs[s];
        for (int64_t i = 0; i < rows; ++i)
            memcpy(dst + i * m->cs[s], buf + i * c + off, (size_t)m->cs[s] * sizeof(float));
    }
}

/* s1, s2 (c each) := the sums over all n rows of a, b (b = NULL: a again) and the mask mk (or NULL), the
   masked rows of a written to the plain rows am unless it is NULL; 0 on success, -1 when out of memory. */
static int channel_sums(const mat_t *a, const mat_t *b, const mat_t *mk, float *am, double *s1, double *s2,
                        int64_t n, int64_t c, int threads)
{
    double *part = calloc((size_t)(2 * NCHUNK * c), sizeof(double));
    if (!part)
        return -1;
    const int64_t R = tile_rows(c);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < NCHUNK; ++k) {
        float ba[TILE], bb[TILE], bm[TILE];
        int64_t lo = n * k / NCHUNK, hi = n * (k + 1) / NCHUNK;
        for (int64_t r0 = lo; r0 < hi; r0 += R) {
            int64_t rows = hi - r0 < R ? hi - r0 : R;
            const float *ta = tile_in(a, r0, rows, n, c, ba);
            chunk_sums(ta, b ? tile_in(b, r0, rows, n, c, bb) : ta, mk ? tile_in(mk, r0, rows, n, c, bm) : NULL,
                       am ? am + r0 * c : NULL, part + 2 * k * c, part + (2 * k + 1) * c, rows, c);
        }
    }
    for (int64_t j = 0; j < c; ++j)
        s1[j] = s2[j] = 0.0;
    for (int64_t k = 0; k < NCHUNK; ++k)
        for (int64_t j = 0; j < c; ++j) {
            s1[j] += part[2 * k * c + j];
            s2[j] += part[(2 * k + 1) * c + j];
        }
    free(part);
    return 0;
}

VECTOR_CLONES
static void apply_rows(const float *restrict x, const float *restrict res, float *restrict y,
                       const float *restrict s, const float *restrict h, int relu, int64_t rows, int64_t c)
{
    for (int64_t r = 0; r < rows; ++r, x += c, y += c) {
        if (res) {
            for (int64_t j = 0; j < c; ++j)
                y[j] = x[j] * s[j] + h[j] + res[j];
            res += c;
        } else {
            for (int64_t j = 0; j < c; ++j)
                y[j] = x[j] * s[j] + h[j];
        }
        if (relu)
            for (int64_t j = 0; j < c; ++j)
                y[j] = y[j] < 0.f ? 0.f : y[j];  /* keeps NaN, as torch.relu */
    }
}

VECTOR_CLONES
static void grad_rows(const float *restrict g, const float *restrict x, const float *restrict y,
                      float *restrict gx, const float *restrict ca, const float *restrict cb,
                      const float *restrict cc, int64_t rows, int64_t c)
{
    for (int64_t r = 0; r < rows; ++r, g += c, x += c, gx += c) {
        if (y) {
            for (int64_t j = 0; j < c; ++j) {
                float gj = g[j], gv = y[j] <= 0.f ? 0.f : gj;
                gx[j] = ca[j] * gv + cb[j] * x[j] + cc[j];
            }
            y += c;
        } else {
            for (int64_t j = 0; j < c; ++j)
                gx[j] = ca[j] * g[j] + cb[j] * x[j] + cc[j];
        }
    }
}

#define PTR(v) ((float *)(uintptr_t)(v))

/* Frees a kernel's work arrays; None, or MemoryError where they could not be had. */
static PyObject *finish(double *sums, float *coef, int failed)
{
    free(sums);
    free(coef);
    if (failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* forward(x, res, y, w, b, stats, n, c, relu, eps, threads): x and y matrices (see parse_mat), res a
   pointer to plain rows or 0 for none; stats (3c floats) := mean, biased var, invstd. */
static PyObject *forward(PyObject *self, PyObject *args)
{
    PyObject *ox, *oy;
    unsigned long long pres, pw, pb, pstats;
    long long n, c;
    int relu, threads;
    double eps;
    mat_t x, y;
    if (!PyArg_ParseTuple(args, "OKOKKKLLpdi", &ox, &pres, &oy, &pw, &pb, &pstats, &n, &c, &relu, &eps,
                          &threads))
        return NULL;
    if (c < 1 || c > MAXC || n < 1)
        return PyErr_Format(PyExc_ValueError, "_fused.forward: %lld channels, %lld rows", c, n);
    if (parse_mat(ox, &x, c, "x") || parse_mat(oy, &y, c, "y"))
        return NULL;
    const float *res = pres ? PTR(pres) : NULL, *w = PTR(pw), *b = PTR(pb);
    float *stats = PTR(pstats);
    double *sums = malloc((size_t)(2 * c) * sizeof(double));
    float *coef = malloc((size_t)(2 * c) * sizeof(float));
    int failed = !sums || !coef;
    Py_BEGIN_ALLOW_THREADS
    if (!failed)
        failed = channel_sums(&x, NULL, NULL, NULL, sums, sums + c, n, c, threads);
    if (!failed) {
        for (int64_t j = 0; j < c; ++j) {
            double mean = sums[j] / n, var = sums[c + j] / n - mean * mean;
            var = var < 0.0 ? 0.0 : var;  /* rounding; NaN stays NaN (fmax would drop it) */
            double invstd = 1.0 / sqrt(var + eps), s = w[j] * invstd;
            stats[j] = (float)mean;
            stats[c + j] = (float)var;
            stats[2 * c + j] = (float)invstd;
            coef[j] = (float)s;
            coef[c + j] = (float)(b[j] - mean * s);
        }
        const int64_t R = tile_rows(c);
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t k = 0; k < NCHUNK; ++k) {
            float bx[TILE], by[TILE];
            int64_t lo = n * k / NCHUNK, hi = n * (k + 1) / NCHUNK;
            for (int64_t r0 = lo; r0 < hi; r0 += R) {
                int64_t rows = hi - r0 < R ? hi - r0 : R;
                float *ty = tile_dst(&y, r0, c, by);
                apply_rows(tile_in(&x, r0, rows, n, c, bx), res ? res + r0 * c : NULL, ty, coef, coef + c, relu,
                           rows, c);
                tile_out(&y, r0, rows, n, c, ty);
            }
        }
    }
    Py_END_ALLOW_THREADS
    return finish(sums, coef, failed);
}

/* backward(g, x, y, gx, gres, w, mean, invstd, gwb, n, c, threads): g, x, gx matrices, y a matrix or None
   without the ReLU; gres a pointer to plain rows, 0 when the masked gradient is not wanted;
   gwb (2c floats) := dw, db. */
static PyObject *backward(PyObject *self, PyObject *args)
{
    PyObject *og, *ox, *oy, *ogx;
    unsigned long long pgres, pw, pmean, pinv, pgwb;
    long long n, c;
    int threads;
    mat_t g, x, y, gx;
    if (!PyArg_ParseTuple(args, "OOOOKKKKKLLi", &og, &ox, &oy, &ogx, &pgres, &pw, &pmean, &pinv, &pgwb, &n,
                          &c, &threads))
        return NULL;
    if (c < 1 || c > MAXC || n < 1)
        return PyErr_Format(PyExc_ValueError, "_fused.backward: %lld channels, %lld rows", c, n);
    int has_y = oy != Py_None;
    if (parse_mat(og, &g, c, "g") || parse_mat(ox, &x, c, "x") || (has_y && parse_mat(oy, &y, c, "y"))
        || parse_mat(ogx, &gx, c, "gx"))
        return NULL;
    const float *w = PTR(pw), *mean = PTR(pmean), *invstd = PTR(pinv);
    float *gres = pgres ? PTR(pgres) : NULL, *gwb = PTR(pgwb);
    double *sums = malloc((size_t)(2 * c) * sizeof(double));
    float *coef = malloc((size_t)(3 * c) * sizeof(float));
    int failed = !sums || !coef;
    Py_BEGIN_ALLOW_THREADS
    /* with the ReLU and a residual, the statistics pass writes g' (the residual's gradient), which the
       gradient pass then reads instead of g and y */
    float *gm = has_y ? gres : NULL;
    if (!failed)
        failed = channel_sums(&g, &x, has_y ? &y : NULL, gm, sums, sums + c, n, c, threads);  /* Σg', Σg'·x */
    if (!failed) {
        for (int64_t j = 0; j < c; ++j) {
            double is = invstd[j], sg = sums[j], sgxh = is * (sums[c + j] - mean[j] * sg);  /* Σg'x̂ */
            double s = w[j] * is, cb = -s * is * sgxh / n;
            gwb[j] = (float)sgxh;
            gwb[c + j] = (float)sg;
            coef[j] = (float)s;
            coef[c + j] = (float)cb;
            coef[2 * c + j] = (float)(-s * sg / n - cb * mean[j]);
        }
        const int64_t R = tile_rows(c);
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t k = 0; k < NCHUNK; ++k) {
            float bg[TILE], bx[TILE], by[TILE], bgx[TILE];
            int64_t lo = n * k / NCHUNK, hi = n * (k + 1) / NCHUNK;
            for (int64_t r0 = lo; r0 < hi; r0 += R) {
                int64_t rows = hi - r0 < R ? hi - r0 : R;
                float *tgx = tile_dst(&gx, r0, c, bgx);
                if (gm)
                    grad_rows(gm + r0 * c, tile_in(&x, r0, rows, n, c, bx), NULL, tgx, coef, coef + c, coef + 2 * c,
                              rows, c);
                else
                    grad_rows(tile_in(&g, r0, rows, n, c, bg), tile_in(&x, r0, rows, n, c, bx),
                              has_y ? tile_in(&y, r0, rows, n, c, by) : NULL, tgx, coef, coef + c, coef + 2 * c,
                              rows, c);
                tile_out(&gx, r0, rows, n, c, tgx);
            }
        }
    }
    Py_END_ALLOW_THREADS
    return finish(sums, coef, failed);
}

/* Temporal max-pooling of channels-last (B, C, T, V) float32 tensors: window k frames, stride s, padding
 * p (frames outside [0, T) are skipped, not compared), T' = (T + 2p − k) / s + 1 outputs. As ATen's
 * max_pool2d: the first maximum of a window wins, a NaN wins over numbers (the last NaN); backward hands
 * each output's gradient to its winner. The winners are recomputed from x instead of stored as int64
 * indices, and backward gathers per input frame (no zero fill, no scatter): each frame adds the gradients
 * of the outputs whose windows it wins. */

#define POOL_LANES 512  /* lanes (joint-channel values of a frame) per block in pool backward */

/* One output frame: y = max over input frames [lo, lo + k) ∩ [0, t) of x (frames of vc values). */
VECTOR_CLONES
static void pool_fwd_frame(const float *restrict x, float *restrict y, int64_t lo, int64_t k, int64_t t,
                           int64_t vc)
{
    int64_t a = lo < 0 ? 0 : lo, b = lo + k > t ? t : lo + k;
    for (int64_t j = 0; j < vc; ++j)
        y[j] = -INFINITY;
    for (int64_t f = a; f < b; ++f)
        for (int64_t j = 0; j < vc; ++j) {
            float v = x[f * vc + j];
            y[j] = (v > y[j] || v != v) ? v : y[j];
        }
}

/* One input frame f: gx = the sum of g over the outputs whose window f wins (lanes [0, n) of a frame;
   x, g, gx point at lane 0 of frame 0 of one sample, output frame 0, input frame f). */
VECTOR_CLONES
static void pool_bwd_frame(const float *restrict x, const float *restrict g, float *restrict gx, int64_t f,
                           int64_t k, int64_t s, int64_t p, int64_t t, int64_t t_out, int64_t vc, int64_t n)
{
    float m[POOL_LANES];
    int32_t w[POOL_LANES];
    for (int64_t j = 0; j < n; ++j)
        gx[j] = 0.f;
    int64_t first = f + p - k + 1 <= 0 ? 0 : (f + p - k + 1 + s - 1) / s, last = (f + p) / s;
    for (int64_t to = first; to <= last && to < t_out; ++to) {
        int64_t lo = to * s - p, a = lo < 0 ? 0 : lo, b = lo + k > t ? t : lo + k;
        for (int64_t j = 0; j < n; ++j) {
            m[j] = -INFINITY;
            w[j] = (int32_t)a;
        }
        for (int64_t q = a; q < b; ++q)  /* replay the forward scan, keeping the winner */
            for (int64_t j = 0; j < n; ++j) {
                float v = x[q * vc + j];
                int take = v > m[j] || v != v;
                m[j] = take ? v : m[j];
                w[j] = take ? (int32_t)q : w[j];
            }
        for (int64_t j = 0; j < n; ++j)
            gx[j] += w[j] == (int32_t)f ? g[to * vc + j] : 0.f;
    }
}

/* pool(x, g, out, b, t, v, c, k, s, p, threads): forward (g = 0) out := the pooled x, (b, t', v, c) rows;
   backward out := dx, (b, t, v, c) rows, for the gradient g of the pooled x. */
static PyObject *pool(PyObject *self, PyObject *args)
{
    unsigned long long px, pg, pout;
    long long b, t, v, c, k, s, p;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKLLLLLLLi", &px, &pg, &pout, &b, &t, &v, &c, &k, &s, &p, &threads))
        return NULL;
    /* at least one output frame; frame indices fit the winners' int32 */
    if (b < 1 || t < 1 || v < 1 || c < 1 || k < 1 || s < 1 || p < 0 || p >= k || t + 2 * p < k || t > INT32_MAX)
        return PyErr_Format(PyExc_ValueError, "_fused.pool: bad sizes");
    const float *x = PTR(px), *g = pg ? PTR(pg) : NULL;
    float *out = PTR(pout);
    int64_t t_out = (t + 2 * p - k) / s + 1, vc = v * c;
    Py_BEGIN_ALLOW_THREADS
    if (!g) {
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < b * t_out; ++i) {
            int64_t bi = i / t_out, to = i % t_out;
            pool_fwd_frame(x + bi * t * vc, out + i * vc, to * s - p, k, t, vc);
        }
    } else {
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < b * t; ++i) {
            int64_t bi = i / t, f = i % t;
            for (int64_t j0 = 0; j0 < vc; j0 += POOL_LANES)
                pool_bwd_frame(x + bi * t * vc + j0, g + bi * t_out * vc + j0, out + i * vc + j0, f, k, s, p, t,
                               t_out, vc, vc - j0 < POOL_LANES ? vc - j0 : POOL_LANES);
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---- skelact.models.ctrgcn: the per-(channel, sample) products of the CTR-GCN aggregation ----
 *
 * A job computes, for every pair p < n (a (channel, sample) pair of a graph convolution) and subset k < K,
 *
 *   O_kp (rows x W) = A_kp (rows x S) · B_kp (S x W),  A_kp[i][s] = a[k·a_ks + p·a_ps + i·a_rs + s·a_ss],
 *                                                      B_kp row s = b + k·b_ks + p·b_ps + s·b_ld (W values),
 *
 * stored as rows of W values at o + k·o_ks + p·o_ps, or with sum_k their sum over k, plus the row
 * bias + p·W (if given) added to every row, at o + p·o_ps. A pair's operands are a few KiB and stay in L1
 * while its products run (batched GEMM calls, one per subset, read and write the whole output each time).
 * Rows are 16-lane vectors, W <= AGG_MAXW: loads of B rows, the bias and (with sum_k) the output run up to
 * 31 values past a row's end, so the caller pads those buffers; stores stop at W. Each pair is computed by
 * one thread in a fixed order, so results do not depend on the thread count. Multiply-adds may be fused
 * (FMA) here, as in the BLAS the PyTorch path calls. */
#define AGG_MAXW 32

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#define DEFINE_AGG_TILE(RB, NV)                                                                         \
static inline __attribute__((always_inline)) void agg_tile_##RB##_##NV(                              \
    const float *a, int64_t a_rs, int64_t a_ss, const float *b, int64_t b_ld, int64_t S, int64_t W,     \
    float *o, const float *init, int first)                                                             \
{                                                                                                       \
    v16 acc[RB][NV];                                                                                    \
    for (int i = 0; i < RB; ++i)                                                                        \
        for (int j = 0; j < NV; ++j)                                                                    \
            acc[i][j] = !first ? load16(o + i * W + 16 * j) : init ? load16(init + 16 * j) : (v16){0};  \
    for (int64_t s = 0; s < S; ++s) {                                                                   \
        v16 bv[NV];                                                                                     \
        for (int j = 0; j < NV; ++j)                                                                    \
            bv[j] = load16(b + s * b_ld + 16 * j);                                                      \
        for (int i = 0; i < RB; ++i) {                                                                  \
            float ai = a[i * a_rs + s * a_ss];                                                          \
            for (int j = 0; j < NV; ++j)                                                                \
                acc[i][j] += ai * bv[j];                                                                \
        }                                                                                               \
    }                                                                                                   \
    for (int i = 0; i < RB; ++i)                                                                        \
        for (int j = 0; j < NV; ++j) {                                                                  \
            int64_t n = W - 16 * j < 16 ? W - 16 * j : 16;                                              \
            if (n == 16)                                                                                \
                store16(o + i * W + 16 * j, acc[i][j]);                                                 \
            else                                                                                        \
                memcpy(o + i * W + 16 * j, &acc[i][j], (size_t)n * sizeof(float));                      \
        }                                                                                               \
}
DEFINE_AGG_TILE(6, 1)
DEFINE_AGG_TILE(1, 1)
DEFINE_AGG_TILE(6, 2)
DEFINE_AGG_TILE(1, 2)

typedef struct {
    const float *a, *b, *bias;
    float *o;
    long long k_sub, rows, S, W, a_rs, a_ss, a_ps, a_ks, b_ld, b_ps, b_ks, o_ps, o_ks;
    int sum_k;
} agg_t;

VECTOR_CLONES
static void agg_pair(const agg_t *g, int64_t p)
{
    for (int64_t k = 0; k < g->k_sub; ++k) {
        const float *a = g->a + k * g->a_ks + p * g->a_ps, *b = g->b + k * g->b_ks + p * g->b_ps;
        float *o = g->o + p * g->o_ps + (g->sum_k ? 0 : k * g->o_ks);
        int first = !g->sum_k || k == 0;
        const float *init = first && g->bias ? g->bias + p * g->W : NULL;
        int64_t i = 0;
        if (g->W > 16) {
            for (; i + 6 <= g->rows; i += 6)
                agg_tile_6_2(a + i * g->a_rs, g->a_rs, g->a_ss, b, g->b_ld, g->S, g->W, o + i * g->W, init, first);
            for (; i < g->rows; ++i)
                agg_tile_1_2(a + i * g->a_rs, g->a_rs, g->a_ss, b, g->b_ld, g->S, g->W, o + i * g->W, init, first);
        } else {
            for (; i + 6 <= g->rows; i += 6)
                agg_tile_6_1(a + i * g->a_rs, g->a_rs, g->a_ss, b, g->b_ld, g->S, g->W, o + i * g->W, init, first);
            for (; i < g->rows; ++i)
                agg_tile_1_1(a + i * g->a_rs, g->a_rs, g->a_ss, b, g->b_ld, g->S, g->W, o + i * g->W, init, first);
        }
    }
}
#pragma GCC pop_options

#define AGG_MAXJOBS 4

/* pairs(jobs, n, threads): for each pair p < n, every job in order (operands that jobs share, such as the
   gradient both backward products read, come from cache the second time). A job is the tuple
   (o, a, b, bias, K, rows, S, W, a_rs, a_ss, a_ps, a_ks, b_ld, b_ps, b_ks, o_ps, o_ks, sum_k); bias = 0: none. */
static PyObject *pairs(PyObject *self, PyObject *args)
{
    PyObject *jobs;
    long long n;
    int threads;
    agg_t g[AGG_MAXJOBS];
    if (!PyArg_ParseTuple(args, "O!Li", &PyTuple_Type, &jobs, &n, &threads))
        return NULL;
    Py_ssize_t nj = PyTuple_GET_SIZE(jobs);
    if (nj < 1 || nj > AGG_MAXJOBS || n < 0)
        return PyErr_Format(PyExc_ValueError, "_fused.pairs: 1 to %d jobs", AGG_MAXJOBS);
    for (Py_ssize_t j = 0; j < nj; ++j) {
        unsigned long long po, pa, pb, pbias;
        agg_t *q = &g[j];
        PyObject *job = PyTuple_GET_ITEM(jobs, j);
        if (!PyTuple_Check(job)
            || !PyArg_ParseTuple(job, "KKKKLLLLLLLLLLLLLi", &po, &pa, &pb, &pbias, &q->k_sub, &q->rows, &q->S,
                                 &q->W, &q->a_rs, &q->a_ss, &q->a_ps, &q->a_ks, &q->b_ld, &q->b_ps, &q->b_ks,
                                 &q->o_ps, &q->o_ks, &q->sum_k))
            return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "_fused.pairs: a job is a tuple");
        if (q->k_sub < 1 || q->rows < 1 || q->S < 1 || q->W < 1 || q->W > AGG_MAXW || !po || !pa || !pb)
            return PyErr_Format(PyExc_ValueError, "_fused.pairs: bad sizes");
        q->o = PTR(po);
        q->a = PTR(pa);
        q->b = PTR(pb);
        q->bias = pbias ? PTR(pbias) : NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < n; ++p)
        for (Py_ssize_t j = 0; j < nj; ++j)
            agg_pair(&g[j], p);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS, "Fused BatchNorm (training) + residual + ReLU on channels-last rows."},
    {"backward", backward, METH_VARARGS, "Its backward."},
    {"pool", pool, METH_VARARGS, "Temporal max-pooling of channels-last rows, or its backward."},
    {"pairs", pairs, METH_VARARGS, "Small per-pair matrix products of the CTR-GCN aggregation."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "MAXC", MAXC) < 0  /* the limits, for the caller's checks */
              || PyModule_AddIntConstant(m, "MAXSEG", MAXSEG) < 0
              || PyModule_AddIntConstant(m, "AGG_MAXW", AGG_MAXW) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
