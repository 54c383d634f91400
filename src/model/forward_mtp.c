/*
 * forward_mtp.c - the multi-token-prediction (MTP) block, for speculative decoding: from the
 * main model's last-layer streams at position t and the token at t + 1, one extra block drafts
 * the token at t + 2. Semantics of DeepSeek's official inference/model.py, class MTPBlock
 * (transformers has no MTP module):
 *
 *   e   = e_proj(enorm(embed(token[t+1])))                     [T, D]
 *   x_j = e + h_proj(hnorm(X_main[t]_j))   for each stream j   [T, n, D]
 *   x   = Block_{num_layers}(x)   attention at position t over the block's own window; non-hash
 *   logits = head(norm(hc_head_collapse(x)))  with the block's own hc_head_* and norm  [V]
 *
 * The block's state (window keys, and compressor rows if its ratio were non-zero) lives in the
 * session's per-layer arrays after the main layers (session.h), indexed by the position t of
 * the main stream it was computed from; truncate and fork cover it (session.c).
 */
#include "core/error.h"
#include "model/session.h"

#include <string.h>

int dsv4_model_num_mtp(const dsv4_model *m)
{
    return m ? m->w.n_layers - m->cfg.num_layers : 0;
}

/* Drops the compressor entries of MTP blocks past n tokens (window keys need nothing: the
 * window is read from the held count). */
static void mtp_clamp(dsv4_session *s, int64_t n)
{
    for (int i = s->cfg->num_layers; i < s->n_layers; i++) {
        dsv4_comp_state *cs[2] = {&s->ls[i].comp, &s->ls[i].idx};
        for (int j = 0; j < 2; j++)
            if (cs[j]->ratio > 0 && cs[j]->n_entries > n / cs[j]->ratio)
                cs[j]->n_entries = n / cs[j]->ratio;
    }
}

void dsv4_mtp_truncate(dsv4_session *s, int64_t n)
{
    if (s->mtp_pos <= n) return;
    s->mtp_pos = n;
    mtp_clamp(s, n);
}

/* MTP block 0 at positions s->pos .. s->pos+T-1 (the caller has moved s->pos there): hmain rows
 * of those positions and tok [T] (the tokens one position later) -> logits [V] of the last
 * position (NULL: none). */
static dsv4_status mtp_run(dsv4_session *s, const int32_t *tok, int64_t T, float *logits)
{
    const dsv4_config *c = s->cfg;
    const dsv4_model_weights *W = &s->m->w;
    const dsv4_layer_weights *lw = &W->layers[c->num_layers];
    const int n = c->hc_mult;
    const int64_t D = c->hidden_size, nD = (int64_t)n * D;
    const float eps = c->rms_norm_eps;
    dsv4_fwd_buf b = s->ws.fwd; /* reserved by the caller; a copy: hc_expand swaps X and Xo */
    dsv4_status st = DSV4_OK;

    /* e = embed(tok) [T, D] (bf16 rows) -> enorm -> h [T, D] (bf16) -> e_proj -> f [T, D] */
    for (int64_t t = 0; t < T && st == DSV4_OK; t++) {
        st = dsv4_weight_dequant_row(&W->embed, tok[t], b.y + t * D);
        dsv4_fw_bf16(s, b.y + t * D, D);
    }
    if (st != DSV4_OK) goto done;
    dsv4_session_emit(s, "mtp.embed", b.y, T, D);
    dsv4_op_rmsnorm(b.h, b.y, s->mtp_enorm, T, D, eps);
    dsv4_fw_bf16(s, b.h, T * D);
    st = dsv4_fw_linear_q(s, &lw->e_proj, b.h, T, b.f);
    if (st != DSV4_OK) goto done;

    /* X_main [T, n, D] -> hnorm per stream -> flat [T*n, D] (bf16) -> h_proj -> Xo [T*n, D] */
    dsv4_op_rmsnorm(b.flat, s->hmain + s->pos * nD, s->mtp_hnorm, T * n, D, eps);
    dsv4_fw_bf16(s, b.flat, T * nD);
    st = dsv4_fw_linear_q(s, &lw->h_proj, b.flat, T * n, b.Xo);
    if (st != DSV4_OK) goto done;

    /* X[t, j] = e_proj(e)[t] + h_proj(h)[t, j]: the official unsqueeze(2) broadcast; bf16 sum */
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < n; j++) {
            float *x = b.X + t * nD + j * D;
            const float *hp = b.Xo + t * nD + j * D, *ep = b.f + t * D;
            for (int64_t i = 0; i < D; i++) x[i] = ep[i] + hp[i];
        }
    dsv4_fw_bf16(s, b.X, T * nD);

    /* the block (sliding-window attention at positions s->pos.., MoE), then its own head
     * collapse and norm -> h [T, D] -> shared LM head on the last row -> logits [V] */
    st = dsv4_forward_block(s, c->num_layers, tok, T, &b);
    if (st == DSV4_OK)
        st = dsv4_forward_head(s, &lw->hc_head_fn, s->mtp_hc_head_base, s->mtp_hc_head_scale,
                               s->mtp_norm, "mtp", T, &b);
    if (st == DSV4_OK && logits)
        st = dsv4_cpu_linear(s->pool, &W->head, b.h + (T - 1) * D, 1, logits);
done:
    return st;
}

dsv4_status dsv4_session_mtp_draft(dsv4_session *s, int32_t next_token, float *logits)
{
    dsv4_clear_error();
    if (!s) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_session_mtp_draft: session is NULL");
    if (s->eng)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "MTP drafts run on the CPU only (--device cpu)");
    const dsv4_config *c = s->cfg;
    if (s->n_mtp == 0)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED,
                         "MTP drafting needs the checkpoint's mtp.0.* weights; this one has none "
                         "(config declares %d MTP block(s); transformers-saved checkpoints drop "
                         "them)",
                         s->m->mtp_declared);
    const int64_t P = s->pos;
    if (P < 1)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT,
                         "dsv4_session_mtp_draft: the session holds no token yet (eval first)");
    if (next_token < 0 || next_token >= c->vocab_size)
        return dsv4_fail(DSV4_ERR_INPUT, "token id %d is outside the vocabulary [0, %d)",
                         next_token, c->vocab_size);

    /* Held entries 0 .. mtp_pos-1 stay valid except, possibly, the last: truncate keeps the
     * entry at n-1, whose token (position n) may since have been replaced (or, at P, differ
     * from next_token). Every earlier entry's token is at a position below the truncation.
     * The entry at P-1 is always computed: its logits are the result. */
    int64_t m0 = s->mtp_pos;
    if (m0 > 0 && (m0 == P || s->mtp_ids[m0 - 1] != s->ids[m0])) m0--;
    dsv4_mtp_truncate(s, m0);

    /* catch up positions m0 .. P-1 in one chunk: tok[i] = the token at m0 + i + 1 */
    const int64_t T = P - m0;
    DSV4_TRY(dsv4_workspace_reserve(s, T)); /* allocates only for a longer chunk or more history */
    int32_t *tok = s->ws.mtp_tok;
    for (int64_t i = 0; i < T; i++) tok[i] = m0 + i + 1 < P ? s->ids[m0 + i + 1] : next_token;
    memcpy(s->mtp_ids + m0, tok, (size_t)T * sizeof *tok);
    s->pos = m0; /* the block's attention appends at s->pos (forward_attn.c) */
    dsv4_status st = mtp_run(s, tok, T, logits);
    s->pos = P;
    if (st != DSV4_OK) {
        mtp_clamp(s, m0); /* drop what the failed chunk appended */
        return st;
    }
    s->mtp_pos = P;
    return DSV4_OK;
}
