/* The tiered tables' id split in one pass: (ids, fixed-hotness bags) of every logical table ->
 * the FBGEMM TBE's (indices, offsets), each tier of a tiered table its own feature with compacted
 * bags (pads and the other tiers' ids dropped), every other table's ids copied with pads dropped.
 *
 * Built and loaded by lowprec.serve.tier_native (lowprec.native: system C compiler, cached). The
 * definition it computes is lowprec.serve.transforms.TierLookup's, exactly:
 *
 *   kind COPY      x                                      (identity feature)
 *   kind DIRECTORY tier j with word_j[x >> 5] bit (x & 31) set, row cum_j + popcount(word_j & below);
 *                  else the cold tier, row x - sum_j (cum_j + popcount(word_j & below)), word_j
 *                  tier j's rank directory of 32-id blocks (lowprec.serve.tiers; an older
 *                  artifact's 16-id words are widened to these by tier_native)
 *   kind RANGE     r = rank[x] (RANK_GATHER) or r = x (ids already ranks); tier j with
 *                  bound[j] <= r < bound[j + 1], row r - bound[j]
 *
 * Ids arrive table-major, table t's batch * hotness[t] ids as batch bags of hotness[t] slots
 * (lowprec.data.ids.FeatureIds), each -1 (a pad) or in [0, rows[t]): any other fails the call,
 * naming the table, before a row is read (the runtime then finds the id for its message). Features
 * are table-major too: table t's k_t features are consecutive, in tier order. Output bag (f, b) is
 * offsets[f * batch + b] .. [f * batch + b + 1]. One pass per table, branch-free per id: its tier
 * and row, the row stored into every tier's scratch segment and only its own tier's count advanced;
 * then each tier's segment is copied into place and its bag offsets shifted by where the segment
 * landed. Two tiers (the common case) write tier 0 in place and copy only tier 1 (less memory
 * traffic to evict the TBE's rows from L2). Where the build has AVX-512 every tier count takes a
 * vector loop instead: 16 ids a step, directory words or ranks gathered and prefetched ahead; where
 * it has AVX2 and not AVX-512, the same loop 8 ids a step (the scalar loop, kept for other builds,
 * ran three tiers ~10x slower than two: reports/tiered.md). An
 * id outside its table is never used as an index: it reads row 0's entry and fails the call.
 *
 * lowprec_tier_pool, after the TBE, sums each table's tiers in its output (see below).
 */
#include <stdint.h>
#include <string.h>
#include <limits.h>

enum { COPY = 0, DIRECTORY = 1, RANGE = 2, RANK_GATHER = 3 };
#define MAX_TIERS 16
#define INLINE static inline __attribute__((always_inline))

/* Tier j and in-tier row of id x (x >= 0) under one table's parameters. */
INLINE int64_t classify(int64_t x, int k, int kind, const int64_t *const *dirs, const int64_t *bound,
                        const int32_t *rank, int *tier)
{
    if (kind == DIRECTORY) {
        int64_t bit = x & 31, below = (INT64_C(1) << bit) - 1, sum = 0, hit_row = 0;
        int j = k - 1;
        for (int u = 0; u < k - 1; u++) {
            int64_t e = dirs[u][x >> 5];
            int64_t inside = (e >> 32) + __builtin_popcountll((uint64_t)(e & below));
            int first = j == k - 1 && ((e >> bit) & 1);
            hit_row = first ? inside : hit_row;
            j = first ? u : j;
            sum += inside;
        }
        *tier = j;
        return j == k - 1 ? x - sum : hit_row;
    }
    int64_t r = kind == RANK_GATHER ? (int64_t)rank[x] : x;
    int j = 0;
    int64_t lo = bound[0];
    for (int u = 1; u < k; u++) {
        int ge = r >= bound[u];
        j += ge;
        lo = ge ? bound[u] : lo;
    }
    *tier = j;
    return r - lo;
}

/* Start loading the directory word or rank of the id `AHEAD` slots on (random reads into a
 * table-sized array: without this the loop waits on one cache miss after another). */
#define AHEAD 16
INLINE void prefetch(const int32_t *in, int64_t s, int64_t n, int k, int kind, const int64_t *const *dirs,
                     const int32_t *rank, int64_t rows)
{
    if (s + AHEAD >= n)
        return;
    int64_t y = in[s + AHEAD];
    y = y >= 0 && y < rows ? y : 0;
    if (kind == DIRECTORY)
        for (int u = 0; u < k - 1; u++)
            __builtin_prefetch(&dirs[u][y >> 5]);
    else if (kind == RANK_GATHER)
        __builtin_prefetch(&rank[y]);
}

/* Table t's bags split into k tiers: rows into scratch + j * n (tier j; with two tiers, tier 0's
 * into `first` and tier 1's into scratch), per-bag starts (relative to the tier's segment) into
 * off + j * batch, counts into count. Returns 1 if an id is >= rows. Two tiers (the common case)
 * keep both counts in registers. */
INLINE int split_table(const int32_t *restrict in, int64_t batch, int64_t h, int k, int kind, int64_t rows,
                       const void *const *p, int32_t *restrict first, int32_t *restrict scratch,
                       int32_t *restrict off, int64_t *restrict count)
{
    const int64_t n = batch * h;
    const int64_t *dirs[MAX_TIERS];
    int64_t bound[MAX_TIERS + 1];
    const int32_t *rank = kind == RANK_GATHER ? (const int32_t *)p[1] : 0;
    for (int j = 0; j < k - 1; j++)
        dirs[j] = kind == DIRECTORY ? (const int64_t *)p[j] : 0;
    for (int j = 0; j <= k && kind != DIRECTORY; j++)
        bound[j] = ((const int64_t *)p[0])[j];
    int bad = 0;
    if (k == 2) {
        int64_t c0 = 0, c1 = 0;
        int32_t *restrict s0 = first, *restrict s1 = scratch;
        for (int64_t b = 0; b < batch; b++) {
            off[b] = (int32_t)c0;
            off[batch + b] = (int32_t)c1;
            for (int64_t s = b * h; s < b * h + h; s++) {
                int64_t x = in[s];
                int pad = x < 0, j;
                prefetch(in, s, n, k, kind, dirs, rank, rows);
                bad |= (x >= rows) | (x < -1);
                int64_t row = classify(pad | (x >= rows) ? 0 : x, 2, kind, dirs, bound, rank, &j);
                s0[c0] = (int32_t)row;
                s1[c1] = (int32_t)row;
                c0 += !pad & (j == 0);
                c1 += !pad & (j == 1);
            }
        }
        count[0] = c0;
        count[1] = c1;
        return bad;
    }
    int64_t c[MAX_TIERS] = {0};
    for (int64_t b = 0; b < batch; b++) {
        for (int j = 0; j < k; j++)
            off[j * batch + b] = (int32_t)c[j];
        for (int64_t s = b * h; s < b * h + h; s++) {
            int64_t x = in[s];
            int pad = x < 0, j;
            prefetch(in, s, n, k, kind, dirs, rank, rows);
            bad |= (x >= rows) | (x < -1);
            int64_t row = classify(pad | (x >= rows) ? 0 : x, k, kind, dirs, bound, rank, &j);
            j = pad ? k : j;
            for (int u = 0; u < k; u++) {
                scratch[u * n + c[u]] = (int32_t)row;
                c[u] += j == u;
            }
        }
    }
    for (int j = 0; j < k; j++)
        count[j] = c[j];
    return bad;
}

/* Start loading the directory words (or ranks) of the `m` ids at `in` (the vector loops). The
 * gathers of one step overlap only a few steps' misses; started VECTOR_AHEAD ids early the random
 * reads of a table-sized array stop being the split's cost. On the full-scale tables of
 * tools/bench_tier_split.py (AVX-512): alone, 128 is best (32 and 64 slower, 256-768 the same);
 * followed by the TBE's lookups, as it runs, the words come from DRAM more often and 384 is 1.07x
 * faster than 128 (256: 1.05x, 768: 1.06x; reports/tiered.md). */
#define VECTOR_AHEAD 384
INLINE void prefetch_ids(const int32_t *in, int m, int64_t rows, const int64_t *dir, const int32_t *rank)
{
    for (int i = 0; i < m; i++) {
        int64_t y = in[i];
        y = y >= 0 && y < rows ? y : 0;
        __builtin_prefetch(dir ? (const void *)&dir[y >> 5] : (const void *)&rank[y]);
    }
}

/* The vector loops' end: bags that start after the last id (hotness 0: every bag) are empty, and
 * each tier's count. */
INLINE void close_bags(int32_t *off, int64_t batch, int64_t b, int k, const int64_t *c, int64_t *count)
{
    for (; b < batch; b++)
        for (int j = 0; j < k; j++)
            off[j * batch + b] = (int32_t)c[j];
    for (int j = 0; j < k; j++)
        count[j] = c[j];
}

#if defined(__AVX512F__)
#include <immintrin.h>
#if defined(__AVX512VPOPCNTDQ__)
#define DIRECTORY_AVX512 1
/* One upper tier's rows of 8 ids (int32 lanes of `x`, every one in [0, rows)) through its rank
 * directory: the word gathered, the bit tested (`hit`), the rank popcounted (the tier's row where the
 * bit is set, and where it is not the tier's members below x, which the cold row subtracts). */
INLINE __m256i dir_rows8(__m256i x, const int64_t *dir, __mmask8 *hit)
{
    const __m512i one = _mm512_set1_epi64(1), x64 = _mm512_cvtepi32_epi64(x);
    const __m512i e = _mm512_i32gather_epi64(_mm256_srli_epi32(x, 5), dir, 8);
    const __m512i bit = _mm512_sllv_epi64(one, _mm512_and_si512(x64, _mm512_set1_epi64(31)));
    const __m512i inside = _mm512_add_epi64(_mm512_srli_epi64(e, 32),
                                            _mm512_popcnt_epi64(_mm512_and_si512(e, _mm512_sub_epi64(bit, one))));
    *hit = _mm512_test_epi64_mask(e, bit);
    return _mm512_cvtepi64_epi32(inside);
}
#else
#define DIRECTORY_AVX512 0 /* no vector popcount: directories take the scalar loop */
#endif

/* split_table, 16 ids a step over the table's ids end to end (bags may start and end inside a step),
 * tier j's rows into dst[j]: per step each lane's tier and row (DIRECTORY: each upper tier's gathered
 * directory word, the bit tested and the rank popcounted, the first tier whose bit is set taking the
 * id and the cold tier the rest at x minus every upper tier's rank; RANK_GATHER: the gathered rank
 * against the bounds; RANGE: the id is the rank), each tier's lanes compressed in a register and
 * stored masked (the memory form of vpcompressd is microcoded on some cores), and the counts before
 * each bag start read off the tier masks. Ids that are pads or out of range read nothing (lane index
 * 0) and go to no tier; the latter fail the call. Same outputs as the scalar loop. Inlined with k = 2
 * (the common case), where the loops over tiers unroll away. */
INLINE int splitk_avx512(const int32_t *restrict in, int64_t batch, int64_t h, int k, int kind, int64_t rows,
                         const void *const *p, int32_t *const *dst, int32_t *restrict off, int64_t *restrict count)
{
    const int64_t n = batch * h;
    const int64_t *dirs[MAX_TIERS] = {0};
    const int64_t *bound = kind == DIRECTORY ? 0 : (const int64_t *)p[0];
    const int32_t *rank = kind == RANK_GATHER ? (const int32_t *)p[1] : 0;
    __m512i lo[MAX_TIERS];
    for (int j = 0; j < k - 1 && kind == DIRECTORY; j++)
        dirs[j] = (const int64_t *)p[j];
    for (int j = 0; j < k; j++) /* (the caller checked bound[k - 1] fits int32) */
        lo[j] = _mm512_set1_epi32(bound ? (int32_t)bound[j] : 0);
    const __m512i zero = _mm512_setzero_si512(), minus1 = _mm512_set1_epi32(-1);
    const __m512i top = _mm512_set1_epi32(rows > INT32_MAX ? INT32_MAX : (int32_t)rows);
    const __mmask16 check_top = rows <= INT32_MAX ? 0xFFFF : 0;
    int32_t *d[MAX_TIERS]; /* (local copies: with k = 2 all of these live in registers) */
    for (int j = 0; j < k; j++)
        d[j] = dst[j];
    int64_t c[MAX_TIERS] = {0}, b = 0, start = 0; /* bag b starts at id start = b * h */
    __mmask16 bad = 0;
    for (int64_t s = 0; s < n; s += 16) {
        const int64_t m = n - s < 16 ? n - s : 16;
        const __mmask16 lanes = (__mmask16)(m == 16 ? 0xFFFF : (1u << m) - 1);
        const __m512i x = _mm512_maskz_loadu_epi32(lanes, in + s);
        const __mmask16 valid = _mm512_mask_cmpge_epi32_mask(lanes, x, zero);
        const __mmask16 over = _mm512_mask_cmpge_epi32_mask(valid & check_top, x, top);
        bad |= _mm512_mask_cmplt_epi32_mask(lanes, x, minus1) | over;
        const __mmask16 ok = valid & (__mmask16)~over;
        const __m512i xs = _mm512_maskz_mov_epi32(ok, x); /* reads stay inside the arrays */
        if (kind != RANGE && s + VECTOR_AHEAD + 16 <= n)
            for (int j = 0; j < (kind == DIRECTORY ? k - 1 : 1); j++)
                prefetch_ids(in + s + VECTOR_AHEAD, 16, rows, dirs[j], rank);
        __m512i row[MAX_TIERS];
        __mmask16 tier[MAX_TIERS];
        if (DIRECTORY_AVX512 && kind == DIRECTORY) {
#if DIRECTORY_AVX512
            __m512i below = zero; /* sum of the upper tiers' ranks: the cold row is x - below */
            __mmask16 taken = 0;
            for (int j = 0; j < k - 1; j++) {
                __mmask8 h_lo, h_hi;
                const __m256i i_lo = dir_rows8(_mm512_castsi512_si256(xs), dirs[j], &h_lo);
                const __m256i i_hi = dir_rows8(_mm512_extracti64x4_epi64(xs, 1), dirs[j], &h_hi);
                row[j] = _mm512_inserti64x4(_mm512_castsi256_si512(i_lo), i_hi, 1);
                tier[j] = (__mmask16)(ok & (h_lo | (unsigned)h_hi << 8) & ~taken);
                taken |= tier[j];
                below = _mm512_add_epi32(below, row[j]);
            }
            row[k - 1] = _mm512_sub_epi32(xs, below);
            tier[k - 1] = ok & (__mmask16)~taken;
#endif
        } else {
            const __m512i r = kind == RANK_GATHER ? _mm512_mask_i32gather_epi32(zero, ok, xs, rank, 4) : xs;
            __mmask16 under = ok; /* lanes below bound[j + 1], not yet in a tier */
            for (int j = 0; j < k; j++) {
                const __mmask16 below_next = j == k - 1 ? under : _mm512_mask_cmplt_epi32_mask(under, r, lo[j + 1]);
                tier[j] = below_next;
                under &= (__mmask16)~below_next;
                row[j] = _mm512_sub_epi32(r, lo[j]);
            }
        }
        for (; start < s + m; start += h, b++) { /* bags starting in this step (h > 0 here) */
            const __mmask16 before = (__mmask16)((1u << (start - s)) - 1);
            for (int j = 0; j < k; j++)
                off[j * batch + b] = (int32_t)(c[j] + __builtin_popcount(tier[j] & before));
        }
        for (int j = 0; j < k; j++) {
            const int pj = __builtin_popcount(tier[j]);
            _mm512_mask_storeu_epi32(d[j] + c[j], (__mmask16)((1u << pj) - 1), _mm512_maskz_compress_epi32(tier[j], row[j]));
            c[j] += pj;
        }
    }
    close_bags(off, batch, b, k, c, count);
    return bad != 0;
}

#define SPLIT_VECTOR splitk_avx512
#define VECTOR_DIRECTORY DIRECTORY_AVX512
#elif defined(__AVX2__)
#include <immintrin.h>
/* AVX2 (no AVX-512): the same loop 8 ids a step. What AVX-512 does in one instruction is spelled out:
 * lane masks are vectors (their bits read by movemask), the 64-bit popcount is a nibble table
 * (vpshufb) summed by vpsadbw, and compressing a tier's lanes is a permutation looked up by the
 * tier's 8-bit mask (pdep/pext would do it without a table, but are microcoded on AMD before Zen 3). */
static uint8_t compress_lut[256][8]; /* mask -> its set lanes in order, then lane 0 */

__attribute__((constructor)) static void fill_compress_lut(void)
{
    for (int m = 0; m < 256; m++)
        for (int i = 0, c = 0; i < 8; i++)
            if ((m >> i) & 1)
                compress_lut[m][c++] = (uint8_t)i;
}

INLINE int bits8(__m256i mask) { return _mm256_movemask_ps(_mm256_castsi256_ps(mask)); }

/* Each 64-bit lane's popcount (the nibble table: x86 has no vector popcount before AVX-512). */
INLINE __m256i popcount64x4(__m256i v)
{
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    const __m256i count = _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, nibble)),
                                          _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble)));
    return _mm256_sad_epu8(count, _mm256_setzero_si256());
}

/* dir_rows8 for 4 ids: their rows through one upper tier's directory, and the 4-bit mask of those
 * whose bit is set. */
INLINE __m128i dir_rows4(__m128i x, const int64_t *dir, int *hit)
{
    const __m256i one = _mm256_set1_epi64x(1);
    const __m256i e = _mm256_i32gather_epi64((const long long *)dir, _mm_srli_epi32(x, 5), 8);
    const __m256i bit = _mm256_sllv_epi64(one, _mm256_and_si256(_mm256_cvtepi32_epi64(x), _mm256_set1_epi64x(31)));
    const __m256i inside = _mm256_add_epi64(_mm256_srli_epi64(e, 32),
                                            popcount64x4(_mm256_and_si256(e, _mm256_sub_epi64(bit, one))));
    const __m256i unset = _mm256_cmpeq_epi64(_mm256_and_si256(e, bit), _mm256_setzero_si256());
    *hit = ~_mm256_movemask_pd(_mm256_castsi256_pd(unset)) & 0xF;
    return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(inside, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)));
}

/* splitk_avx512's definition, 8 ids a step (see there). */
INLINE int splitk_avx2(const int32_t *restrict in, int64_t batch, int64_t h, int k, int kind, int64_t rows,
                       const void *const *p, int32_t *const *dst, int32_t *restrict off, int64_t *restrict count)
{
    const int64_t n = batch * h;
    const int64_t *dirs[MAX_TIERS] = {0};
    const int64_t *bound = kind == DIRECTORY ? 0 : (const int64_t *)p[0];
    const int32_t *rank = kind == RANK_GATHER ? (const int32_t *)p[1] : 0;
    __m256i lo[MAX_TIERS];
    for (int j = 0; j < k - 1 && kind == DIRECTORY; j++)
        dirs[j] = (const int64_t *)p[j];
    for (int j = 0; j < k; j++) /* (the caller checked bound[k - 1] fits int32) */
        lo[j] = _mm256_set1_epi32(bound ? (int32_t)bound[j] : 0);
    const __m256i zero = _mm256_setzero_si256(), minus1 = _mm256_set1_epi32(-1);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i last = _mm256_set1_epi32(rows > INT32_MAX ? INT32_MAX : (int32_t)(rows - 1)); /* x > last: past */
    int32_t *d[MAX_TIERS];
    for (int j = 0; j < k; j++)
        d[j] = dst[j];
    int64_t c[MAX_TIERS] = {0}, b = 0, start = 0;
    int bad = 0;
    for (int64_t s = 0; s < n; s += 8) {
        const int64_t m = n - s < 8 ? n - s : 8;
        const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)m), iota);
        const __m256i x = _mm256_maskload_epi32(in + s, lanes);
        const __m256i valid = _mm256_and_si256(lanes, _mm256_cmpgt_epi32(x, minus1));
        const __m256i over = _mm256_and_si256(valid, _mm256_cmpgt_epi32(x, last));
        bad |= bits8(_mm256_or_si256(over, _mm256_and_si256(lanes, _mm256_cmpgt_epi32(minus1, x))));
        const __m256i ok = _mm256_andnot_si256(over, valid);
        const __m256i xs = _mm256_and_si256(ok, x); /* reads stay inside the arrays */
        const int okb = bits8(ok);
        if (kind != RANGE && s + VECTOR_AHEAD + 8 <= n)
            for (int j = 0; j < (kind == DIRECTORY ? k - 1 : 1); j++)
                prefetch_ids(in + s + VECTOR_AHEAD, 8, rows, dirs[j], rank);
        __m256i row[MAX_TIERS];
        int tier[MAX_TIERS];
        if (kind == DIRECTORY) {
            __m256i below = zero;
            int taken = 0;
            for (int j = 0; j < k - 1; j++) {
                int h_lo, h_hi;
                const __m128i r_lo = dir_rows4(_mm256_castsi256_si128(xs), dirs[j], &h_lo);
                const __m128i r_hi = dir_rows4(_mm256_extracti128_si256(xs, 1), dirs[j], &h_hi);
                row[j] = _mm256_set_m128i(r_hi, r_lo);
                tier[j] = okb & (h_lo | h_hi << 4) & ~taken;
                taken |= tier[j];
                below = _mm256_add_epi32(below, row[j]);
            }
            row[k - 1] = _mm256_sub_epi32(xs, below);
            tier[k - 1] = okb & ~taken;
        } else {
            const __m256i r = kind == RANK_GATHER ? _mm256_mask_i32gather_epi32(zero, rank, xs, ok, 4) : xs;
            int under = okb;
            for (int j = 0; j < k; j++) {
                const int below_next = j == k - 1 ? under : under & bits8(_mm256_cmpgt_epi32(lo[j + 1], r));
                tier[j] = below_next;
                under &= ~below_next;
                row[j] = _mm256_sub_epi32(r, lo[j]);
            }
        }
        for (; start < s + m; start += h, b++) {
            const int before = (1 << (start - s)) - 1;
            for (int j = 0; j < k; j++)
                off[j * batch + b] = (int32_t)(c[j] + __builtin_popcount(tier[j] & before));
        }
        for (int j = 0; j < k; j++) {
            const int pj = __builtin_popcount(tier[j]);
            const __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)compress_lut[tier[j]]));
            const __m256i packed = _mm256_permutevar8x32_epi32(row[j], perm);
            if (k == 2) /* all 8 lanes: the lanes past pj land where this tier or the next table writes later, or in
                           the 8 slots the caller leaves past the end (VECTOR_SLACK); masked stores were slow on the AMD host
                           measured, reports/tiered.md */
                _mm256_storeu_si256((__m256i *)(d[j] + c[j]), packed);
            else /* (k > 2: tier j's spare lanes would reach tier j + 1's segment) */
                _mm256_maskstore_epi32(d[j] + c[j], _mm256_cmpgt_epi32(_mm256_set1_epi32(pj), iota), packed);
            c[j] += pj;
        }
    }
    close_bags(off, batch, b, k, c, count);
    return bad != 0;
}

#define SPLIT_VECTOR splitk_avx2
#define VECTOR_DIRECTORY 1
#endif

#ifdef SPLIT_VECTOR
/* The vector loop inlined with k = 2 (the common case: the loops over tiers unroll away), and for
 * any k. */
static int split2_vector(const int32_t *in, int64_t batch, int64_t h, int kind, int64_t rows, const void *const *p,
                         int32_t *const *dst, int32_t *off, int64_t *count)
{
    return SPLIT_VECTOR(in, batch, h, 2, kind, rows, p, dst, off, count);
}

static int splitn_vector(const int32_t *in, int64_t batch, int64_t h, int k, int kind, int64_t rows,
                         const void *const *p, int32_t *const *dst, int32_t *off, int64_t *count)
{
    return SPLIT_VECTOR(in, batch, h, k, kind, rows, p, dst, off, count);
}
#endif

/* Table t's split into k tiers: the AVX-512 loop where the build has it (and rows, ranks and bounds
 * fit int32 lanes), else the AVX2 one on the same terms, else the scalar one. Tier 0's rows go to
 * `first` when two tiers (written in place), else every tier j's to scratch + j * n. */
static int split(const int32_t *in, int64_t batch, int64_t h, int k, int kind, int64_t rows, const void *const *p,
                 int32_t *first, int32_t *scratch, int32_t *off, int64_t *count)
{
#ifdef SPLIT_VECTOR
    if (kind == DIRECTORY ? VECTOR_DIRECTORY : ((const int64_t *)p[0])[k - 1] <= INT32_MAX) {
        int32_t *dst[MAX_TIERS];
        for (int j = 0; j < k; j++)
            dst[j] = k == 2 && j == 0 ? first : scratch + (k == 2 ? 0 : j * batch * h);
        return k == 2 ? split2_vector(in, batch, h, kind, rows, p, dst, off, count)
                      : splitn_vector(in, batch, h, k, kind, rows, p, dst, off, count);
    }
#endif
    return split_table(in, batch, h, k, kind, rows, p, k == 2 ? first : 0, scratch, off, count);
}

/* dst[0..n) = in[0..n), and the least and greatest id seen folded into *lo, *hi: an untiered table's
 * ids copied and checked in one pass. Under AVX-512 the body goes out in non-temporal 64-byte
 * stores: these ids (~3/4 of a call's on Criteo's tables) stream through once, and written through
 * the cache they would evict hot rows the TBE is about to read (split + lookups 1.01-1.06x side by side
 * in three runs, reports/tiered.md; the split alone 0.95-0.98x). lowprec_tier_split fences them. */
INLINE void copy_minmax(const int32_t *restrict in, int32_t *restrict dst, int64_t n, int32_t *lo, int32_t *hi)
{
    int64_t s = 0;
    int32_t l = *lo, h = *hi;
#if defined(__AVX512F__)
    for (; s < n && ((uintptr_t)(dst + s) & 63); s++) {
        l = in[s] < l ? in[s] : l;
        h = in[s] > h ? in[s] : h;
        dst[s] = in[s];
    }
    __m512i vl = _mm512_set1_epi32(l), vh = _mm512_set1_epi32(h);
    for (; s + 16 <= n; s += 16) {
        __m512i v = _mm512_loadu_si512((const void *)(in + s));
        _mm512_stream_si512((void *)(dst + s), v);
        vl = _mm512_min_epi32(vl, v);
        vh = _mm512_max_epi32(vh, v);
    }
    l = _mm512_reduce_min_epi32(vl);
    h = _mm512_reduce_max_epi32(vh);
#endif
    for (; s < n; s++) {
        l = in[s] < l ? in[s] : l;
        h = in[s] > h ? in[s] : h;
        dst[s] = in[s];
    }
    *lo = l;
    *hi = h;
}

/* Returns 0, or t + 1 for the first table holding an id >= its rows, or -1 on bad arguments.
 * `param[t]`: DIRECTORY the k_t - 1 directory pointers; RANGE/RANK_GATHER [bounds (k_t + 1 int64),
 * rank map (int32, RANK_GATHER only)]; scratch: int32, max over tiered tables of k_t * batch * h_t.
 * out_idx and scratch hold VECTOR_SLACK (8) more int32 slots than that: the AVX2 loop stores whole
 * vectors with two tiers. */
int lowprec_tier_split(const int32_t *ids, int64_t batch, int32_t n_tables, const int32_t *hotness,
                       const int32_t *kind, const int32_t *k, const int64_t *rows,
                       const void *const *const *param, int32_t *restrict out_idx, int32_t *restrict out_off,
                       int32_t *restrict scratch)
{
    int64_t w = 0, f = 0;
    const int32_t *in = ids;
    for (int32_t t = 0; t < n_tables; t++) {
        const int64_t h = hotness[t], n = batch * h, lim = rows[t];
        const int kt = k[t], kd = kind[t];
        if (kt < 1 || kt > MAX_TIERS || h < 0 || (kd != COPY && kt < 2))
            return -1;
        if (kd == COPY) {
            int32_t lo = 0, hi = -1;
            int32_t *restrict dst = out_idx + w;
            copy_minmax(in, dst, n, &lo, &hi);
            if (hi >= lim || lo < -1)
                return t + 1;
            if (lo >= 0) { /* no pads: the copy stands */
                for (int64_t b = 0; b < batch; b++)
                    out_off[f * batch + b] = (int32_t)(w + b * h);
                w += n;
            } else { /* pads: copied again, compacted */
                for (int64_t b = 0; b < batch; b++) {
                    out_off[f * batch + b] = (int32_t)w;
                    for (int64_t s = b * h; s < b * h + h; s++) {
                        out_idx[w] = in[s];
                        w += in[s] >= 0;
                    }
                }
            }
        } else {
            int64_t count[MAX_TIERS];
            int32_t *off = out_off + f * batch;
            /* two tiers: tier 0 (on Zipf traffic most ids) is written in place, only tier 1 copied */
            int rc = split(in, batch, h, kt, kd, lim, param[t], out_idx + w, scratch, off, count);
            if (rc)
                return t + 1;
            if (kt == 2) {
                memcpy(out_idx + w + count[0], scratch, (size_t)count[1] * sizeof(int32_t));
                for (int64_t b = 0; b < batch; b++) {
                    off[b] += (int32_t)w;
                    off[batch + b] += (int32_t)(w + count[0]);
                }
                w += count[0] + count[1];
            } else {
                for (int j = 0; j < kt; j++) {
                    memcpy(out_idx + w, scratch + j * n, (size_t)count[j] * sizeof(int32_t));
                    for (int64_t b = 0; b < batch; b++)
                        off[j * batch + b] += (int32_t)w;
                    w += count[j];
                }
            }
        }
        f += kt;
        in += n;
    }
    out_off[f * batch] = (int32_t)w;
#if defined(__AVX512F__)
    _mm_sfence(); /* the copies' non-temporal stores visible before the TBE reads them */
#endif
    return 0;
}

/* Pooling after the TBE: its output (batch rows, each the features' pooled rows laid end to end, d
 * floats a feature, features table-major as the split writes them) -> (batch, n_tables, d), table
 * t's k[t] features summed in tier order: first + second + ..., the order in which the torch path
 * (QuantizedEmbeddings.pooled_from_tbe: index_select, then index_add_ per extra feature) adds, so the
 * same floats bit for bit. One pass; the common widths get a loop the compiler unrolls. */
INLINE void pool_table(const float *restrict src, int k, int64_t d, float *restrict dst)
{
    for (int64_t i = 0; i < d; i++)
        dst[i] = src[i];
    for (int j = 1; j < k; j++)
        for (int64_t i = 0; i < d; i++)
            dst[i] += src[j * d + i];
}

void lowprec_tier_pool(const float *in, int64_t batch, int32_t n_tables, const int32_t *k, int64_t d,
                       float *restrict out)
{
    int64_t features = 0;
    for (int32_t t = 0; t < n_tables; t++)
        features += k[t];
    for (int64_t b = 0; b < batch; b++) {
        const float *src = in + b * features * d;
        float *dst = out + b * n_tables * d;
        for (int32_t t = 0; t < n_tables; t++, dst += d) {
            if (d == 16)
                pool_table(src, k[t], 16, dst);
            else if (d == 32)
                pool_table(src, k[t], 32, dst);
            else if (d == 64)
                pool_table(src, k[t], 64, dst);
            else if (d == 128)
                pool_table(src, k[t], 128, dst);
            else
                pool_table(src, k[t], d, dst);
            src += k[t] * d;
        }
    }
}
