/* Optional C kernels for skelact.models.bnact: training-mode BatchNorm fused with the residual add and the
 * ReLU that follow it in a CTR-GCN unit, forward and backward, on float32 channels-last rows.
 *
 * A channels-last (B, C, T, V) tensor is N = B·T·V rows of C contiguous channels. With per-channel batch
 * statistics mean, var (biased) and invstd = 1/sqrt(var + eps):
 *
 *   forward   y = relu(x·s + h + res),  s = w·invstd, h = b − mean·s   (res and the ReLU optional)
 *   backward  g' = g·[y > 0] (g without the ReLU; NaN in y passes g, as ATen), the residual's gradient;
 *             dx = s·(g' − Σg'/N − x̂·Σg'x̂/N),  dw = Σg'x̂,  db = Σg'   with x̂ = (x − mean)·invstd
 *
 * Each direction is two passes over the rows: per-channel sums, then one elementwise pass (ATen needs a BN
 * kernel, an add and a ReLU, each a pass or more, and the same again backward). The sums are taken in
 * double over a fixed partition of the rows (NCHUNK chunks, combined in order), so results do not depend
 * on the thread count, nor (built with -ffp-contract=off) on the vector width. NaN propagates as through
 * PyTorch's layers. Threads: OpenMP, as many as the caller asks (torch.get_num_threads()); the GIL is
 * released while a kernel runs. Pointers come from torch.Tensor.data_ptr(); the caller (bnact.py) checks
 * dtype, device, layout and sizes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define NCHUNK 64
#define MAXC 4096  /* channels at most */

/* The row loops are compiled for AVX-512, AVX2 and baseline x86-64, chosen at load time (GCC, clang). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* Per-channel sums over rows: s1 = Σ a, s2 = Σ a·b, with a masked by m > 0 when m is given. */
VECTOR_CLONES
static void chunk_sums(const float *restrict a, const float *restrict b, const float *restrict m,
                       double *restrict s1, double *restrict s2, int64_t rows, int64_t c)
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
            m += c;
        } else {
            for (int64_t j = 0; j < c; ++j) {
                s1[j] += a[j];
                s2[j] += (double)a[j] * b[j];
            }
        }
    }
}

/* s1, s2 (c each) := the sums over all n rows; 0 on success, -1 when out of memory. */
static int channel_sums(const float *a, const float *b, const float *m, double *s1, double *s2,
                        int64_t n, int64_t c, int threads)
{
    double *part = calloc((size_t)(2 * NCHUNK * c), sizeof(double));
    if (!part)
        return -1;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < NCHUNK; ++k) {
        int64_t lo = n * k / NCHUNK, hi = n * (k + 1) / NCHUNK;
        chunk_sums(a + lo * c, b + lo * c, m ? m + lo * c : NULL, part + 2 * k * c, part + (2 * k + 1) * c,
                   hi - lo, c);
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
                      float *restrict gx, float *restrict gres, const float *restrict ca,
                      const float *restrict cb, const float *restrict cc, int64_t rows, int64_t c)
{
    for (int64_t r = 0; r < rows; ++r, g += c, x += c, gx += c) {
        if (y) {
            if (gres) {
                for (int64_t j = 0; j < c; ++j) {
                    float gj = g[j], gv = y[j] <= 0.f ? 0.f : gj;
                    gres[j] = gv;
                    gx[j] = ca[j] * gv + cb[j] * x[j] + cc[j];
                }
                gres += c;
            } else {
                for (int64_t j = 0; j < c; ++j) {
                    float gj = g[j], gv = y[j] <= 0.f ? 0.f : gj;
                    gx[j] = ca[j] * gv + cb[j] * x[j] + cc[j];
                }
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

/* forward(x, res, y, w, b, stats, n, c, relu, eps, threads): stats (3c floats) := mean, biased var, invstd;
   res = 0 for none. */
static PyObject *forward(PyObject *self, PyObject *args)
{
    unsigned long long px, pres, py, pw, pb, pstats;
    long long n, c;
    int relu, threads;
    double eps;
    if (!PyArg_ParseTuple(args, "KKKKKKLLpdi", &px, &pres, &py, &pw, &pb, &pstats, &n, &c, &relu, &eps,
                          &threads))
        return NULL;
    if (c < 1 || c > MAXC || n < 1)
        return PyErr_Format(PyExc_ValueError, "_fused.forward: %lld channels, %lld rows", c, n);
    const float *x = PTR(px), *res = pres ? PTR(pres) : NULL, *w = PTR(pw), *b = PTR(pb);
    float *y = PTR(py), *stats = PTR(pstats);
    double *sums = malloc((size_t)(2 * c) * sizeof(double));
    float *coef = malloc((size_t)(2 * c) * sizeof(float));
    int failed = !sums || !coef;
    Py_BEGIN_ALLOW_THREADS
    if (!failed)
        failed = channel_sums(x, x, NULL, sums, sums + c, n, c, threads);
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
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t k = 0; k < NCHUNK; ++k) {
            int64_t lo = n * k / NCHUNK, hi = n * (k + 1) / NCHUNK;
            apply_rows(x + lo * c, res ? res + lo * c : NULL, y + lo * c, coef, coef + c, relu, hi - lo, c);
        }
    }
    Py_END_ALLOW_THREADS
    return finish(sums, coef, failed);
}

/* backward(g, x, y, gx, gres, w, mean, invstd, gwb, n, c, threads): gwb (2c floats) := dw, db;
   y = 0 without the ReLU; gres = 0 when the masked gradient is not wanted. */
static PyObject *backward(PyObject *self, PyObject *args)
{
    unsigned long long pg, px, py, pgx, pgres, pw, pmean, pinv, pgwb;
    long long n, c;
    int threads;
    if (!PyArg_ParseTuple(args, "KKKKKKKKKLLi", &pg, &px, &py, &pgx, &pgres, &pw, &pmean, &pinv, &pgwb, &n,
                          &c, &threads))
        return NULL;
    if (c < 1 || c > MAXC || n < 1)
        return PyErr_Format(PyExc_ValueError, "_fused.backward: %lld channels, %lld rows", c, n);
    const float *g = PTR(pg), *x = PTR(px), *y = py ? PTR(py) : NULL, *w = PTR(pw), *mean = PTR(pmean),
                *invstd = PTR(pinv);
    float *gx = PTR(pgx), *gres = pgres ? PTR(pgres) : NULL, *gwb = PTR(pgwb);
    double *sums = malloc((size_t)(2 * c) * sizeof(double));
    float *coef = malloc((size_t)(3 * c) * sizeof(float));
    int failed = !sums || !coef;
    Py_BEGIN_ALLOW_THREADS
    if (!failed)
        failed = channel_sums(g, x, y, sums, sums + c, n, c, threads);  /* Σg', Σg'·x */
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
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t k = 0; k < NCHUNK; ++k) {
            int64_t lo = n * k / NCHUNK, hi = n * (k + 1) / NCHUNK;
            grad_rows(g + lo * c, x + lo * c, y ? y + lo * c : NULL, gx + lo * c, gres ? gres + lo * c : NULL,
                      coef, coef + c, coef + 2 * c, hi - lo, c);
        }
    }
    Py_END_ALLOW_THREADS
    return finish(sums, coef, failed);
}

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS, "Fused BatchNorm (training) + residual + ReLU on channels-last rows."},
    {"backward", backward, METH_VARARGS, "Its backward."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fused(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "MAXC", MAXC) < 0) {  /* the channel limit, for the caller's check */
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
