/*
 * trace.cu - the host side of the kernel timeline (trace.cuh): the units' record targets, and
 * dsv4_bk_trace_begin / _end, which point them at a device buffer, then write what a step's
 * kernels recorded as CSV. Outside a trace build (cmake -DDSV4_TRACE=ON) both say so and fail.
 */
#include "backend/backend_impl.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/pdl.cuh"

#include <stdio.h>
#include <stdlib.h>

#ifdef DSV4_TRACE
enum { TRACE_UNITS = 64 };
static dsv4_trace_setter trace_units[TRACE_UNITS]; /* constant-initialised: safe before main */
static int n_trace_units;

int dsv4_trace_register(dsv4_trace_setter set)
{
    if (n_trace_units < TRACE_UNITS) trace_units[n_trace_units++] = set;
    return 1;
}

static dsv4_status trace_point(const dsv4_trace_dev *d)
{
    if (n_trace_units == TRACE_UNITS)
        return dsv4_fail(DSV4_ERR_UNSUPPORTED, "trace: more than %d CUDA units", TRACE_UNITS);
    for (int i = 0; i < n_trace_units; i++)
        if (!trace_units[i](d))
            return dsv4_fail(DSV4_ERR_DEVICE, "trace: setting unit %d's record target", i);
    return DSV4_OK;
}

extern "C" dsv4_status dsv4_cuda_bk_trace_begin(dsv4_backend *b, int64_t max_records)
{
    dsv4_cuda_trace *t = dsv4_cuda_trace_state(b->cuda);
    if (t->buf) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "trace: already on");
    if (max_records < 1 || max_records > (1 << 26))
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "trace: %lld records (1 .. 2^26)",
                         (long long)max_records);
    CUDA_TRY(cudaMalloc(&t->buf, (size_t)max_records * sizeof(dsv4_trace_rec) + 256));
    t->cap = (unsigned)max_records;
    const dsv4_trace_dev d = {(dsv4_trace_rec *)((char *)t->buf + 256), (unsigned *)t->buf, t->cap};
    dsv4_status st = DSV4_OK;
    if (cudaMemset(t->buf, 0, 256) != cudaSuccess)
        st = dsv4_fail(DSV4_ERR_DEVICE, "trace: zeroing the record count");
    if (st == DSV4_OK) st = trace_point(&d);
    if (st != DSV4_OK) { /* not on: no unit keeps the buffer */
        const dsv4_trace_dev off = {NULL, NULL, 0};
        (void)trace_point(&off);
        cudaFree(t->buf);
        t->buf = NULL;
    }
    return st;
}

extern "C" dsv4_status dsv4_cuda_bk_trace_end(dsv4_backend *b, const char *path, const char *tag)
{
    dsv4_cuda_trace *t = dsv4_cuda_trace_state(b->cuda);
    if (!t->buf) return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "trace: not on");
    const dsv4_trace_dev off = {NULL, NULL, 0};
    dsv4_status st = dsv4_cuda_bk_sync(b);
    if (st == DSV4_OK) st = trace_point(&off);
    unsigned n = 0;
    dsv4_trace_rec *r = NULL;
    if (st == DSV4_OK && cudaMemcpy(&n, t->buf, sizeof n, cudaMemcpyDeviceToHost) != cudaSuccess)
        st = dsv4_fail(DSV4_ERR_DEVICE, "trace: reading the record count");
    const unsigned kept = n < t->cap ? n : t->cap;
    if (st == DSV4_OK && !(r = (dsv4_trace_rec *)malloc((size_t)kept * sizeof *r + 1)))
        st = dsv4_fail(DSV4_ERR_OUT_OF_MEMORY, "trace: %u records", kept);
    if (st == DSV4_OK && cudaMemcpy(r, (char *)t->buf + 256, (size_t)kept * sizeof *r,
                                    cudaMemcpyDeviceToHost) != cudaSuccess)
        st = dsv4_fail(DSV4_ERR_DEVICE, "trace: reading %u records", kept);
    FILE *f = NULL;
    if (st == DSV4_OK && !(f = fopen(path, "a")))
        st = dsv4_fail(DSV4_ERR_IO, "trace: cannot open %s for appending", path);
    if (st == DSV4_OK) {
        if (n > kept) fprintf(f, "# %s: %u records, %u kept\n", tag, n, kept);
        for (unsigned i = 0; i < kept; i++)
            fprintf(f, "%s,%llu,%08x,%u,%u,%u,%u,%llu,%llu,%llu,%llu\n", tag, r[i].grid, r[i].site,
                    r[i].kind, r[i].sm, r[i].blk, r[i].nblk, r[i].ts, r[i].t0, r[i].t1, r[i].te);
        if (fclose(f) != 0) st = dsv4_fail(DSV4_ERR_IO, "trace: writing %s", path);
    }
    free(r);
    cudaFree(t->buf);
    t->buf = NULL;
    return st;
}
#else
extern "C" dsv4_status dsv4_cuda_bk_trace_begin(dsv4_backend *b, int64_t max_records)
{
    (void)b, (void)max_records;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "the kernel trace needs a trace build "
                                           "(cmake -DDSV4_TRACE=ON)");
}

extern "C" dsv4_status dsv4_cuda_bk_trace_end(dsv4_backend *b, const char *path, const char *tag)
{
    (void)b, (void)path, (void)tag;
    return dsv4_fail(DSV4_ERR_UNSUPPORTED, "the kernel trace needs a trace build "
                                           "(cmake -DDSV4_TRACE=ON)");
}
#endif
