/*
 * dsv4.h - the public interface of libdsv4, a DeepSeek-V4 inference engine.
 *
 * This is the only header a program using the library includes. Everything behind it is
 * reached through opaque handles; no tensor or backend type leaks out.
 *
 * Errors: every call that can fail returns a dsv4_status. DSV4_OK is zero. On failure the
 * library also records a human-readable detail text (naming the file, tensor or field involved
 * and what was expected) that dsv4_last_error() returns. The text is kept per thread, so two
 * threads using the library do not overwrite each other's messages. Status values never change
 * meaning once published; new ones are only appended.
 *
 * Ownership: a handle returned through an out-parameter belongs to the caller, who releases it
 * with the matching _close/_free call. Strings returned as `const char *` belong to the library
 * and live as long as the handle they came from.
 */
#ifndef DSV4_H
#define DSV4_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Status codes
 * ---------------------------------------------------------------------------------------- */
typedef enum dsv4_status {
    DSV4_OK = 0,
    DSV4_ERR_INVALID_ARGUMENT = 1, /* a caller passed NULL, an out-of-range value, a bad flag */
    DSV4_ERR_IO = 2,               /* a file could not be opened, read, stat'ed or mapped */
    DSV4_ERR_FORMAT = 3,           /* a file is malformed: safetensors header, JSON syntax */
    DSV4_ERR_CONFIG = 4,           /* config.json lacks a key, or a value is out of range */
    DSV4_ERR_MISSING_TENSOR = 5,   /* a tensor the model needs is not in the checkpoint */
    DSV4_ERR_TENSOR_SHAPE = 6,     /* a tensor's shape disagrees with the model geometry */
    DSV4_ERR_TENSOR_DTYPE = 7,     /* a tensor's dtype is unknown or not valid for its role */
    DSV4_ERR_UNSUPPORTED = 8,      /* a valid input this version does not handle */
    DSV4_ERR_OUT_OF_MEMORY = 9,    /* host or device allocation failed */
    DSV4_ERR_DEVICE = 10,          /* a GPU call failed (the text names the call and place) */
    DSV4_ERR_INPUT = 11,           /* user input is invalid: bad UTF-8, unknown token id */
    DSV4_ERR_CONTEXT_OVERFLOW = 12 /* a prompt or generation exceeds the context length */
} dsv4_status;

/* The enum's name as text, e.g. "DSV4_ERR_IO". Never NULL. */
const char *dsv4_status_name(dsv4_status status);

/* The detail text of the most recent failing call on this thread ("" if none). The pointer is
 * valid until the next library call on this thread. */
const char *dsv4_last_error(void);

/* Library version, "MAJOR.MINOR.PATCH". */
const char *dsv4_version(void);

/* ------------------------------------------------------------------------------------------
 * Compute devices
 * ---------------------------------------------------------------------------------------- */
typedef enum dsv4_device_kind {
    DSV4_DEVICE_AUTO = 0, /* the GPU when one answers, else the CPU */
    DSV4_DEVICE_CPU = 1,
    DSV4_DEVICE_CUDA = 2
} dsv4_device_kind;

/* Resolves `wanted` to the device a run would use. AUTO falls back to the CPU when the library
 * was built without CUDA or no GPU answers. Asking for CUDA explicitly when none is usable is
 * DSV4_ERR_DEVICE. `name` (may be NULL) receives a description such as "NVIDIA H100 80GB HBM3"
 * or "CPU (16 threads)". */
dsv4_status dsv4_device_resolve(dsv4_device_kind wanted, dsv4_device_kind *resolved, char *name,
                                size_t name_size);

/* ------------------------------------------------------------------------------------------
 * Models: a checkpoint directory, opened and validated
 * ---------------------------------------------------------------------------------------- */
typedef struct dsv4_model dsv4_model;

/* Checkpoint layouts the loader recognises. */
typedef enum dsv4_layout {
    DSV4_LAYOUT_OFFICIAL = 0, /* DeepSeek's published files: flat names, FP8 + MXFP4 (or FP8) */
    DSV4_LAYOUT_NVFP4 = 1,    /* NVIDIA's re-quantisation: NVFP4 routed experts */
    DSV4_LAYOUT_HF = 2        /* transformers' save_pretrained: "model." prefix, dense dtypes */
} dsv4_layout;

/* Opens the checkpoint in `dir`: reads config.json (or inference/config.json), maps every
 * safetensors shard, detects the layout, and checks that each tensor the geometry calls for is
 * present with a valid dtype and shape. Nothing is copied: weights stay memory-mapped. */
dsv4_status dsv4_model_open(const char *dir, dsv4_model **out);
void dsv4_model_close(dsv4_model *model);

/* Weight storage formats, as the loader classifies each matrix. */
typedef enum dsv4_weight_format {
    DSV4_FORMAT_F32 = 0,
    DSV4_FORMAT_BF16 = 1,
    DSV4_FORMAT_F16 = 2,
    DSV4_FORMAT_FP8 = 3,   /* e4m3 with ue8m0 (or f32) 128x128 block scales */
    DSV4_FORMAT_MXFP4 = 4, /* e2m1 pairs with ue8m0 scales per 32 inputs */
    DSV4_FORMAT_NVFP4 = 5, /* e2m1 pairs with e4m3 scales per 16 inputs and an f32 global */
    DSV4_FORMAT_INT = 6,   /* integer tables (tid2eid) */
    DSV4_FORMAT_COUNT = 7
} dsv4_weight_format;

const char *dsv4_weight_format_name(dsv4_weight_format format);

/* Attention type of one layer. */
typedef enum dsv4_attention_kind {
    DSV4_ATTN_SLIDING = 0, /* compress ratio 0: window only */
    DSV4_ATTN_CSA = 1,     /* compressed sparse attention: ratio 4 + lightning indexer */
    DSV4_ATTN_HCA = 2      /* heavily compressed attention: ratio 128, dense over entries */
} dsv4_attention_kind;

/* Model geometry and what the checkpoint holds, as read and cross-checked at open time. */
typedef struct dsv4_model_info {
    dsv4_layout layout;
    int vocab_size, hidden_size, num_layers, num_mtp_layers;
    int num_heads, head_dim, rope_dim, q_lora_rank, o_groups, o_lora_rank;
    int n_routed_experts, n_experts_per_tok, n_shared_experts, moe_intermediate_size;
    int num_hash_layers, index_n_heads, index_head_dim, index_topk;
    int sliding_window, hc_mult, hc_sinkhorn_iters;
    int64_t max_position_embeddings;
    float rms_norm_eps, hc_eps, rope_theta, compress_rope_theta, routed_scaling_factor,
        swiglu_limit;
    float yarn_factor, yarn_beta_fast, yarn_beta_slow;
    int64_t yarn_original_max_position;
    int bos_token_id, eos_token_id;
    int64_t total_params;                        /* logical elements, scales excluded */
    int64_t mtp_params;                          /* of which in mtp.* */
    uint64_t total_bytes;                        /* as stored, scales included */
    uint64_t bytes_by_format[DSV4_FORMAT_COUNT]; /* weight bytes + their scales */
    int64_t params_by_format[DSV4_FORMAT_COUNT];
    int num_files; /* safetensors shards mapped */
} dsv4_model_info;

typedef struct dsv4_layer_info {
    int index; /* 0..num_layers-1; num_layers.. for MTP blocks */
    int is_mtp;
    int compress_ratio; /* 0, 4, 128 */
    dsv4_attention_kind attention;
    int hash_routed;                  /* 1: experts picked by tid2eid[token] */
    dsv4_weight_format attn_format;   /* format of wq_a (the attention projections) */
    dsv4_weight_format expert_format; /* format of the routed experts */
    uint64_t bytes;                   /* all weights of this layer as stored */
} dsv4_layer_info;

dsv4_status dsv4_model_get_info(const dsv4_model *model, dsv4_model_info *info);
/* i in [0, num_layers + num_mtp_layers). */
dsv4_status dsv4_model_get_layer_info(const dsv4_model *model, int i, dsv4_layer_info *info);

/* Memory a run would need, in bytes, for `batch` sequences of up to `context` tokens each:
 * weights as stored, per-sequence attention state in the serving layout (window + compressed
 * entries + indexer keys), and an activation workspace estimate. */
typedef struct dsv4_memory_plan {
    uint64_t weight_bytes;
    uint64_t state_bytes_per_token; /* per sequence, averaged over a `context`-token run */
    uint64_t state_bytes;           /* batch * context tokens of state */
    uint64_t workspace_bytes;
    uint64_t total_bytes;
} dsv4_memory_plan;

dsv4_status dsv4_model_plan_memory(const dsv4_model *model, int64_t context, int batch,
                                   dsv4_memory_plan *plan);

/* ------------------------------------------------------------------------------------------
 * Tokenizer: byte-level BPE from a HuggingFace tokenizer.json, identical to HF `tokenizers`
 * ---------------------------------------------------------------------------------------- */
typedef struct dsv4_tokenizer dsv4_tokenizer;

/* Opens the tokenizer described by the tokenizer.json at `path` (for a model directory, pass
 * DIR/tokenizer.json): vocabulary, ranked merges, added tokens and the pre-tokenizer steps as
 * the file declares them. A feature this implementation cannot reproduce exactly (a
 * normalizer, byte fallback, an unknown pre-tokenizer) is DSV4_ERR_UNSUPPORTED. A tokenizer is
 * read-only once open (its piece cache has its own lock): threads may share one. */
dsv4_status dsv4_tokenizer_open(const char *path, dsv4_tokenizer **out);
void dsv4_tokenizer_close(dsv4_tokenizer *tok);

/* Number of ids (1 + the largest id of the vocabulary and the added tokens): 129280 for V4. */
int32_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *tok);

/* The id of a token written as in tokenizer.json ("<｜User｜>", "<think>", "Ġthe"), or -1. */
int32_t dsv4_tokenizer_token_to_id(const dsv4_tokenizer *tok, const char *token);

/* The token string of `id` as written in tokenizer.json, or NULL for an unknown id. */
const char *dsv4_tokenizer_id_to_token(const dsv4_tokenizer *tok, int32_t id);

/* 1 if `id` is an added token marked "special": true (BOS, EOS, ...), else 0. */
int dsv4_tokenizer_is_special(const dsv4_tokenizer *tok, int32_t id);

/* Flags of dsv4_tokenizer_encode. */
#define DSV4_ENCODE_SPLIT_SPECIAL  1u /* special tokens written in the text are plain text */
#define DSV4_ENCODE_REJECT_INVALID 2u /* invalid UTF-8 is DSV4_ERR_INPUT (default: see below) */

/* Encodes `len` bytes of `text` into ids, as HF `tokenizers` encodes the same string (no BOS is
 * added: the chat renderer writes it). Added tokens written in the text (including "<think>"
 * and the special tokens) are recognised unless DSV4_ENCODE_SPLIT_SPECIAL is given, which like
 * HF's encode_special_tokens affects only those marked special. Invalid UTF-8: each byte that
 * starts no valid sequence becomes its own byte-level token and separates the valid runs around
 * it (which are encoded as if alone), so any bytes round-trip through dsv4_tokenizer_decode.
 * On success *ids (free with dsv4_free) holds *n_ids ids. */
dsv4_status dsv4_tokenizer_encode(const dsv4_tokenizer *tok, const char *text, size_t len,
                                  unsigned flags, int32_t **ids, size_t *n_ids);

/* Flags of dsv4_tokenizer_decode and dsv4_detokenizer_open. */
#define DSV4_DECODE_SKIP_SPECIAL 1u /* leave out tokens marked special (BOS, EOS, ...) */

/* Decodes ids to text: *text (free with dsv4_free) is NUL-terminated and *len (may be NULL)
 * bytes long. An id outside the vocabulary is DSV4_ERR_INPUT. Bytes are returned exactly (no
 * U+FFFD replacement), so decode(encode(x)) == x. */
dsv4_status dsv4_tokenizer_decode(const dsv4_tokenizer *tok, const int32_t *ids, size_t n,
                                  unsigned flags, char **text, size_t *len);

/* Releases memory the library returned to the caller (id arrays, strings). NULL is fine. */
void dsv4_free(void *p);

/* Streaming decoder: feed ids one by one as they are sampled, get the text that is final. A
 * token that ends inside a multi-byte UTF-8 character is held back until the character is
 * complete; bytes that can never complete are released as they are. The text pointer is
 * owned by the detokenizer and valid until its next call. */
typedef struct dsv4_detokenizer dsv4_detokenizer;

dsv4_status dsv4_detokenizer_open(const dsv4_tokenizer *tok, unsigned flags,
                                  dsv4_detokenizer **out);
/* Adds one id; *text and *len receive the newly final text (possibly empty). */
dsv4_status dsv4_detokenizer_push(dsv4_detokenizer *d, int32_t id, const char **text, size_t *len);
/* At the end of a stream: returns whatever is still held back. */
dsv4_status dsv4_detokenizer_flush(dsv4_detokenizer *d, const char **text, size_t *len);
void dsv4_detokenizer_close(dsv4_detokenizer *d);

/* ------------------------------------------------------------------------------------------
 * Chat: the DeepSeek-V4 prompt format (its official encoding_dsv4.py, in C) and its inverse
 * ---------------------------------------------------------------------------------------- */
typedef enum dsv4_role {
    DSV4_ROLE_SYSTEM = 0,
    DSV4_ROLE_USER = 1,
    DSV4_ROLE_ASSISTANT = 2,
    DSV4_ROLE_TOOL = 3,     /* a tool result; rendered inside a user turn as <tool_result> */
    DSV4_ROLE_DEVELOPER = 4 /* rendered like a user turn; may carry tools */
} dsv4_role;

/* One tool call of an assistant turn. `arguments` is the JSON text of an object, as in the
 * OpenAI API ("{\"city\": \"Paris\"}"). `id` may be NULL. */
typedef struct dsv4_tool_call {
    const char *id;
    const char *name;
    const char *arguments;
} dsv4_tool_call;

/* One message. Strings are borrowed (UTF-8, NUL-terminated); NULL means absent. */
typedef struct dsv4_chat_message {
    dsv4_role role;
    const char *content;
    const char *reasoning_content;    /* assistant: the thinking text */
    const dsv4_tool_call *tool_calls; /* assistant */
    size_t n_tool_calls;
    const char *tool_call_id;         /* tool: which call this answers */
    const char *tools_json;           /* system/developer: JSON array of OpenAI tools */
    const char *response_format_json; /* system/developer: a JSON schema object */
} dsv4_chat_message;

typedef enum dsv4_reasoning_effort {
    DSV4_EFFORT_DEFAULT = 0, /* none given */
    DSV4_EFFORT_HIGH = 1,    /* accepted; renders like the default */
    DSV4_EFFORT_MAX = 2      /* thinking mode: the "Reasoning Effort: Absolute maximum" prefix */
} dsv4_reasoning_effort;

typedef struct dsv4_chat_options {
    int thinking;       /* 1: thinking mode (<think> after <｜Assistant｜>), 0: chat (</think>) */
    int keep_reasoning; /* 1: keep every past turn's reasoning (the official drop_thinking=False) */
    dsv4_reasoning_effort reasoning_effort;
    int no_bos; /* 1: do not start with <｜begin▁of▁sentence｜> (continuing a context) */
} dsv4_chat_options;

/* Renders messages into the prompt text, by the rules of DeepSeek's encoding_dsv4.py:
 * BOS + system text + "<｜User｜>" + user text + "<｜Assistant｜>" + "<think>" or "</think>", past
 * assistant turns as content + EOS with reasoning kept only after the last user message (or
 * always when tools are present), tool calls as DSML blocks, tool results merged into user turns.
 * When the last message is a user (or developer or tool) message the prompt ends ready for the
 * assistant's reply. *out (free with dsv4_free) is NUL-terminated; encode it with the tokenizer
 * (special tokens recognised) to get ids that hold BOS exactly once. `opts` may be NULL (chat
 * mode). Malformed input (bad JSON in tools or arguments) is DSV4_ERR_INPUT. */
dsv4_status dsv4_chat_render(const dsv4_chat_message *messages, size_t n,
                             const dsv4_chat_options *opts, char **out);

/* The same from an OpenAI-style request in JSON: either a messages array, or an object with
 * "messages", and optionally "tools" (attached to the first system message, one is created if
 * needed), "response_format", "thinking" (bool), "reasoning_effort" ("high"/"max"),
 * "keep_reasoning" (bool). */
dsv4_status dsv4_chat_render_json(const char *json, size_t len, char **out);

/* A completion parsed into its parts. All memory is owned by the struct: release it with
 * dsv4_chat_parsed_free. Tool call arguments are JSON object text. */
typedef struct dsv4_chat_parsed {
    char *reasoning; /* "" in chat mode */
    char *content;
    dsv4_tool_call *tool_calls;
    size_t n_tool_calls;
    int finished; /* 1 when the end-of-sentence token was seen */
} dsv4_chat_parsed;

void dsv4_chat_parsed_free(dsv4_chat_parsed *p);

/* Parses decoded completion text (decode without skipping special tokens, so EOS and the DSML
 * markers are visible) that followed a prompt rendered with `thinking`. A malformed tool-call
 * block is DSV4_ERR_INPUT. Text that stops early (no EOS) parses with finished = 0. */
dsv4_status dsv4_chat_parse(const char *text, size_t len, int thinking, dsv4_chat_parsed *out);

/* Streaming parser: push decoded text as it is generated, in any pieces (a marker or a tool
 * call may be split across pushes). Each push reports what became final. */
typedef struct dsv4_chat_parser dsv4_chat_parser;

typedef struct dsv4_chat_delta {
    const char *reasoning; /* new reasoning text (not NUL-terminated; may be empty) */
    size_t reasoning_len;
    const char *content; /* new content text */
    size_t content_len;
    const dsv4_tool_call *tool_calls; /* tool calls completed by this push */
    size_t n_tool_calls;
    int finished; /* EOS seen: the reply is complete */
} dsv4_chat_delta;

dsv4_status dsv4_chat_parser_open(int thinking, dsv4_chat_parser **out);
/* The delta's pointers are owned by the parser and valid until its next call. */
dsv4_status dsv4_chat_parser_push(dsv4_chat_parser *p, const char *text, size_t len,
                                  dsv4_chat_delta *delta);
/* End of the text: releases held-back text; an unfinished tool-call block is DSV4_ERR_INPUT. */
dsv4_status dsv4_chat_parser_finish(dsv4_chat_parser *p, dsv4_chat_delta *delta);
void dsv4_chat_parser_close(dsv4_chat_parser *p);

/* ------------------------------------------------------------------------------------------
 * Sessions: one sequence's forward pass on the CPU (the reference backend)
 *
 * A session holds a sequence's incremental state: every layer's sliding-window keys, the
 * compressed entries, the indexer keys and each compressor's partial window. Tokens are
 * appended with dsv4_session_eval in chunks of any size; the result does not depend on how the
 * sequence was split. A session uses its model (which must outlive it) read-only; two sessions
 * may run on different threads at once, but one session must not be used by two threads at a
 * time.
 * ---------------------------------------------------------------------------------------- */
typedef struct dsv4_session dsv4_session;

/* How activations are rounded. */
typedef enum dsv4_numeric_mode {
    DSV4_MODE_FAITHFUL = 0, /* the official reference's FP8/FP4 activation simulation (default) */
    DSV4_MODE_EXACT = 1     /* fp32 activations everywhere: matches HF transformers in float32 */
} dsv4_numeric_mode;

typedef struct dsv4_session_options {
    dsv4_numeric_mode mode;
    int n_threads;       /* <= 0: one per online CPU */
    int64_t max_context; /* tokens the session may hold; <= 0: the model's max_position_embeddings
                            (CUDA: at most DSV4_CUDA_DEFAULT_CONTEXT) */
    /* DSV4_DEVICE_CPU (default), CUDA or AUTO (CUDA when a GPU answers). CUDA sessions run the
     * batched engine in faithful mode only; they share one copy of the weights on the GPU per
     * model (up to DSV4_CUDA_SESSIONS sessions at once); a truncation re-runs the kept prefix;
     * capture hooks and MTP drafts are CPU features. */
    dsv4_device_kind device;
} dsv4_session_options;

enum { DSV4_CUDA_DEFAULT_CONTEXT = 65536, DSV4_CUDA_SESSIONS = 4 };

/* Fills *o with the defaults: faithful mode, all CPUs, the model's context length, the CPU. */
void dsv4_session_options_default(dsv4_session_options *o);

/* Creates an empty session (position 0) on `m`. `o` may be NULL (defaults). A model this
 * version cannot run (e.g. a rope_dim above 512) is DSV4_ERR_UNSUPPORTED. */
dsv4_status dsv4_session_create(dsv4_model *m, const dsv4_session_options *o, dsv4_session **out);

/* Releases the session and its state. NULL is fine. */
void dsv4_session_close(dsv4_session *s);

/* Appends ids[0..n) to the sequence and runs the forward pass over them. `logits` (may be NULL)
 * receives float logits: [n, vocab] rows, one per appended token, when all_positions is
 * non-zero, else [vocab] for the last appended token. An id outside [0, vocab) is
 * DSV4_ERR_INPUT and growing the sequence past max_context is DSV4_ERR_CONTEXT_OVERFLOW; in
 * both cases (checked before any work) the session is unchanged. After any other failure the
 * session is at its previous position again. n == 0 does nothing. */
dsv4_status dsv4_session_eval(dsv4_session *s, const int32_t *ids, int64_t n, float *logits,
                              int all_positions);

/* Number of tokens the session holds (the position of the next token). */
int64_t dsv4_session_position(const dsv4_session *s);

/* A deep copy of `s` (same model, options and state) that continues independently. */
dsv4_status dsv4_session_fork(const dsv4_session *s, dsv4_session **out);

/* Drops every token at position >= n_tokens: window, compressed entries and partial
 * compressor windows become what a session fed only the first n_tokens would hold.
 * n_tokens outside [0, position] is DSV4_ERR_INVALID_ARGUMENT. */
dsv4_status dsv4_session_truncate(dsv4_session *s, int64_t n_tokens);

/* The model's vocabulary size (the row width of the logits), or 0 for NULL. */
int dsv4_model_vocab_size(const dsv4_model *m);

/* Intermediate values, for localising a divergence (dsv4 diff). While set, every
 * dsv4_session_eval calls fn once per recorded value, in the order computed, with rows
 * [n_rows, row_width] of f32 (valid only during the call). Names, for the appended tokens:
 *   "embed" [n, D]; per layer i: "hidden.L<i>.attn_in" (normalised attention input) [n, D],
 *   "hidden.L<i>.attn_out" [n, D], "hidden.L<i>.ffn_in" [n, D], "hidden.L<i>.ffn_out" [n, D],
 *   "hidden.L<i>.streams" (the layer's output streams) [n, hc_mult * D]; for compressed layers
 *   "compressed.L<i>.kv" and (CSA) "compressed.L<i>.index_kv": every entry so far
 *   [entries, width]; then "hidden.hc_head" [n, D] and "hidden.final" [n, D].
 * These match the keys of the golden fixtures (tests/fixtures/goldens). fn == NULL stops. */
typedef void (*dsv4_capture_fn)(void *user, const char *name, const float *data, int64_t n_rows,
                                int64_t row_width);
void dsv4_session_set_capture(dsv4_session *s, dsv4_capture_fn fn, void *user);

/* Multi-token prediction (MTP), for speculative decoding: the checkpoint's extra block
 * (official class MTPBlock, tensors mtp.{j}.*) drafts the token after next.
 *
 * dsv4_model_num_mtp: the MTP blocks the checkpoint holds (0 for NULL, and for checkpoints
 * without mtp.* tensors, e.g. every transformers-saved one). Only block 0 drafts.
 *
 * dsv4_session_mtp_draft: the session holds tokens 0 .. P-1 (P >= 1); `next_token` is the token
 * at position P (typically sampled from the main logits of position P-1). `logits` (may be
 * NULL) receives the MTP block's [vocab] logits for the token at position P+1. The main
 * sequence is unchanged (position stays P); the call only advances the MTP block's own state.
 *
 * That state is one sliding-window entry per position t, computed from the main model's
 * last-layer streams at t and the token at t+1. A draft first computes, in one chunk, the
 * entries the held tokens allow and the block lacks (after a long prefill: all of them), then
 * the entry at P-1 from next_token. dsv4_session_truncate(s, n) drops the entries at positions
 * >= n; the entry at n-1 is kept and recomputed by the next draft only if the token finally at
 * position n differs from the one it was drafted with. dsv4_session_fork copies the state.
 * A speculative step is thus: t1 = sample(main logits); mtp_draft(s, t1, q); d = sample(q);
 * eval [t1, d] with all_positions; if the main logits at t1's position reject d, truncate to
 * P+1 (t1 kept) and continue from those logits; else keep both and draft again.
 *
 * Errors: DSV4_ERR_UNSUPPORTED when the model has no MTP block; DSV4_ERR_INVALID_ARGUMENT for
 * an empty session; DSV4_ERR_INPUT for next_token outside the vocabulary (the session is then
 * unchanged). Capture (above) also sees the draft's values: "mtp.embed", the block's
 * "hidden.L<num_layers>.*", "mtp.hc_head", "mtp.final". Keeping the main streams for the MTP
 * block costs hc_mult * hidden_size floats per token in sessions of models that have one. */
int dsv4_model_num_mtp(const dsv4_model *m);
dsv4_status dsv4_session_mtp_draft(dsv4_session *s, int32_t next_token, float *logits);

/* ------------------------------------------------------------------------------------------
 * Generation: sampler, stop rules, and the generation loop over a session
 *
 * Definitions (those of vLLM / the OpenAI API, applied in this order to the raw logits l):
 *   repetition_penalty r: for every token in the prompt or generated so far, l /= r when
 *     l > 0, else l *= r (r = 1: off);
 *   presence_penalty p and frequency_penalty f: for a token generated c > 0 times so far,
 *     l -= p + c * f (OpenAI: only generated tokens count, not the prompt);
 *   temperature t: l /= t; t = 0 is greedy: the argmax of the penalised logits (lowest id on a
 *     tie), and the filters below are not used;
 *   top_k k: keep the k largest (ties broken by lower id);
 *   top_p: of those, sorted by probability, keep the shortest prefix whose probability sum
 *     (renormalised after top-k) reaches top_p (always at least one token);
 *   min_p: of those, keep the tokens whose probability is >= min_p * the largest one.
 * The kept tokens' probabilities are renormalised and one is drawn with a xoshiro256** stream
 * seeded from `seed` by splitmix64: the same seed, logits and history give the same token.
 * ---------------------------------------------------------------------------------------- */
typedef struct dsv4_sampler_params {
    float temperature;        /* 0: greedy; the model card's default is 1 */
    int top_k;                /* <= 0: off */
    float top_p;              /* in (0, 1]; 1: off (the model card's default) */
    float min_p;              /* in [0, 1]; 0: off */
    float repetition_penalty; /* > 0; 1: off */
    float presence_penalty;   /* 0: off (may be negative) */
    float frequency_penalty;  /* 0: off (may be negative) */
    uint64_t seed;
} dsv4_sampler_params;

/* temperature 1, top_p 1, no top-k/min-p/penalties, seed 0. */
void dsv4_sampler_params_default(dsv4_sampler_params *p);

typedef struct dsv4_sampler dsv4_sampler;

/* A sampler over `vocab` ids. Out-of-range parameters (negative temperature, top_p outside
 * (0, 1], min_p outside [0, 1], repetition_penalty <= 0, non-finite values) are
 * DSV4_ERR_INVALID_ARGUMENT naming the parameter. All buffers are allocated here: sampling
 * allocates nothing. */
dsv4_status dsv4_sampler_create(const dsv4_sampler_params *p, int vocab, dsv4_sampler **out);
void dsv4_sampler_close(dsv4_sampler *s);

/* Records a token of the history: a prompt token (is_prompt = 1, counted by the repetition
 * penalty only) or a generated one (counted by all three penalties). */
dsv4_status dsv4_sampler_accept(dsv4_sampler *s, int32_t id, int is_prompt);

/* Forgets the history (the random stream continues). */
void dsv4_sampler_reset(dsv4_sampler *s);

/* The distribution the next draw would use: probs[vocab] (0 for filtered-out tokens; one-hot
 * for greedy). Does not advance the random stream. */
dsv4_status dsv4_sampler_probs(dsv4_sampler *s, const float *logits, float *probs);

/* Draws the next id from logits[vocab]. Does not record it (call dsv4_sampler_accept). */
dsv4_status dsv4_sampler_sample(dsv4_sampler *s, const float *logits, int32_t *id);

/* Why generation stopped. */
typedef enum dsv4_stop_reason {
    DSV4_STOP_NONE = 0,
    DSV4_STOP_EOS = 1,        /* the end-of-sentence token */
    DSV4_STOP_USER_TURN = 2,  /* <｜User｜>: the model opened a new turn */
    DSV4_STOP_STRING = 3,     /* a user stop string appeared in the text */
    DSV4_STOP_MAX_TOKENS = 4, /* max_tokens generated */
    DSV4_STOP_CONTEXT = 5,    /* prompt + generated tokens reached the session's max_context */
    DSV4_STOP_CALLER = 6      /* the token callback asked to stop */
} dsv4_stop_reason;

/* "eos", "user_turn", "stop_string", "max_tokens", "context", "caller", "none". */
const char *dsv4_stop_reason_name(dsv4_stop_reason r);

typedef struct dsv4_token_logprob {
    int32_t id;
    float logprob;
} dsv4_token_logprob;

/* One generated token, as passed to the callback (pointers valid during the call only). */
typedef struct dsv4_gen_token {
    int64_t index; /* 0 for the first generated token */
    int32_t id;
    float logprob;    /* log-probability under the model (log_softmax of the raw logits) */
    const char *text; /* the output text this token made final, stop strings removed: held-back
                         bytes (an unfinished UTF-8 character, a possible stop-string start)
                         come with a later token; the concatenation is the whole output */
    size_t text_len;
    const dsv4_token_logprob *top; /* top_logprobs alternatives, most likely first */
    int n_top;
    int is_stop; /* an EOS / <｜User｜> token that ended generation: its text is not output */
} dsv4_gen_token;

/* Called once per generated token; a non-zero return stops generation (DSV4_STOP_CALLER). */
typedef int (*dsv4_gen_fn)(void *user, const dsv4_gen_token *tok);

typedef struct dsv4_gen_options {
    dsv4_sampler_params sampling;
    int64_t max_tokens;      /* <= 0: no limit (the context still stops it) */
    const char *const *stop; /* stop strings (non-empty), matched across token boundaries */
    size_t n_stop;
    int32_t eos_id;        /* -1: the tokenizer's <｜end▁of▁sentence｜> */
    int32_t user_id;       /* -1: the tokenizer's <｜User｜> (none if it has none) */
    int ignore_eos;        /* 1: EOS and <｜User｜> are ordinary tokens */
    int top_logprobs;      /* 0..20 alternatives per token */
    unsigned decode_flags; /* DSV4_DECODE_* for the text */
} dsv4_gen_options;

/* Defaults: sampler defaults, no max_tokens, no stop strings, eos_id/user_id -1. */
void dsv4_gen_options_default(dsv4_gen_options *o);

typedef struct dsv4_gen_result {
    dsv4_stop_reason reason;
    int stop_index;           /* the stop string that matched, else -1 */
    int64_t prompt_tokens;    /* prompt tokens evaluated by this call (the rest were cached) */
    int64_t generated_tokens; /* tokens passed to the callback */
    double prefill_seconds;   /* evaluating the prompt */
    double decode_seconds;    /* from the first generated token to the last */
} dsv4_gen_result;

/* Generates after prompt[0..n_prompt) on session `s`. The session must hold a prefix of the
 * prompt (0 tokens for a fresh one, the earlier turns of a chat): the tokens it lacks are
 * evaluated, then tokens are sampled (prompt tokens count for the repetition penalty) and
 * streamed to `fn` until a stop rule fires. On return the session holds the prompt and every
 * generated token but the last (which was never evaluated). A prompt that leaves no room in the
 * session's context is DSV4_ERR_CONTEXT_OVERFLOW, before any work. `tok` may be NULL when
 * there are no stop strings (texts are then empty). */
dsv4_status dsv4_generate(dsv4_session *s, const dsv4_tokenizer *tok, const int32_t *prompt,
                          int64_t n_prompt, const dsv4_gen_options *o, dsv4_gen_fn fn, void *user,
                          dsv4_gen_result *res);

#ifdef __cplusplus
}
#endif
#endif /* DSV4_H */
