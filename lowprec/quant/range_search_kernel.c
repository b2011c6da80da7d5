/* The L2 range search of lowprec/quant/range_search.py, one row at a time, in C (AVX + F16C).

   Owns nothing but speed: it computes what `range_search._search_chunk` computes (the candidate
   grid, the tagged argmin, the over-relaxed least-squares steps, the final codes, packed), in the
   same float32 operations in the same order per value, so a row's qparams differ from the eager
   search only where sums taken in another order fall on the other side of a near-tie. Each row
   (a few hundred bytes) stays in L1 for all its passes: the search reads each value from memory
   once. Built on first use by `range_search_native` (cc -O3 -march=native); see its docstring.
*/
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

#if !defined(__AVX2__) || !defined(__F16C__)
#error "the native L2 range search needs AVX2 and F16C"
#endif

typedef __m256 v8;
#define V(x) _mm256_set1_ps(x)
#define RINT(v) _mm256_round_ps((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define BLEND(a, b, m) _mm256_blendv_ps((a), (b), (m)) /* m ? b : a */

static inline v8 h16v(v8 v) { /* fp16 round trip of 8 floats */
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* Rows r0..r7 of x (row r >= n repeats row n - 1) into T [d][8]: lane r of T[j] is x[r][j]. */
static void transpose8(const float *x, int64_t d, int n, float *T) {
    const float *p[8];
    for (int r = 0; r < 8; r++) p[r] = x + (r < n ? r : n - 1) * d;
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
        v8 t0 = _mm256_unpacklo_ps(_mm256_loadu_ps(p[0] + j), _mm256_loadu_ps(p[1] + j));
        v8 t1 = _mm256_unpackhi_ps(_mm256_loadu_ps(p[0] + j), _mm256_loadu_ps(p[1] + j));
        v8 t2 = _mm256_unpacklo_ps(_mm256_loadu_ps(p[2] + j), _mm256_loadu_ps(p[3] + j));
        v8 t3 = _mm256_unpackhi_ps(_mm256_loadu_ps(p[2] + j), _mm256_loadu_ps(p[3] + j));
        v8 t4 = _mm256_unpacklo_ps(_mm256_loadu_ps(p[4] + j), _mm256_loadu_ps(p[5] + j));
        v8 t5 = _mm256_unpackhi_ps(_mm256_loadu_ps(p[4] + j), _mm256_loadu_ps(p[5] + j));
        v8 t6 = _mm256_unpacklo_ps(_mm256_loadu_ps(p[6] + j), _mm256_loadu_ps(p[7] + j));
        v8 t7 = _mm256_unpackhi_ps(_mm256_loadu_ps(p[6] + j), _mm256_loadu_ps(p[7] + j));
        v8 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        v8 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        v8 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        v8 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        float *o = T + j * 8;
        _mm256_storeu_ps(o + 0, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(o + 32, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(o + 40, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(o + 48, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(o + 56, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (; j < d; j++)
        for (int r = 0; r < 8; r++) T[j * 8 + r] = p[r][j];
}

/* Per lane: sum_j (t - q)^2 with t = (x - b) * inv, q = clamp(rint(t), 0, top). */
static v8 err8(const float *T, int64_t d, v8 b, v8 inv, v8 top) {
    const v8 zero = _mm256_setzero_ps();
    v8 a0 = zero, a1 = zero;
    int64_t j = 0;
    for (; j + 2 <= d; j += 2) {
        v8 t0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), b), inv);
        v8 t1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(T + 8 * j + 8), b), inv);
        v8 e0 = _mm256_sub_ps(t0, RINT(_mm256_min_ps(_mm256_max_ps(t0, zero), top)));
        v8 e1 = _mm256_sub_ps(t1, RINT(_mm256_min_ps(_mm256_max_ps(t1, zero), top)));
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(e0, e0));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(e1, e1));
    }
    for (; j < d; j++) {
        v8 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), b), inv);
        v8 e = _mm256_sub_ps(t, RINT(_mm256_min_ps(_mm256_max_ps(t, zero), top)));
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(e, e));
    }
    return _mm256_add_ps(a0, a1);
}

/* Per lane: sum (t - q)^2, sum q, sum q^2 (one refinement step's pass). */
static void sums8(const float *T, int64_t d, v8 b, v8 inv, v8 top, v8 out[3]) {
    const v8 zero = _mm256_setzero_ps();
    v8 r = zero, s1 = zero, s2 = zero;
    for (int64_t j = 0; j < d; j++) {
        v8 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), b), inv);
        v8 q = RINT(_mm256_min_ps(_mm256_max_ps(t, zero), top));
        v8 e = _mm256_sub_ps(t, q);
        r = _mm256_add_ps(r, _mm256_mul_ps(e, e));
        s1 = _mm256_add_ps(s1, q);
        s2 = _mm256_add_ps(s2, _mm256_mul_ps(q, q));
    }
    out[0] = r, out[1] = s1, out[2] = s2;
}

/* FBGEMM's (scale, bias) for the ranges [lo, hi] (range_search.qparams_from_range). */
static void qparams8(v8 lo, v8 hi, v8 top, v8 *s, v8 *b) {
    const v8 zero = _mm256_setzero_ps(), one = V(1.0f);
    v8 bias = h16v(lo), r = _mm256_sub_ps(hi, bias);
    v8 sc = h16v(BLEND(_mm256_div_ps(r, top), one, _mm256_cmp_ps(r, zero, _CMP_EQ_OQ)));
    *s = BLEND(sc, one, _mm256_cmp_ps(sc, zero, _CMP_EQ_OQ)), *b = bias;
}

/* One over-relaxed line-fit step (range_search._refit), kept on the lanes where it is valid. */
static void refit8(v8 n, v8 mean, v8 var, v8 w, const v8 sums[3], v8 *s, v8 *b) {
    const v8 zero = _mm256_setzero_ps(), one = V(1.0f);
    v8 inv = _mm256_div_ps(one, *s);
    v8 m_q = _mm256_div_ps(sums[1], n), m_qq = _mm256_div_ps(sums[2], n);
    v8 m_t = _mm256_mul_ps(_mm256_sub_ps(mean, *b), inv);
    v8 m_tt = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(var, inv), inv), _mm256_mul_ps(m_t, m_t));
    v8 var_q = _mm256_sub_ps(m_qq, _mm256_mul_ps(m_q, m_q));
    v8 cov = _mm256_sub_ps(
        _mm256_mul_ps(_mm256_sub_ps(_mm256_add_ps(m_tt, m_qq), _mm256_div_ps(sums[0], n)), V(0.5f)),
        _mm256_mul_ps(m_t, m_q));
    v8 alpha = _mm256_div_ps(cov, var_q);
    v8 ns = h16v(_mm256_mul_ps(*s, _mm256_add_ps(one, _mm256_mul_ps(w, _mm256_sub_ps(alpha, one)))));
    v8 nb = h16v(_mm256_add_ps(*b, _mm256_mul_ps(_mm256_mul_ps(w, *s),
                                                 _mm256_sub_ps(m_t, _mm256_mul_ps(alpha, m_q)))));
    v8 p = _mm256_mul_ps(ns, nb);
    v8 ok = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(p, p), zero, _CMP_EQ_OQ), /* finite */
                          _mm256_and_ps(_mm256_cmp_ps(ns, zero, _CMP_NEQ_OQ), _mm256_cmp_ps(var_q, zero, _CMP_GT_OQ)));
    *s = BLEND(*s, ns, ok), *b = BLEND(*b, nb, ok);
}

/* Per lane: mean and E[(x - mean)^2]. */
static v8 mean_var8(const float *T, int64_t d, v8 n, v8 *var) {
    v8 a = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; j++) a = _mm256_add_ps(a, _mm256_loadu_ps(T + 8 * j));
    v8 mean = _mm256_div_ps(a, n);
    a = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; j++) {
        v8 u = _mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), mean);
        a = _mm256_add_ps(a, _mm256_mul_ps(u, u));
    }
    *var = _mm256_div_ps(a, n);
    return mean;
}

static inline v8 tag8(v8 e, int k) { /* errors >= 0 order like their bits; k goes in the low 4 */
    __m256i u = _mm256_and_si256(_mm256_castps_si256(e), _mm256_set1_epi32(-16));
    return _mm256_castsi256_ps(_mm256_or_si256(u, _mm256_set1_epi32(k)));
}

static void pack_row(const float *x, int d, float b, float inv, float top, int bits, uint8_t *out) {
    uint8_t q[d];
    const __m256 vb = _mm256_set1_ps(b), vi = _mm256_set1_ps(inv), vt = _mm256_set1_ps(top);
    int j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vb), vi);
        t = _mm256_min_ps(_mm256_max_ps(_mm256_round_ps(t, 8), _mm256_setzero_ps()), vt);
        __m256i v = _mm256_cvtps_epi32(t); /* exact: t holds an integer in [0, top] */
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extractf128_si256(v, 1));
        _mm_storel_epi64((__m128i *)(q + j), _mm_packus_epi16(w, w));
    }
    for (; j < d; j++)
        q[j] = (uint8_t)fminf(fmaxf(nearbyintf((x[j] - b) * inv), 0.0f), top);
    if (bits == 8) {
        memcpy(out, q, d);
    } else if (bits == 4) {
        for (int i = 0; i < d / 2; i++) out[i] = q[2 * i] | (q[2 * i + 1] << 4);
    } else {
        for (int i = 0; i < d / 4; i++)
            out[i] = q[4 * i] | (q[4 * i + 1] << 2) | (q[4 * i + 2] << 4) | (q[4 * i + 3] << 6);
    }
}

/* The search over `rows` rows of x [rows, d] (row-major), 8 rows at a time (one per lane);
   cuts[2 k], cuts[2 k + 1] = (a, c). Writes scale, bias, err, err_minmax [rows] and the packed
   codes (row stride `pstride` bytes). */
int lowprec_l2_search(const float *x, int64_t rows, int d, const float *lo, const float *hi,
                      const float *cuts, int ncand, int bits, int steps, float w,
                      float *scale, float *bias, float *err, float *err_mm, uint8_t *packed,
                      int64_t pstride) {
    if (ncand < 1 || ncand > 16 || d < 1 || d > 65536 || (bits != 8 && bits != 4 && bits != 2)) return -1;
    const v8 top = V((float)((1 << bits) - 1)), n = V((float)d), vw = V(w);
    const float ftop = (float)((1 << bits) - 1);
    float *T = (float *)_mm_malloc(sizeof(float) * 8 * (size_t)d, 64);
    if (!T) return -2;
    for (int64_t i = 0; i < rows; i += 8) {
        int m = rows - i < 8 ? (int)(rows - i) : 8;
        transpose8(x + i * d, d, m, T);
        float l8[8], h8[8];
        for (int r = 0; r < 8; r++) l8[r] = lo[i + (r < m ? r : m - 1)], h8[r] = hi[i + (r < m ? r : m - 1)];
        v8 vl = _mm256_loadu_ps(l8), vh = _mm256_loadu_ps(h8), rng = _mm256_sub_ps(vh, vl);
        v8 cs[16], cb[16], ce[16], ct[16], low = V(INFINITY);
        for (int k = 0; k < ncand; k++) {
            v8 a = _mm256_add_ps(vl, _mm256_mul_ps(V(cuts[2 * k]), rng));
            v8 c = _mm256_sub_ps(vh, _mm256_mul_ps(V(cuts[2 * k + 1]), rng));
            qparams8(a, c, top, &cs[k], &cb[k]);
            ce[k] = _mm256_mul_ps(err8(T, d, cb[k], _mm256_div_ps(V(1.0f), cs[k]), top), _mm256_mul_ps(cs[k], cs[k]));
            ct[k] = tag8(ce[k], k);
            low = _mm256_min_ps(low, ct[k]);
        }
        v8 bs = cs[0], bb = cb[0], be = ce[0];
        for (int k = 1; k < ncand; k++) {
            v8 pick = _mm256_cmp_ps(ct[k], low, _CMP_EQ_OQ);
            bs = BLEND(bs, cs[k], pick), bb = BLEND(bb, cb[k], pick), be = BLEND(be, ce[k], pick);
        }
        if (steps > 0) {
            v8 var, mean = mean_var8(T, d, n, &var), sums[3], s = bs, b = bb;
            sums8(T, d, b, _mm256_div_ps(V(1.0f), s), top, sums);
            for (int st = 0; st < steps; st++) {
                refit8(n, mean, var, vw, sums, &s, &b);
                sums8(T, d, b, _mm256_div_ps(V(1.0f), s), top, sums);
                v8 e = _mm256_mul_ps(_mm256_mul_ps(sums[0], s), s);
                v8 better = _mm256_cmp_ps(e, be, _CMP_LT_OQ);
                bs = BLEND(bs, s, better), bb = BLEND(bb, b, better), be = BLEND(be, e, better);
            }
        }
        float o[4][8];
        _mm256_storeu_ps(o[0], bs), _mm256_storeu_ps(o[1], bb), _mm256_storeu_ps(o[2], be);
        _mm256_storeu_ps(o[3], ce[0]);
        for (int r = 0; r < m; r++) {
            scale[i + r] = o[0][r], bias[i + r] = o[1][r], err[i + r] = o[2][r], err_mm[i + r] = o[3][r];
            pack_row(x + (i + r) * d, d, o[1][r], 1.0f / o[0][r], ftop, bits, packed + (i + r) * pstride);
        }
    }
    _mm_free(T);
    return 0;
}
