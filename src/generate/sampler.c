/*
 * sampler.c - turns a row of logits into the next token id: penalties, temperature, top-k,
 * top-p, min-p, then a seeded draw (definitions and their order in include/dsv4.h).
 *
 * Why a sort only sometimes: a full sort of a 129k vocabulary costs ~10 ms, as much as a decode
 * step on a GPU. It is needed only for top-k and top-p; min-p is a threshold on the largest
 * probability, and plain temperature sampling walks the cumulative sum in id order.
 */
#include "core/error.h"
#include "dsv4.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct cand {
    float v; /* logit, then probability */
    int32_t id;
} cand;

struct dsv4_sampler {
    dsv4_sampler_params p;
    int vocab;
    uint64_t rng[4];    /* xoshiro256** state */
    int32_t *count;     /* [vocab] times generated */
    uint8_t *in_prompt; /* [vocab] seen in the prompt */
    float *work;        /* [vocab] penalised logits */
    cand *cands;        /* [vocab] kept candidates */
    int n_cands;
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(dsv4_sampler *s)
{
    return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53;
}

void dsv4_sampler_params_default(dsv4_sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

static dsv4_status check_params(const dsv4_sampler_params *p)
{
    if (!isfinite(p->temperature) || p->temperature < 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "temperature %g: must be >= 0",
                         (double)p->temperature);
    if (!isfinite(p->top_p) || p->top_p <= 0 || p->top_p > 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "top_p %g: must be in (0, 1]",
                         (double)p->top_p);
    if (!isfinite(p->min_p) || p->min_p < 0 || p->min_p > 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "min_p %g: must be in [0, 1]",
                         (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || p->repetition_penalty <= 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "repetition_penalty %g: must be > 0",
                         (double)p->repetition_penalty);
    if (!isfinite(p->presence_penalty))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "presence_penalty is not finite");
    if (!isfinite(p->frequency_penalty))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "frequency_penalty is not finite");
    return DSV4_OK;
}

dsv4_status dsv4_sampler_create(const dsv4_sampler_params *p, int vocab, dsv4_sampler **out)
{
    dsv4_clear_error();
    if (!p || !out || vocab <= 0)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "sampler: NULL argument or vocab %d", vocab);
    *out = NULL;
    DSV4_TRY(check_params(p));
    dsv4_sampler *s = calloc(1, sizeof *s);
    if (!s) return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "sampler: out of memory");
    s->p = *p;
    s->vocab = vocab;
    s->count = calloc((size_t)vocab, sizeof *s->count);
    s->in_prompt = calloc((size_t)vocab, 1);
    s->work = malloc((size_t)vocab * sizeof *s->work);
    s->cands = malloc((size_t)vocab * sizeof *s->cands);
    if (!s->count || !s->in_prompt || !s->work || !s->cands) {
        dsv4_sampler_close(s);
        return dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "sampler: out of memory (vocab %d)", vocab);
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    *out = s;
    return DSV4_OK;
}

void dsv4_sampler_close(dsv4_sampler *s)
{
    if (!s) return;
    free(s->count);
    free(s->in_prompt);
    free(s->work);
    free(s->cands);
    free(s);
}

dsv4_status dsv4_sampler_accept(dsv4_sampler *s, int32_t id, int is_prompt)
{
    if (!s || id < 0 || id >= s->vocab)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "sampler_accept: id %d outside [0, %d)",
                         (int)id, s ? s->vocab : 0);
    if (is_prompt)
        s->in_prompt[id] = 1;
    else
        s->count[id]++;
    return DSV4_OK;
}

void dsv4_sampler_reset(dsv4_sampler *s)
{
    if (!s) return;
    memset(s->count, 0, (size_t)s->vocab * sizeof *s->count);
    memset(s->in_prompt, 0, (size_t)s->vocab);
}

/* Descending value, then ascending id: a total order, so the result never depends on qsort. */
static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Fills s->cands[0..n_cands) with the kept tokens and their renormalised probabilities (in
 * descending order when a sort was needed, else in id order). */
static dsv4_status process(dsv4_sampler *s, const float *logits)
{
    const dsv4_sampler_params *p = &s->p;
    int V = s->vocab;
    float *w = s->work;
    int penal = p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
                p->frequency_penalty != 0.0f;
    for (int i = 0; i < V; i++) {
        float l = logits[i];
        if (isnan(l)) return dsv4_fail(DSV4_ERR_INPUT, "sampler: logit %d is NaN", i);
        if (penal && (s->in_prompt[i] || s->count[i])) {
            l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
            if (s->count[i]) l -= p->presence_penalty + (float)s->count[i] * p->frequency_penalty;
        }
        w[i] = l;
    }
    if (p->temperature == 0.0f) { /* greedy: first index of the maximum */
        int best = 0;
        for (int i = 1; i < V; i++)
            if (w[i] > w[best]) best = i;
        s->cands[0] = (cand){1.0f, best};
        s->n_cands = 1;
        return DSV4_OK;
    }
    int n = V;
    for (int i = 0; i < V; i++) s->cands[i] = (cand){w[i] / p->temperature, i};
    int sorted = 0;
    if ((p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f) {
        qsort(s->cands, (size_t)V, sizeof *s->cands, cand_cmp);
        sorted = 1;
        if (p->top_k > 0 && p->top_k < V) n = p->top_k;
    }
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, s->cands[i].v);
    if (!isfinite(mx)) return dsv4_fail(DSV4_ERR_INPUT, "sampler: no finite logit");
    double sum = 0;
    for (int i = 0; i < n; i++) {
        double e = exp((double)(s->cands[i].v - mx));
        s->cands[i].v = (float)e;
        sum += e;
    }
    if (sorted && p->top_p < 1.0f) {
        double cum = 0, target = (double)p->top_p * sum;
        int keep = 0;
        while (keep < n) {
            cum += s->cands[keep++].v;
            if (cum >= target) break;
        }
        n = keep;
        sum = cum;
    }
    if (p->min_p > 0.0f) {    /* the largest probability is exp(0) = 1 relative to sum */
        float thr = p->min_p; /* relative to the maximum, whose unnormalised value is 1 */
        int k = 0;
        sum = 0;
        for (int i = 0; i < n; i++)
            if (s->cands[i].v >= thr) {
                s->cands[k++] = s->cands[i];
                sum += s->cands[i].v;
            }
        n = k;
    }
    for (int i = 0; i < n; i++) s->cands[i].v = (float)(s->cands[i].v / sum);
    s->n_cands = n;
    return DSV4_OK;
}

dsv4_status dsv4_sampler_probs(dsv4_sampler *s, const float *logits, float *probs)
{
    if (!s || !logits || !probs)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "sampler_probs: NULL argument");
    DSV4_TRY(process(s, logits));
    memset(probs, 0, (size_t)s->vocab * sizeof *probs);
    for (int i = 0; i < s->n_cands; i++) probs[s->cands[i].id] = s->cands[i].v;
    return DSV4_OK;
}

dsv4_status dsv4_sampler_sample(dsv4_sampler *s, const float *logits, int32_t *id)
{
    if (!s || !logits || !id)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "sampler_sample: NULL argument");
    DSV4_TRY(process(s, logits));
    if (s->n_cands == 1 && s->p.temperature == 0.0f) {
        *id = s->cands[0].id;
        return DSV4_OK;
    }
    double u = rng_uniform(s), cum = 0;
    int pick = s->n_cands - 1; /* rounding may leave the sum a hair under u */
    for (int i = 0; i < s->n_cands; i++) {
        cum += s->cands[i].v;
        if (u < cum) {
            pick = i;
            break;
        }
    }
    *id = s->cands[pick].id;
    return DSV4_OK;
}
