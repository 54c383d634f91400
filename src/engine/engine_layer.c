/*
 * engine_layer.c - the layer loop of the batched engine, written once against backend.h so
 * that the same code runs a step on the CPU and on the GPU:
 *
 *   embed -> n residual streams -> per layer { mHC site -> attention, mHC site -> MoE }
 *         -> head collapse -> final RMSNorm (-> LM head, engine.c)
 *
 * Every line mirrors the faithful branch of the session forward (model/forward.c,
 * forward_attn.c, forward_moe.c), which tests check against transformers; here the rows of a
 * step may belong to different sequences (dsv4_bk_rows) and the state lives in rings
 * (engine_internal.h). Each op is followed by a timing mark (free unless profiling is on).
 */
#include "core/error.h"
#include "engine/engine_internal.h"

#include <math.h>

#define MARK(label) dsv4_bk_prof_mark(e->b, label)

/* The rows of the step (uploaded by engine.c into e->s.rows). */
static dsv4_bk_rows step_rows(const dsv4_engine *e, int n)
{
    const int32_t *r = e->s.rows;
    const int mc = e->o.max_chunk;
    return (dsv4_bk_rows){n, r, r + mc, r + 2 * mc};
}

/* One mHC site before a sublayer: X [N, n, D] -> post, comb, y = bf16(sum pre_j X_j), then
 * h = bf16(RMSNorm(y) * norm), and xh = act_quant(h) when xh is given (the attention's site).
 * The first site of a step; every later one is a seam. */
static dsv4_status hc_site(dsv4_engine *e, const dsv4_weight *fn, const float *base,
                           const float *scale, const float *norm, float *xh, int N)
{
    const dsv4_config *c = e->c;
    eng_scratch *s = &e->s;
    /* rmsnorm(X flat) -> fn projection -> hc_pre -> rmsnorm(norm), fused; y and mix unused */
    DSV4_TRY(dsv4_bk_hc_site(e->b, s->h, xh, NULL, NULL, s->post, s->comb, s->X, fn, base, scale,
                             norm, N, c->hc_mult, c->hidden_size, c->hc_sinkhorn_iters, c->hc_eps,
                             c->rms_norm_eps));
    MARK("mhc.pre");
    return DSV4_OK;
}

static void swap(float **a, float **b)
{
    float *t = *a;
    *a = *b;
    *b = t;
}

static void swap_streams(eng_scratch *s)
{
    swap(&s->X, &s->Xo);
}

/* The seam after a sublayer: X' = bf16(post f + comb^T X) (into Xo; X and Xo swap), then the
 * next site on X' (xh as hc_site's), in one op (post and comb updated in place). For at most
 * SEAM_SPLIT_ROWS rows in two: the sublayer after it then waits only for h (fn's first n rows),
 * while the site's post and comb (fn's other rows and the Sinkhorn, needed first by the next
 * seam) are made beside it on a side chain joined at the next seam. That chain reads X, f, post
 * and comb while the sublayer runs, so none is overwritten before the join: post and comb go to
 * the other buffers (post2, comb2), and the sublayer writes its f into f2 (all swap). Measured
 * (H100, Flash 4 layers, docs/PERF.md session 9): a step 1.6% faster at 1 row and 1.2% at 2, the
 * same at 4, 1.2% slower at 8 and 0.6% at 16, where both halves take half the SMs each; after
 * session 20's kernels (session 21), split against whole: Flash 1.3% faster at 1 row, 0.8% at 2,
 * 0.7% at 3, 0.7% slower at 4 (Pro 0.3%, 0.6%, 0.4% faster at 1-3, 0.1% slower at 4). Since the
 * halves plan for half the GPU each and take two CTAs an SM where that places both at once
 * (bk_hc.cu, session 24), split from 4 to 8 rows too: Flash batch 4 / 5 / 6 / 8 -1.2 / -1.6 /
 * -1.2 / -0.3%, Pro 4 / 6 -0.6 / -0.2% (docs/PERF.md). */
enum { SEAM_SPLIT_ROWS = 8 };

static dsv4_status hc_seam(dsv4_engine *e, const dsv4_weight *fn, const float *base,
                           const float *scale, const float *norm, float *xh, int N)
{
    const dsv4_config *c = e->c;
    eng_scratch *s = &e->s;
    const int n = c->hc_mult, it = c->hc_sinkhorn_iters;
    const int64_t D = c->hidden_size;
    /* the previous seam's post and comb, made a sublayer ago on the side chain */
    DSV4_TRY(dsv4_bk_side_join_settled(e->b));
    if (N > SEAM_SPLIT_ROWS) {
        DSV4_TRY(dsv4_bk_hc_seam(e->b, s->h, xh, s->Xo, s->post, s->comb, s->X, s->f, s->post,
                                 s->comb, fn, base, scale, norm, N, n, D, it, c->hc_eps,
                                 c->rms_norm_eps));
        swap_streams(s);
        MARK("mhc.seam");
        return DSV4_OK;
    }
    DSV4_TRY(dsv4_bk_side_begin(e->b));
    DSV4_TRY(dsv4_bk_hc_seam_weights(e->b, s->post2, s->comb2, s->X, s->f, s->post, s->comb, fn,
                                     base, scale, N, n, D, it, c->hc_eps, c->rms_norm_eps));
    DSV4_TRY(dsv4_bk_side_end(e->b));
    MARK("mhc.seam_weights");
    DSV4_TRY(dsv4_bk_hc_seam(e->b, s->h, xh, s->Xo, NULL, NULL, s->X, s->f, s->post, s->comb, fn,
                             base, scale, norm, N, n, D, it, c->hc_eps, c->rms_norm_eps));
    swap_streams(s);
    swap(&s->post, &s->post2);
    swap(&s->comb, &s->comb2);
    swap(&s->f, &s->f2);
    MARK("mhc.seam");
    return DSV4_OK;
}

/* y [N, w->rows] = bf16(w . act_quant(x)): a projection the official model runs as an FP8/FP4
 * GEMM (dsv4_fw_linear_q). xq: the quantised copy (quantise = 0: it holds it already; 1: scratch
 * for dsv4_bk_linear_aq, which may quantise x inside the projection's own launch). */
static dsv4_status linear_q(dsv4_engine *e, const dsv4_weight *w, const float *x, float *xq,
                            int quantise, int N, float *y)
{
    if (quantise) return dsv4_bk_linear_aq(e->b, w, x, w->cols, xq, N, y, w->rows, 1);
    return dsv4_bk_linear(e->b, w, 0, w->rows, xq, w->cols, N, y, w->rows, 1);
}

/* The projections of the attention input h, as one dsv4_bk_linear_multi (one launch at decode
 * sizes, where each matrix alone is too small to keep the GPU streaming): wq_a -> qr and
 * wkv -> kv on act_quant(h) (s->xh), and on h the compressor's wkv -> ck, wgate -> cg, the
 * indexer compressor's -> ick, icg and the indexer's weights_proj -> iw; with q_norm also
 * xq = act_quant(q_norm(qr)) (the op's norm of the wq_a entry: on CUDA at one or two rows in the
 * same launch). */
static dsv4_status h_projections(dsv4_engine *e, eng_layer *L, int N, int q_norm)
{
    eng_scratch *s = &e->s;
    const dsv4_layer_weights *w = &L->w;
    const int64_t D = e->c->hidden_size;
    dsv4_bk_linear_entry p[DSV4_BK_LINEAR_MULTI_MAX];
    int n = 0;
    p[n++] = dsv4_bk_lin_entry(&w->wq_a, s->xh, D, s->qr, w->wq_a.rows, 1);
    if (q_norm) /* act_quant(q_norm(qr)) (s->xq): the input of wq_b and of the indexer's queries */
        p[0].norm = L->q_norm, p[0].yq = s->xq, p[0].eps = e->c->rms_norm_eps, p[0].qblock = 128;
    p[n++] = dsv4_bk_lin_entry(&w->wkv, s->xh, D, s->kv, w->wkv.rows, 1);
    if (L->ratio > 0) {
        p[n++] = dsv4_bk_lin_entry(&w->compressor.wkv, s->h, D, s->ck, L->comp.width, 0);
        p[n++] = dsv4_bk_lin_entry(&w->compressor.wgate, s->h, D, s->cg, L->comp.width, 0);
    }
    if (L->ratio == 4) {
        const int64_t iw = L->idx.width, nh = e->c->index_n_heads;
        p[n++] = dsv4_bk_lin_entry(&w->idx_compressor.wkv, s->h, D, s->ick, iw, 0);
        p[n++] = dsv4_bk_lin_entry(&w->idx_compressor.wgate, s->h, D, s->icg, iw, 0);
        p[n++] = dsv4_bk_lin_entry(&w->idx_weights_proj, s->h, D, s->iw, nh, 1);
    }
    return dsv4_bk_linear_multi(e->b, p, n, N);
}

/* A compressor's step as a comp_append job: its new rows ck, cg [N, width] (h_projections). */
static dsv4_bk_comp_job comp_job(const dsv4_engine *e, eng_comp *cs, const float *ck,
                                 const float *cg, int is_index)
{
    const int Rc = cs->ratio == 4 ? e->Rc4 : e->Rc128;
    return (dsv4_bk_comp_job){
        cs->ent,   cs->cap, cs->ring_kv, cs->ring_gate, Rc,       cs->width, cs->dim,
        cs->ratio, ck,      cg,          cs->ape,       cs->norm, is_index};
}

/* The layer's compressors (the main one; a CSA layer's indexer compressor too) take their rows
 * and close their windows (forward_attn.c comp_append), in one op. */
static dsv4_status compress(dsv4_engine *e, eng_layer *L, const dsv4_bk_rows *rows)
{
    const dsv4_config *c = e->c;
    eng_scratch *s = &e->s;
    dsv4_bk_comp_job j[2];
    int n = 0;
    j[n++] = comp_job(e, &L->comp, s->ck, s->cg, 0);
    if (L->ratio == 4) j[n++] = comp_job(e, &L->idx, s->ick, s->icg, 1);
    DSV4_TRY(
        dsv4_bk_comp_append_multi(e->b, j, n, c->rms_norm_eps, e->rope_comp, c->rope_dim, rows));
    MARK("comp.pool");
    return DSV4_OK;
}

/* Whether a layer's indexer queries share wq_b's op at N rows (attention, below). */
static int pairs_index_queries(const eng_layer *L, int N)
{
    return L->ratio == 4 && N <= 2;
}

/* The attention sublayer: s->h [N, D] -> s->f [N, D] (forward_attn.c attn_body, faithful). */
static dsv4_status attention(dsv4_engine *e, eng_layer *L, const dsv4_bk_rows *rows)
{
    const dsv4_config *c = e->c;
    eng_scratch *s = &e->s;
    const dsv4_layer_weights *w = &L->w;
    const int N = rows->n, H = c->num_heads, hd = c->head_dim, r = c->rope_dim;
    const int64_t Hc = (int64_t)H * hd, ql = c->q_lora_rank;
    const float eps = c->rms_norm_eps;
    const float *freqs = L->ratio ? e->rope_comp : e->rope_main;

    /* the projections of h in one op: wq_a, wkv on act_quant(h) (s->xh, written by the site
     * with h); compressors, weights_proj; and q_norm (below) but where the compressors fork
     * before it */
    const int csa = L->ratio == 4, early = L->ratio > 0 && N > 2;
    DSV4_TRY(h_projections(e, L, N, !early));
    MARK("attn.proj");

    /* The compressors (which need only their projections of h) and, in a CSA layer, the
     * indexer's chain (which needs xq, the weights s->iw and its compressor's entries) run beside
     * the query and key chains below: a side stream, a fork in the graph. The indexer's top-k is
     * a few CTAs' latency-bound work while the main chain streams wq_b. From 3 rows the
     * compressors fork before q_norm, so that a step closing their windows (pool, norm, RoPE,
     * quant) runs them beside it, and the indexer's chain forks after it and follows them on
     * the side stream. H100, dsv4 bench: Flash batch 3-8 -0.5 to -1.1%, 16-64 -0.2 to -0.3%;
     * at 1-2 rows +0.4%, so there they fork after q_norm with the indexer (docs/PERF.md, session
     * 33). */
    if (early) {
        DSV4_TRY(dsv4_bk_side_begin(e->b));
        DSV4_TRY(compress(e, L, rows));
        DSV4_TRY(dsv4_bk_side_end(e->b));
        /* act_quant(q_norm(qr)) (s->xq) */
        DSV4_TRY(dsv4_bk_rmsnorm_quant(e->b, s->qr, s->xq, s->qr, L->q_norm, N, ql, eps, 128));
        MARK("attn.q_norm");
    }
    /* At 1-2 rows a CSA layer's indexer queries (its wq_b on xq) share wq_b's op, entry 0 with a
     * signal, and the side chain (compressors, then the indexer's top-k, which waits for the
     * signal) forks at a mark before that op: on CUDA one launch, whose first CTAs are the
     * indexer's, so the top-k starts while wq_b still streams instead of behind a launch of its
     * own that wq_b's CTAs kept from the SMs. H100, dsv4 bench (docs/PERF.md, session 38): Flash
     * batch 1 -0.6%, 2 -0.5%, Pro 1 0, 2 -0.15%, 4 rows and more unchanged; the attention no
     * longer waits for the indexer in a step that closes no window (it waited 4.7 us). */
    const int paired = pairs_index_queries(L, N);
    /* zeroed at the step's start (dsv4_engine_forward) */
    int32_t *signal = paired ? s->ixflag + (L - e->L) : NULL;
    if (paired) {
        DSV4_TRY(dsv4_bk_side_mark(e->b));
        dsv4_bk_linear_entry p[2];
        p[0] = dsv4_bk_lin_entry(&w->idx_wq_b, s->xq, ql, s->iq, w->idx_wq_b.rows, 1);
        p[0].signal = signal;
        p[1] = dsv4_bk_lin_entry(&w->wq_b, s->xq, ql, s->q, w->wq_b.rows, 1);
        DSV4_TRY(dsv4_bk_linear_multi(e->b, p, 2, N));
        MARK("attn.q");
    }
    if (csa || (L->ratio > 0 && !early)) {
        DSV4_TRY(paired ? dsv4_bk_side_begin_marked(e->b) : dsv4_bk_side_begin(e->b));
        if (!early) DSV4_TRY(compress(e, L, rows));
        if (csa) {
            const int nh = c->index_n_heads, d = c->index_head_dim;
            if (!paired) {
                DSV4_TRY(linear_q(e, &w->idx_wq_b, s->qr, s->xq, 0, N, s->iq));
                MARK("index.q");
            }
            /* the queries' RoPE, Hadamard and FP4, then the scores and top-k, in one op; the
             * weights' scale nh^-0.5 d^-0.5 (and its bf16 rounding) is applied inside */
            DSV4_TRY(dsv4_bk_indexer_q_topk(e->b, s->sel, s->iq, s->iw,
                                            (float)(pow(d, -0.5) * pow(nh, -0.5)), L->idx.ent,
                                            L->idx.cap, nh, d, r, e->rope_comp, L->idx.ratio,
                                            c->index_topk, rows, s->idx_ws, signal));
            MARK("index.topk");
        }
        DSV4_TRY(dsv4_bk_side_end(e->b));
    }

    /* queries: q (wq_b, per-head norm, RoPE) */
    if (!paired) {
        DSV4_TRY(linear_q(e, &w->wq_b, s->qr, s->xq, 0, N, s->q)); /* s->xq keeps act_quant(qr) */
        MARK("attn.q");
    }

    /* the query heads' norm and RoPE, and beside them the shared key/value head: kv (kv_norm,
     * RoPE, FP8 non-RoPE dims) -> window ring */
    DSV4_TRY(dsv4_bk_q_kv_norm_rope(e->b, s->q, H, L->win, e->R, s->kv, L->kv_norm, rows, hd, r,
                                    freqs, eps, DSV4_KV_QBLOCK));
    MARK("attn.qkv_norm");
    if (L->ratio > 0) DSV4_TRY(dsv4_bk_side_join(e->b));

    DSV4_TRY(dsv4_bk_attention(e->b, s->o, s->q, H, hd, r, L->win, e->R, c->sliding_window,
                               L->ratio ? L->comp.ent : NULL, L->ratio ? L->comp.cap : 0, L->ratio,
                               csa ? s->sel : NULL, c->index_topk, L->sink, rows, r, freqs));
    MARK("attn.core"); /* o: attention, then the inverse RoPE (fused in one op) */

    /* grouped output: o [N, g, Hc/g] -> z [N, g * ol] (wo_a row groups) -> wo_b -> f */
    const int g = c->o_groups;
    const int64_t ol = c->o_lora_rank; /* group gi: o columns [gi Hc/g, ..) = wo_a.cols each */
    DSV4_TRY(dsv4_bk_linear_grouped(e->b, &w->wo_a, g, s->o, Hc, N, s->z, g * ol, 1));
    DSV4_TRY(linear_q(e, &w->wo_b, s->z, s->xq, 1, N, s->f));
    MARK("attn.out");
    return DSV4_OK;
}

/* The MoE sublayer: s->h [N, D] -> s->f [N, D] (forward_moe.c, faithful). */
static dsv4_status moe(dsv4_engine *e, eng_layer *L, const dsv4_bk_rows *rows)
{
    const dsv4_config *c = e->c;
    eng_scratch *s = &e->s;
    const int N = rows->n, E = c->n_routed_experts, K = c->n_experts_per_tok;
    const int64_t D = c->hidden_size;
    DSV4_TRY(dsv4_bk_linear(e->b, &L->w.gate, 0, E, s->h, D, N, s->logits_e, E, 0));
    MARK("moe.router"); /* the gate projection; the routing is in moe.experts */
    DSV4_TRY(dsv4_bk_moe_routed(e->b, s->f, s->msel, s->wts, s->h, s->logits_e, L->gate_bias,
                                L->hash ? L->tid2eid : NULL, rows, L->experts, E, K, D,
                                c->routed_scaling_factor, c->swiglu_limit, s->moe_ws));
    MARK("moe.experts");
    return DSV4_OK;
}

dsv4_status dsv4_engine_forward(dsv4_engine *e, int N)
{
    const dsv4_config *c = e->c;
    eng_scratch *s = &e->s;
    const int n = c->hc_mult;
    const int64_t D = c->hidden_size;
    const dsv4_bk_rows rows = step_rows(e, N);

    /* the layers' indexer signals, where attention pairs the indexer's queries with wq_b: a
     * memset node ahead of the step's first kernel, so only where some layer needs it */
    int paired = 0;
    for (int li = 0; li < e->n_layers; li++) paired |= pairs_index_queries(&e->L[li], N);
    if (paired) DSV4_TRY(dsv4_bk_memset0(e->b, s->ixflag, (size_t)e->n_layers * sizeof(int32_t)));
    DSV4_TRY(dsv4_bk_embed(e->b, s->X, &e->embed, &rows, n, D));
    MARK("embed");
    for (int li = 0; li < e->n_layers; li++) {
        eng_layer *L = &e->L[li];
        const dsv4_weight *fa = &L->w.hc_attn_fn;
        if (li == 0)
            DSV4_TRY(hc_site(e, fa, L->hc_attn_base, L->hc_attn_scale, L->attn_norm, s->xh, N));
        else /* the previous MoE's post-mix, then this site */
            DSV4_TRY(hc_seam(e, fa, L->hc_attn_base, L->hc_attn_scale, L->attn_norm, s->xh, N));
        DSV4_TRY(attention(e, L, &rows));
        DSV4_TRY(
            hc_seam(e, &L->w.hc_ffn_fn, L->hc_ffn_base, L->hc_ffn_scale, L->ffn_norm, NULL, N));
        DSV4_TRY(moe(e, L, &rows));
    }
    /* the last MoE's post-mix (X and Xo swap), head collapse X [N, n, D] -> y, final norm -> h */
    DSV4_TRY(dsv4_bk_side_join_settled(e->b)); /* the last seam's post and comb */
    const int posted = e->n_layers > 0;
    DSV4_TRY(dsv4_bk_hc_head_site(e->b, s->h, posted ? s->Xo : NULL, s->X, posted ? s->f : NULL,
                                  s->post, s->comb, &e->hc_head_fn, e->hc_head_base,
                                  e->hc_head_scale, e->norm, N, n, D, c->hc_eps, c->rms_norm_eps));
    if (posted) swap_streams(s);
    MARK("head.collapse");
    return DSV4_OK;
}
