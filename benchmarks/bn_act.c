/* Hand-written training-mode batch norm (+ residual add, + ReLU) for channels-last float32 tensors, seen as M
   rows of C floats: the kernels benchmarks/bn_kernels.py puts in place of Inductor's to see whether they shorten
   the CPU training step (they did not; BENCHMARKS.md). Not part of the package.

   Forward: one pass for the per-channel sums (float within blocks of rows, double across), one pass for
   y = act(x * scale + shift [+ res]). Backward: one pass for the sums of g and g * (x - mean) (g = dy masked by
   the ReLU, written to dres when there is a residual), one pass for dx. Each thread takes a fixed range of rows
   and the partial sums are added in range order, so results do not depend on scheduling.
   Build with -ffp-contract=off: the backward recomputes the forward's pre-ReLU value with the same expression to
   get the ReLU mask, and the two must round identically. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

typedef float v8 __attribute__((vector_size(32)));
static inline v8 ld(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v8 v) { memcpy(p, &v, sizeof v); }
typedef int32_t v8i __attribute__((vector_size(32)));
/* max(v, 0) that keeps NaN (as torch.relu does); g where v > 0 else 0 (as ReLU's backward, which reads y > 0). */
static inline v8 relu8(v8 v) { v8 z = {0}; return (v8)((v8i)v & ~(v8i)(v < z)); }
static inline v8 mask8(v8 v, v8 g) { v8 z = {0}; return (v8)((v8i)g & (v8i)(v > z)); }

#define BLOCK 128 /* rows summed in float before adding into the double totals */

/* Sums over rows [r0, r1) of u = a - pivot and of u*u (forward), or of g and g*(x - mean) (backward, `dy` given;
   g = dy masked by the ReLU when `relu`). Results are added into the double arrays s and q. */
static void row_sums(const float *restrict x, const float *restrict dy, const float *restrict res,
                     float *restrict dres, int64_t r0, int64_t r1, int64_t C, const float *restrict center,
                     const float *restrict scale, const float *restrict shift, int relu, double *restrict s,
                     double *restrict q) {
    int64_t C8 = C & ~(int64_t)7;
    /* The float block sums live in this thread's own cache lines: two threads writing one line every row would
       bounce it between their caches (false sharing), which made a 16-channel layer several times slower. */
    size_t bytes = ((size_t)(2 * C) * sizeof(float) + 63) & ~(size_t)63;
    float *fs = aligned_alloc(64, bytes), *fq = fs + C;
    for (int64_t b = r0; b < r1; b += BLOCK) {
        int64_t e = b + BLOCK < r1 ? b + BLOCK : r1;
        memset(fs, 0, C * sizeof(float));
        memset(fq, 0, C * sizeof(float));
        for (int64_t r = b; r < e; ++r) {
            const float *xr = x + r * C;
            int64_t c = 0;
            if (!dy) {
                for (; c < C8; c += 8) {
                    v8 u = ld(xr + c) - ld(center + c);
                    st(fs + c, ld(fs + c) + u);
                    st(fq + c, ld(fq + c) + u * u);
                }
                for (; c < C; ++c) { float u = xr[c] - center[c]; fs[c] += u; fq[c] += u * u; }
            } else {
                const float *gr = dy + r * C, *rr = res ? res + r * C : NULL;
                float *dr = dres ? dres + r * C : NULL;
                for (; c < C8; c += 8) {
                    v8 xv = ld(xr + c), g = ld(gr + c);
                    if (relu) {
                        v8 v = xv * ld(scale + c) + ld(shift + c); /* the forward's expression, rounded alike */
                        if (rr) v = v + ld(rr + c);
                        g = mask8(v, g);
                    }
                    if (dr) st(dr + c, g);
                    st(fs + c, ld(fs + c) + g);
                    st(fq + c, ld(fq + c) + g * (xv - ld(center + c)));
                }
                for (; c < C; ++c) {
                    float g = gr[c];
                    if (relu) {
                        float v = xr[c] * scale[c] + shift[c];
                        if (rr) v = v + rr[c];
                        if (!(v > 0.f)) g = 0.f;
                    }
                    if (dr) dr[c] = g;
                    fs[c] += g;
                    fq[c] += g * (xr[c] - center[c]);
                }
            }
        }
        for (int64_t c = 0; c < C; ++c) { s[c] += fs[c]; q[c] += fq[c]; }
    }
    free(fs);
}

/* Per-channel totals over all M rows: each of `nthreads` fixed row ranges is summed on its own and the partial
   sums are added in range order, so the result does not depend on which thread ran what. */
static void totals(const float *x, const float *dy, const float *res, float *dres, int64_t M, int64_t C,
                   const float *center, const float *scale, const float *shift, int relu, int nthreads, double *s,
                   double *q) {
    /* One 64-byte aligned stretch per range, so that no two ranges share a cache line. */
    size_t stride = ((size_t)(2 * C) * sizeof(double) + 63) / 64 * 8;
    double *part = aligned_alloc(64, stride * nthreads * sizeof(double));
    memset(part, 0, stride * nthreads * sizeof(double));
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        for (int k = t; k < nthreads; k += T) {
            double *pk = part + k * stride;
            row_sums(x, dy, res, dres, M * k / nthreads, M * (k + 1) / nthreads, C, center, scale, shift, relu, pk,
                     pk + C);
        }
    }
    for (int64_t c = 0; c < C; ++c) {
        double a = 0, b = 0;
        for (int k = 0; k < nthreads; ++k) { a += part[k * stride + c]; b += part[k * stride + C + c]; }
        s[c] = a;
        q[c] = b;
    }
    free(part);
}

/* y = act(x * scale + shift [+ res]) with the batch's statistics; res may be NULL.
   stats (4, C) out: mean, biased variance, scale, shift. */
int bn_act_forward(const float *x, const float *res, float *y, const float *w, const float *bias, float *stats,
                   int64_t M, int64_t C, double eps, int relu, int nthreads) {
    if (M < 1 || C < 1 || nthreads < 1) return 1;
    float *mean = stats, *var = stats + C, *scale = stats + 2 * C, *shift = stats + 3 * C;
    double *sq = malloc((size_t)(2 * C) * sizeof(double));
    /* Sums of x - x[row 0] (a pivot from the data), so that q/M - d*d does not cancel when |mean| >> std. */
    totals(x, NULL, NULL, NULL, M, C, x, NULL, NULL, 0, nthreads, sq, sq + C);
    for (int64_t c = 0; c < C; ++c) {
        double d = sq[c] / M, v = sq[C + c] / M - d * d, m = d + x[c];
        if (v < 0) v = 0;
        double inv = 1.0 / sqrt(v + eps);
        mean[c] = (float)m;
        var[c] = (float)v;
        scale[c] = (float)(w[c] * inv);
        shift[c] = (float)(bias[c] - m * w[c] * inv);
    }
    free(sq);
    int64_t C8 = C & ~(int64_t)7;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < M; ++r) {
        const float *xr = x + r * C, *rr = res ? res + r * C : NULL;
        float *yr = y + r * C;
        int64_t c = 0;
        for (; c < C8; c += 8) {
            v8 v = ld(xr + c) * ld(scale + c) + ld(shift + c);
            if (rr) v = v + ld(rr + c);
            st(yr + c, relu ? relu8(v) : v);
        }
        for (; c < C; ++c) {
            float v = xr[c] * scale[c] + shift[c];
            if (rr) v = v + rr[c];
            yr[c] = relu && v < 0.f ? 0.f : v;
        }
    }
    return 0;
}

/* dx, dweight, dbias (and dres, when res is given) of y = act(w * (x - mean) / sqrt(var + eps) + bias [+ res])
   with batch statistics; `stats` as the forward wrote them (its scale and shift recompute the ReLU mask exactly).
   With res, the masked gradient is written to dres in the first pass and read back from there in the second. */
int bn_act_backward(const float *dy, const float *x, const float *res, const float *w, const float *stats, float *dx,
                    float *dres, float *dw, float *db, int64_t M, int64_t C, double eps, int relu, int nthreads) {
    if (M < 1 || C < 1 || nthreads < 1 || (res && !dres)) return 1;
    const float *mean = stats, *var = stats + C, *scale = stats + 2 * C, *shift = stats + 3 * C;
    double *sq = malloc((size_t)(2 * C) * sizeof(double));
    float *k = malloc((size_t)(3 * C) * sizeof(float)), *a = k, *k2 = k + C, *k0 = k + 2 * C;
    totals(x, dy, res, dres, M, C, mean, scale, shift, relu, nthreads, sq, sq + C);
    if (res) { dy = dres; relu = 0; } /* the masked gradient is in dres now */
    for (int64_t c = 0; c < C; ++c) {
        double s1 = sq[c], s2 = sq[C + c], inv = 1.0 / sqrt((double)var[c] + eps), sc = w[c] * inv;
        db[c] = (float)s1;
        dw[c] = (float)(s2 * inv);
        /* dx = sc * (g - s1/M - (x - mean) * inv^2 * s2/M) */
        a[c] = (float)sc;
        k2[c] = (float)(sc * inv * inv * s2 / M);
        k0[c] = (float)(-sc * s1 / M);
    }
    free(sq);
    int64_t C8 = C & ~(int64_t)7;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < M; ++r) {
        const float *xr = x + r * C, *gr = dy + r * C;
        float *dr = dx + r * C;
        int64_t c = 0;
        for (; c < C8; c += 8) {
            v8 xv = ld(xr + c), g = ld(gr + c);
            if (relu) g = mask8(xv * ld(scale + c) + ld(shift + c), g);
            st(dr + c, ld(a + c) * g - ld(k2 + c) * (xv - ld(mean + c)) + ld(k0 + c));
        }
        for (; c < C; ++c) {
            float g = gr[c];
            if (relu && !(xr[c] * scale[c] + shift[c] > 0.f)) g = 0.f;
            dr[c] = a[c] * g - k2[c] * (xr[c] - mean[c]) + k0[c];
        }
    }
    free(k);
    return 0;
}
