/* The tiered tables' id split in one pass: (ids, fixed-hotness bags) of every logical table ->
 * the FBGEMM TBE's (indices, offsets), each tier of a tiered table its own feature with compacted
 * bags (pads and the other tiers' ids dropped), every other table's ids copied with pads dropped.
 *
 * Built and loaded by lowprec.serve.tier_native (lowprec.native: system C compiler, cached). The
 * definition it computes is lowprec.serve.transforms.TierLookup's, exactly:
 *
 *   kind COPY      x                                      (identity feature)
 *   kind DIRECTORY tier j with word_j[x >> 4] bit (x & 15) set, row cum_j + popcount(word_j & below);
 *                  else the cold tier, row x - sum_j (cum_j + popcount(word_j & below))
 *   kind RANGE     r = rank[x] (RANK_GATHER) or r = x (ids already ranks); tier j with
 *                  bound[j] <= r < bound[j + 1], row r - bound[j]
 *
 * Ids arrive table-major, table t's batch * hotness[t] ids as batch bags of hotness[t] slots
 * (lowprec.data.ids.FeatureIds), -1 a pad. Features are table-major too: table t's k_t features
 * are consecutive, in tier order. Output bag (f, b) is offsets[f * batch + b] .. [f * batch + b + 1].
 * Per table two passes over its ids (they stay in cache between): tier and row of each id, then
 * the scatter into each tier's compacted segment.
 */
#include <stdint.h>
#include <string.h>

enum { COPY = 0, DIRECTORY = 1, RANGE = 2, RANK_GATHER = 3 };
#define MAX_TIERS 16
#define PAD 0xFF

/* The tier (PAD for a pad) and in-tier row of each of the n ids of one table. */
static int classify(const int32_t *ids, int64_t n, int32_t kind, int32_t k, int64_t rows,
                    const int64_t *const *dirs, const int64_t *bound, const int32_t *rank,
                    uint8_t *tier, int32_t *pos, int64_t *count)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t x = ids[i];
        if (x < 0) {
            tier[i] = PAD;
            continue;
        }
        if (x >= rows)
            return 1;
        int j = 0;
        int64_t row;
        if (kind == DIRECTORY) {
            int64_t blk = x >> 4, bit = x & 15, below = (INT64_C(1) << bit) - 1, sum = 0;
            row = -1;
            for (; j < k - 1; j++) {
                int64_t e = dirs[j][blk];
                int64_t inside = (e >> 16) + __builtin_popcountll((uint64_t)(e & below));
                if ((e >> bit) & 1) {
                    row = inside;
                    break;
                }
                sum += inside;
            }
            if (j == k - 1)
                row = x - sum;
        } else {
            int64_t r = kind == RANK_GATHER ? (int64_t)rank[x] : x;
            while (j < k - 1 && r >= bound[j + 1])
                j++;
            row = r - bound[j];
        }
        tier[i] = (uint8_t)j;
        pos[i] = (int32_t)row;
        count[j]++;
    }
    return 0;
}

/* Returns 0, or t + 1 for the first table holding an id >= its rows, or -1 on bad arguments.
 * `param[t]`: DIRECTORY the k_t - 1 directory pointers; RANGE/RANK_GATHER [bounds (k_t + 1 int64),
 * rank map (int32, RANK_GATHER only)]; scratch: tier (uint8) and pos (int32), max batch * hotness. */
int lowprec_tier_split(const int32_t *ids, int64_t batch, int32_t n_tables, const int32_t *hotness,
                       const int32_t *kind, const int32_t *k, const int64_t *rows,
                       const void *const *const *param, int32_t *out_idx, int32_t *out_off,
                       uint8_t *tier, int32_t *pos)
{
    int64_t w = 0, f = 0;
    const int32_t *in = ids;
    for (int32_t t = 0; t < n_tables; t++) {
        int64_t h = hotness[t], n = batch * h;
        int32_t kt = k[t];
        if (kt < 1 || kt > MAX_TIERS || h < 0)
            return -1;
        if (kind[t] == COPY) {
            for (int64_t b = 0; b < batch; b++) {
                out_off[f * batch + b] = (int32_t)w;
                for (int64_t s = 0; s < h; s++) {
                    int32_t x = in[b * h + s];
                    if (x >= rows[t])
                        return t + 1;
                    if (x >= 0)
                        out_idx[w++] = x;
                }
            }
        } else {
            int64_t count[MAX_TIERS] = {0}, cur[MAX_TIERS];
            const void *const *p = param[t];
            if (classify(in, n, kind[t], kt, rows[t], (const int64_t *const *)p, (const int64_t *)p[0],
                         kind[t] == RANK_GATHER ? (const int32_t *)p[1] : 0, tier, pos, count))
                return t + 1;
            for (int j = 0; j < kt; j++) {
                cur[j] = w;
                w += count[j];
            }
            for (int64_t b = 0; b < batch; b++) {
                for (int j = 0; j < kt; j++)
                    out_off[(f + j) * batch + b] = (int32_t)cur[j];
                for (int64_t s = b * h; s < b * h + h; s++)
                    if (tier[s] != PAD)
                        out_idx[cur[tier[s]]++] = pos[s];
            }
        }
        f += kt;
        in += n;
    }
    out_off[f * batch] = (int32_t)w;
    return 0;
}
