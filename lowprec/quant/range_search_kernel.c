/* The L2 range search of lowprec/quant/range_search.py in C (AVX2 + F16C), 8 rows at a time.

   Owns nothing but speed: it computes what `range_search._search_chunk` computes (row ranges, the
   candidate grid, the tagged argmin, the over-relaxed least-squares steps, the final codes, packed)
   with the same float32 operations per value, so a row's qparams differ from the eager search only
   where sums taken in another order fall on the other side of a near-tie. Each group of 8 rows is
   transposed once into a 2 KB block (one row per vector lane) that stays in L1 for all the passes:
   the search reads each value from memory once, and the per-row arithmetic (fp16 rounding, argmin,
   refit) is vector code across the 8 rows. With `guard` it also applies lowprec/quant/range_guard.py's
   rule (min/max back where it is not worse; near-ties re-scored exactly in float64, as the torch
   guard does, bit for bit) and writes the fused rows' fp16 headers. Built on first use by
   `range_search_native`.
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

#ifdef __FMA__
#define ACC_SQ(acc, e) _mm256_fmadd_ps((e), (e), (acc)) /* acc + e^2 (one rounding) */
#else
#define ACC_SQ(acc, e) _mm256_add_ps((acc), _mm256_mul_ps((e), (e)))
#endif

/* t - q for t = (x - b) * inv, q = clamp(rint(t), 0, top) */
static inline v8 resid8(v8 xv, v8 b, v8 inv, v8 top) {
    v8 t = _mm256_mul_ps(_mm256_sub_ps(xv, b), inv);
    return _mm256_sub_ps(t, RINT(_mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), top)));
}

/* err8x2 for two candidates with the same bias: x - b is taken once. */
static void err8x2_same_b(const float *T, int64_t d, v8 b, v8 i0, v8 i1, v8 top, v8 out[2]) {
    const v8 zero = _mm256_setzero_ps();
    v8 a0 = zero, a1 = zero, c0 = zero, c1 = zero;
    int64_t j = 0;
    for (; j + 2 <= d; j += 2) {
        v8 u0 = _mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), b), u1 = _mm256_sub_ps(_mm256_loadu_ps(T + 8 * j + 8), b);
        v8 e;
        e = resid8(u0, zero, i0, top), a0 = ACC_SQ(a0, e);
        e = resid8(u1, zero, i0, top), a1 = ACC_SQ(a1, e);
        e = resid8(u0, zero, i1, top), c0 = ACC_SQ(c0, e);
        e = resid8(u1, zero, i1, top), c1 = ACC_SQ(c1, e);
    }
    if (j < d) {
        v8 u0 = _mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), b), e;
        e = resid8(u0, zero, i0, top), a0 = ACC_SQ(a0, e);
        e = resid8(u0, zero, i1, top), c0 = ACC_SQ(c0, e);
    }
    out[0] = _mm256_add_ps(a0, a1), out[1] = _mm256_add_ps(c0, c1);
}

/* Per lane: sum_j (t - q)^2 of two candidates (b0, inv0), (b1, inv1) in one sweep over T. */
static void err8x2(const float *T, int64_t d, v8 b0, v8 i0, v8 b1, v8 i1, v8 top, v8 out[2]) {
    const v8 zero = _mm256_setzero_ps();
    v8 a0 = zero, a1 = zero, c0 = zero, c1 = zero; /* four independent sums: no add latency chain */
    int64_t j = 0;
    for (; j + 2 <= d; j += 2) {
        v8 x0 = _mm256_loadu_ps(T + 8 * j), x1 = _mm256_loadu_ps(T + 8 * j + 8);
        v8 e;
        e = resid8(x0, b0, i0, top), a0 = ACC_SQ(a0, e);
        e = resid8(x1, b0, i0, top), a1 = ACC_SQ(a1, e);
        e = resid8(x0, b1, i1, top), c0 = ACC_SQ(c0, e);
        e = resid8(x1, b1, i1, top), c1 = ACC_SQ(c1, e);
    }
    if (j < d) {
        v8 x0 = _mm256_loadu_ps(T + 8 * j), e;
        e = resid8(x0, b0, i0, top), a0 = ACC_SQ(a0, e);
        e = resid8(x0, b1, i1, top), c0 = ACC_SQ(c0, e);
    }
    out[0] = _mm256_add_ps(a0, a1), out[1] = _mm256_add_ps(c0, c1);
}

#define STEP_TERMS(xv, r, s1, s2)                                       \
    do {                                                                \
        v8 t_ = _mm256_mul_ps(_mm256_sub_ps((xv), b), inv);             \
        v8 q_ = RINT(_mm256_min_ps(_mm256_max_ps(t_, zero), top));      \
        v8 e_ = _mm256_sub_ps(t_, q_);                                  \
        r = ACC_SQ(r, e_), s1 = _mm256_add_ps(s1, q_), s2 = ACC_SQ(s2, q_); \
    } while (0)

/* Per lane: sum (t - q)^2, sum q, sum q^2 (one refinement step's pass); even and odd j apart. */
static void sums8(const float *T, int64_t d, v8 b, v8 inv, v8 top, v8 out[3]) {
    const v8 zero = _mm256_setzero_ps();
    v8 r0 = zero, p0 = zero, q0 = zero, r1 = zero, p1 = zero, q1 = zero; /* kept in registers */
    int64_t j = 0;
    for (; j + 2 <= d; j += 2) {
        STEP_TERMS(_mm256_loadu_ps(T + 8 * j), r0, p0, q0);
        STEP_TERMS(_mm256_loadu_ps(T + 8 * j + 8), r1, p1, q1);
    }
    if (j < d) STEP_TERMS(_mm256_loadu_ps(T + 8 * j), r0, p0, q0);
    out[0] = _mm256_add_ps(r0, r1), out[1] = _mm256_add_ps(p0, p1), out[2] = _mm256_add_ps(q0, q1);
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

/* Per lane: mean and E[(x - mean)^2]; two partial sums each (no long add chain). */
static v8 mean_var8(const float *T, int64_t d, v8 n, v8 *var) {
    v8 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t j = 0;
    for (; j + 2 <= d; j += 2)
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(T + 8 * j)), a1 = _mm256_add_ps(a1, _mm256_loadu_ps(T + 8 * j + 8));
    if (j < d) a0 = _mm256_add_ps(a0, _mm256_loadu_ps(T + 8 * j));
    v8 mean = _mm256_div_ps(_mm256_add_ps(a0, a1), n);
    a0 = a1 = _mm256_setzero_ps();
    for (j = 0; j + 2 <= d; j += 2) {
        v8 u0 = _mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), mean), u1 = _mm256_sub_ps(_mm256_loadu_ps(T + 8 * j + 8), mean);
        a0 = ACC_SQ(a0, u0), a1 = ACC_SQ(a1, u1);
    }
    if (j < d) {
        v8 u = _mm256_sub_ps(_mm256_loadu_ps(T + 8 * j), mean);
        a0 = ACC_SQ(a0, u);
    }
    *var = _mm256_div_ps(_mm256_add_ps(a0, a1), n);
    return mean;
}

/* Per lane: min and max over the row; NaN for both where the row holds a NaN or an infinity. */
static void range8(const float *T, int64_t d, v8 *lo, v8 *hi) {
    v8 mn = V(INFINITY), mx = V(-INFINITY), nan = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; j++) {
        v8 v = _mm256_loadu_ps(T + 8 * j);
        mn = _mm256_min_ps(mn, v), mx = _mm256_max_ps(mx, v);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    v8 z = _mm256_mul_ps(_mm256_sub_ps(mx, mn), _mm256_setzero_ps()); /* NaN where mn or mx is infinite */
    v8 bad = _mm256_or_ps(nan, _mm256_cmp_ps(z, z, _CMP_UNORD_Q));
    *lo = BLEND(mn, V(NAN), bad), *hi = BLEND(mx, V(NAN), bad);
}

static inline v8 tag8(v8 e, int k) { /* errors >= 0 order like their bits; k goes in the low 4 */
    __m256i u = _mm256_and_si256(_mm256_castps_si256(e), _mm256_set1_epi32(-16));
    return _mm256_castsi256_ps(_mm256_or_si256(u, _mm256_set1_epi32(k)));
}

/* 8 vectors c[0..7] -> their transpose: lane r of result k is lane k of c[r]. */
static void transpose_regs(v8 c[8]) {
    v8 t0 = _mm256_unpacklo_ps(c[0], c[1]), t1 = _mm256_unpackhi_ps(c[0], c[1]);
    v8 t2 = _mm256_unpacklo_ps(c[2], c[3]), t3 = _mm256_unpackhi_ps(c[2], c[3]);
    v8 t4 = _mm256_unpacklo_ps(c[4], c[5]), t5 = _mm256_unpackhi_ps(c[4], c[5]);
    v8 t6 = _mm256_unpacklo_ps(c[6], c[7]), t7 = _mm256_unpackhi_ps(c[6], c[7]);
    v8 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    v8 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    v8 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    v8 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    c[0] = _mm256_permute2f128_ps(u0, u4, 0x20), c[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    c[2] = _mm256_permute2f128_ps(u2, u6, 0x20), c[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    c[4] = _mm256_permute2f128_ps(u0, u4, 0x31), c[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    c[6] = _mm256_permute2f128_ps(u2, u6, 0x31), c[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* Per lane: byte `i` of the packed row (codes i * per .. i * per + per - 1), in an int32. */
static inline __m256i code_byte(const float *T, int64_t i, int per, int bits, v8 b, v8 inv, v8 top) {
    __m256i acc = _mm256_setzero_si256();
    for (int k = 0; k < per; k++) {
        v8 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(T + 8 * (i * per + k)), b), inv);
        t = _mm256_min_ps(_mm256_max_ps(RINT(t), _mm256_setzero_ps()), top);
        acc = _mm256_or_si256(acc, _mm256_slli_epi32(_mm256_cvtps_epi32(t), k * bits));
    }
    return acc;
}

/* The codes of 8 rows (lane r = row r of `out`) packed into their rows, low bits first: 32 bytes
   a row at a time through a register transpose, the tail (rows of < 32 bytes left) byte by byte. */
static void pack8(const float *T, int64_t d, v8 b, v8 inv, v8 top, int bits, int m, uint8_t *out, int64_t stride) {
    const int per = 8 / bits; /* codes per byte */
    const int64_t nbytes = d / per;
    int64_t i0 = 0;
    for (; i0 + 32 <= nbytes; i0 += 32) {
        v8 w[8];
        for (int g = 0; g < 8; g++) { /* bytes i0 + 4 g .. + 3 of every row, as one int32 a lane */
            __m256i word = code_byte(T, i0 + 4 * g, per, bits, b, inv, top);
            for (int k = 1; k < 4; k++)
                word = _mm256_or_si256(word, _mm256_slli_epi32(code_byte(T, i0 + 4 * g + k, per, bits, b, inv, top), 8 * k));
            w[g] = _mm256_castsi256_ps(word);
        }
        transpose_regs(w); /* w[r] = the 32 bytes of row r */
        for (int r = 0; r < m; r++) _mm256_storeu_si256((__m256i *)(out + r * stride + i0), _mm256_castps_si256(w[r]));
    }
    uint32_t tmp[8 * 32];
    for (int64_t i = i0; i < nbytes; i++)
        _mm256_storeu_si256((__m256i *)(tmp + 8 * (i - i0)), code_byte(T, i, per, bits, b, inv, top));
    for (int r = 0; r < m; r++)
        for (int64_t i = i0; i < nbytes; i++) out[r * stride + i] = (uint8_t)tmp[8 * (i - i0) + r];
}

/* Min/max's stored (scale, bias) and the (sub, mul) its codes are computed with, per lane:
   FBGEMM's int4/int2 rule, or its int8 TBE recipe (range_search.minmax_qparams). */
static void minmax8(v8 lo, v8 hi, int bits, v8 top, v8 mm[4]) {
    if (bits == 8) {
        v8 rng = _mm256_sub_ps(hi, lo);
        mm[0] = h16v(_mm256_div_ps(rng, V(255.0f))), mm[1] = h16v(lo), mm[2] = lo;
        mm[3] = _mm256_div_ps(V(255.0f), _mm256_add_ps(rng, V(1e-8f)));
    } else {
        qparams8(lo, hi, top, &mm[0], &mm[1]);
        mm[2] = mm[1], mm[3] = _mm256_div_ps(V(1.0f), mm[0]);
    }
}

/* Per lane: the float32 squared error of encoding (s, b, sub, mul), as range_guard's approximate
   score (int8 min/max, whose codes are not the search's): sqrt, then squared, like vector_norm. */
static v8 approx_err8(const float *T, int64_t d, const v8 e[4], v8 top) {
    v8 acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; j++) {
        v8 xv = _mm256_loadu_ps(T + 8 * j);
        v8 q = RINT(_mm256_mul_ps(_mm256_sub_ps(xv, e[2]), e[3]));
        q = _mm256_min_ps(_mm256_max_ps(q, _mm256_setzero_ps()), top);
        v8 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(q, e[0]), e[1]), xv);
        acc = ACC_SQ(acc, diff);
    }
    v8 r = _mm256_sqrt_ps(acc);
    return _mm256_mul_ps(r, r);
}

/* Lane r's exact squared error (float64 sum of the float32 dequantized row minus the row; sqrt,
   then squared, like range_guard's vector_norm) for encoding (s, b, sub, mul). */
static double exact_err(const float *T, int64_t d, int r, float s, float b, float sub, float mul, float top) {
    double acc = 0.0;
    for (int64_t j = 0; j < d; j++) {
        float x = T[8 * j + r], q = rintf((x - sub) * mul);
        q = q < 0.0f ? 0.0f : (q > top ? top : q);
        double e = (double)(q * s + b) - (double)x;
        acc += e * e;
    }
    double n = sqrt(acc);
    return n * n;
}

/* The guard of range_guard.guard on 8 lanes: enc[0..3] = the search's (scale, bias, sub, mul),
   *err its approximate error, emm min/max's (int4/int2: from the search); min/max goes back where
   it equals the search's choice, or where the scores are too close to trust (or the bias is far
   from the range) and the exact float64 errors say it is not worse. Returns the rows among the
   first m that the caller must reject: a non-finite range, or min/max qparams beyond fp16. */
static int guard8(const float *T, int64_t d, int m, int bits, v8 top, v8 lo, v8 hi, v8 emm, v8 enc[4], v8 *err) {
    const v8 zero = _mm256_setzero_ps(), sign = V(-0.0f);
    v8 mm[4];
    minmax8(lo, hi, bits, top, mm);
    if (bits == 8) emm = approx_err8(T, d, mm, top);
    v8 same = bits == 8 ? zero
                        : _mm256_and_ps(_mm256_cmp_ps(enc[0], mm[0], _CMP_EQ_OQ), _mm256_cmp_ps(enc[1], mm[1], _CMP_EQ_OQ));
    v8 slack = _mm256_mul_ps(_mm256_mul_ps(V((float)(2e-4 * (double)d)), mm[0]), mm[0]);
    v8 as = _mm256_andnot_ps(sign, mm[0]), ab = _mm256_andnot_ps(sign, mm[1]);
    v8 unsure = _mm256_or_ps(_mm256_cmp_ps(*err, _mm256_sub_ps(_mm256_mul_ps(V(0.999f), emm), slack), _CMP_GE_OQ),
                             _mm256_cmp_ps(ab, _mm256_mul_ps(V(200.0f), as), _CMP_GT_OQ));
    int lanes = (1 << m) - 1, check = _mm256_movemask_ps(_mm256_andnot_ps(same, unsure)) & lanes;
    if (check) {
        float f[4][8], g[4][8], rv[8];
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(f[k], enc[k]), _mm256_storeu_ps(g[k], mm[k]);
        _mm256_storeu_ps(rv, same);
        for (int r = 0; r < 8; r++)
            if (check >> r & 1) {
                float t = (float)((1 << bits) - 1);
                int back = exact_err(T, d, r, g[0][r], g[1][r], g[2][r], g[3][r], t) <=
                           exact_err(T, d, r, f[0][r], f[1][r], f[2][r], f[3][r], t);
                rv[r] = back ? -1.0f : 0.0f; /* sign bit set: blend takes min/max */
            }
        same = _mm256_loadu_ps(rv);
    }
    for (int k = 0; k < 4; k++) enc[k] = BLEND(enc[k], mm[k], same);
    *err = BLEND(*err, emm, same);
    v8 finite = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(lo, lo), zero, _CMP_EQ_OQ),
                              _mm256_cmp_ps(_mm256_sub_ps(hi, hi), zero, _CMP_EQ_OQ));
    v8 big = _mm256_or_ps(_mm256_cmp_ps(as, V(65504.0f), _CMP_GT_OQ), _mm256_cmp_ps(ab, V(65504.0f), _CMP_GT_OQ));
    return __builtin_popcount(_mm256_movemask_ps(_mm256_or_ps(_mm256_andnot_ps(finite, V(-0.0f)), big)) & lanes);
}

/* The fp16 (scale, bias) header of each of the first m rows: 4 bytes at head + r * stride. */
static void header8(v8 s, v8 b, int m, uint8_t *head, int64_t stride) {
    uint16_t hs[8], hb[8];
    _mm_storeu_si128((__m128i *)hs, _mm256_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_storeu_si128((__m128i *)hb, _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (int r = 0; r < m; r++) memcpy(head + r * stride, hs + r, 2), memcpy(head + r * stride + 2, hb + r, 2);
}

/* The search over `rows` rows of x [rows, d] (row-major), 8 rows at a time (one per lane);
   cuts[2 k], cuts[2 k + 1] = (a, c). Writes scale, bias, err, err_minmax [rows] and the packed
   codes (row stride `pstride` bytes). With `guard`, min/max is put back where it is not worse
   (guard8: scale, bias, err and the codes are then the kept encoding's), *flagged counts the rows
   the caller must reject, and `head` (if not NULL; row stride `pstride`) gets each row's fp16
   (scale, bias). */
int lowprec_l2_search(const float *x, int64_t rows, int d, float *lo, float *hi, int have_range,
                      const float *cuts, int ncand, int bits, int steps, float w,
                      float *scale, float *bias, float *err, float *err_mm, uint8_t *packed,
                      int64_t pstride, int guard, uint8_t *head, int64_t *flagged) {
    if (ncand < 1 || ncand > 16 || d < 1 || d > 65536 || (bits != 8 && bits != 4 && bits != 2)) return -1;
    const v8 top = V((float)((1 << bits) - 1)), n = V((float)d), vw = V(w);
    float *T = (float *)_mm_malloc(sizeof(float) * 8 * (size_t)d, 64);
    int64_t bad = 0;
    if (!T) return -2;
    for (int64_t i = 0; i < rows; i += 8) {
        int m = rows - i < 8 ? (int)(rows - i) : 8;
        if (i + 16 <= rows) /* the next group's rows into cache while this one computes (6-15% faster */
            for (int64_t o = 0; o < 8 * (int64_t)d; o += 16) /* on the shared machine; 2 groups ahead: same) */
                _mm_prefetch((const char *)(x + (i + 8) * d + o), _MM_HINT_T0);
        transpose8(x + i * d, d, m, T);
        float l8[8], h8[8];
        v8 vl, vh;
        if (have_range) {
            for (int r = 0; r < 8; r++) l8[r] = lo[i + (r < m ? r : m - 1)], h8[r] = hi[i + (r < m ? r : m - 1)];
            vl = _mm256_loadu_ps(l8), vh = _mm256_loadu_ps(h8);
        } else {
            range8(T, d, &vl, &vh);
            _mm256_storeu_ps(l8, vl), _mm256_storeu_ps(h8, vh);
            for (int r = 0; r < m; r++) lo[i + r] = l8[r], hi[i + r] = h8[r];
        }
        v8 rng = _mm256_sub_ps(vh, vl);
        v8 cs[16], cb[16], ce[16], ct[16], low = V(INFINITY);
        for (int k = 0; k < ncand; k++) {
            v8 a = _mm256_add_ps(vl, _mm256_mul_ps(V(cuts[2 * k]), rng));
            v8 c = _mm256_sub_ps(vh, _mm256_mul_ps(V(cuts[2 * k + 1]), rng));
            qparams8(a, c, top, &cs[k], &cb[k]);
        }
        for (int k = 0; k < ncand; k += 2) {
            int k1 = k + 1 < ncand ? k + 1 : k; /* an odd count evaluates the last one twice */
            v8 e[2];
            v8 i0 = _mm256_div_ps(V(1.0f), cs[k]), i1 = _mm256_div_ps(V(1.0f), cs[k1]);
            if (cuts[2 * k] == cuts[2 * k1]) /* same low cut: the same bias on every lane */
                err8x2_same_b(T, d, cb[k], i0, i1, top, e);
            else
                err8x2(T, d, cb[k], i0, cb[k1], i1, top, e);
            ce[k] = e[0], ce[k1] = e[1];
        }
        for (int k = 0; k < ncand; k++) {
            ce[k] = _mm256_mul_ps(ce[k], _mm256_mul_ps(cs[k], cs[k]));
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
        v8 enc[4] = {bs, bb, bb, _mm256_div_ps(V(1.0f), bs)};
        if (guard) {
            bad += guard8(T, d, m, bits, top, vl, vh, ce[0], enc, &be);
            if (head) header8(enc[0], enc[1], m, head + i * pstride, pstride);
        }
        float o[4][8];
        _mm256_storeu_ps(o[0], enc[0]), _mm256_storeu_ps(o[1], enc[1]), _mm256_storeu_ps(o[2], be);
        _mm256_storeu_ps(o[3], ce[0]);
        for (int r = 0; r < m; r++)
            scale[i + r] = o[0][r], bias[i + r] = o[1][r], err[i + r] = o[2][r], err_mm[i + r] = o[3][r];
        pack8(T, d, enc[2], enc[3], top, bits, m, packed + i * pstride, pstride);
    }
    _mm_free(T);
    if (flagged) *flagged = bad;
    return 0;
}
