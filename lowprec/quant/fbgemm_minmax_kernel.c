/* The min/max path's native parts (AVX2): the NaN/Inf check FBGEMM's quantize ops do not make, and
   the loop that calls FBGEMM's own int4/int2 quantize routine block by block straight into the
   artifact's row layout.

   Owns nothing numeric: the codes, scales and biases are FBGEMM's (the routine behind
   torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf, called through a pointer the caller
   looks up in FBGEMM's library). What it adds, per block of rows small enough to stay in L1/L2:
   - the check every value is finite, read right after FBGEMM's routine read the same block, so
     from cache: one vector add per 8 values into 8 running sums (a NaN or an infinity makes its
     sum NaN or infinite; half the instructions of an exponent test, measured 2x faster), and
     only where a sum is not finite the exact test of each value, row by row (which also clears
     a sum that overflowed on huge finite values);
   - the rearrangement from FBGEMM's [codes | fp16 scale | fp16 bias] rows to [scale | bias |
     codes]: FBGEMM writes its rows 4 bytes past the output rows' starts, so its codes land in
     place and each row's (scale, bias) word lands in the next row's first word, moved back one
     row while the block is in cache (the output needs 4 spare bytes at its end);
   - the check both fp16 halves of each (scale, bias) word are finite.
   Built on first use by `fbgemm_minmax_native` (lowprec.native).
*/
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if !defined(__AVX2__)
#error "the min/max path's native check needs AVX2"
#endif

/* FBGEMM's FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf<float>; minmax NULL: it takes each row's. */
typedef void (*nbit_quantize_fn)(int bits, const float *x, size_t rows, int dim, uint8_t *out,
                                 const float *minmax);

static inline int bad_value(const float *p) {
    uint32_t b;
    memcpy(&b, p, 4);
    return (b & 0x7fffffffu) > 0x7f7fffffu;
}

/* 1 if a sum of x[0..n) in 8 accumulators is not finite: every NaN or +-Inf makes it so (and
   so may an overflow of huge finite values, which the caller's exact scan then clears). */
static int any_non_finite(const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
        a4 = _mm256_add_ps(a4, _mm256_loadu_ps(x + i + 32));
        a5 = _mm256_add_ps(a5, _mm256_loadu_ps(x + i + 40));
        a6 = _mm256_add_ps(a6, _mm256_loadu_ps(x + i + 48));
        a7 = _mm256_add_ps(a7, _mm256_loadu_ps(x + i + 56));
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
    const __m256 z = _mm256_setzero_ps(); /* s * 0: +-0 where s is finite, NaN where it is not */
#define NF(a, b) _mm256_or_ps(_mm256_mul_ps(a, z), _mm256_mul_ps(b, z))
    const __m256 m = _mm256_or_ps(_mm256_or_ps(NF(a0, a1), NF(a2, a3)), _mm256_or_ps(NF(a4, a5), NF(a6, a7)));
#undef NF
    const __m256 nan = _mm256_cmp_ps(m, m, _CMP_UNORD_Q);
    int bad = !_mm256_testz_ps(nan, nan);
    for (; i < n; i++) bad |= bad_value(x + i);
    return bad;
}

/* The first of rows x[0..rows) (dim values each, contiguous) holding NaN or +-Inf; -1 if none.
   One vector pass over all of them; only when it finds something, the exact row-by-row test. */
int64_t lowprec_first_non_finite_row(const float *x, int64_t rows, int64_t dim) {
    if (rows <= 0 || dim <= 0 || !any_non_finite(x, rows * dim)) return -1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < dim; j++)
            if (bad_value(x + r * dim + j)) return r;
    return -1; /* only a sum of huge finite values overflowed */
}

static inline int non_finite_halves(uint32_t w) {
    return (w & 0x7c00u) == 0x7c00u || (w & 0x7c000000u) == 0x7c000000u;
}

/* Rows x[0..rows) quantized by FBGEMM's `quantize` at `bits` into out: rows of
   [fp16 scale | fp16 bias | dim * bits / 8 code bytes], rows * width + 4 bytes (4 spare at the
   end), block_rows rows per call. Returns -1 when every value and every stored scale and bias is
   finite, else the first row where one is not (rows from its block on are left unfinished);
   -2 on arguments it cannot take. */
int64_t lowprec_fbgemm_minmax_nbit(nbit_quantize_fn quantize, int bits, const float *x, int64_t rows,
                                   int64_t dim, uint8_t *out, int64_t block_rows) {
    if (!quantize || (bits != 4 && bits != 2) || dim <= 0 || (dim * bits) % 32 || block_rows <= 0)
        return -2;
    const int64_t width = 4 + dim * bits / 8;
    for (int64_t r = 0; r < rows; r += block_rows) {
        const int64_t n = rows - r < block_rows ? rows - r : block_rows;
        const float *xb = x + r * dim;
        quantize(bits, xb, (size_t)n, (int)dim, out + r * width + 4, NULL);
        const int64_t bad_in = lowprec_first_non_finite_row(xb, n, dim);
        const int64_t lim = bad_in < 0 ? n : bad_in;
        uint8_t *row = out + r * width;
        for (int64_t i = 0; i < lim; i++, row += width) {
            uint32_t w;
            memcpy(&w, row + width, 4); /* row i's (scale, bias), in row i + 1's first word */
            memcpy(row, &w, 4);
            if (non_finite_halves(w)) return r + i;
        }
        if (bad_in >= 0) return r + bad_in;
    }
    return -1;
}
