/*
 * trace.cuh - the kernel timeline of a trace build (cmake -DDSV4_TRACE=ON; never the default).
 *
 * The op timer (prof.c) times ops eagerly, one event pair each, and ncu times kernels alone with
 * the caches flushed; neither shows a step as the graph runs it, where each kernel is placed while
 * its predecessor still runs (programmatic dependent launch, pdl.cuh). Every kernel opens with
 * DSV4_PDL_WAIT() or DSV4_PDL_LATE(), so in a trace build those macros declare a scope object
 * (dsv4_trace_scope) whose thread 0 records, when the scope ends, the grid's id (%gridid, unique
 * per launch), the macro's site (a hash of its file's name and its line), the CTA, its SM and
 * four %globaltimer readings: the scope's start, before and after its wait, and its end. At a
 * kernel's opening macro the scope is the whole kernel (start and exit of the CTA); a wait
 * further down gives its own record. A wait returns once the grid before has completed, so the
 * timeline reads when each launch's CTAs were placed, when its inputs were ready and when it
 * ended. dsv4 bench --trace writes the records of one step (trace.cu); tools/trace_step.py
 * names the sites and prints the step launch by launch. What it costs: thread 0 of each CTA
 * takes a slot with one atomic at the start and stores 56 bytes at the end; a Flash batch-1
 * step measured 0.984-0.989 ms traced against ~0.970 (H100, 2026-11-24).
 *
 * Without -rdc a __device__ variable is one per translation unit: each unit that includes this
 * header gets its own record target, which a static constructor registers with trace.cu so that
 * dsv4_cuda_trace_begin can point them all at the same buffer.
 */
#ifndef DSV4_BACKEND_CUDA_TRACE_CUH
#define DSV4_BACKEND_CUDA_TRACE_CUH

#include <cuda_runtime.h>
#include <stdint.h>

/* One record (56 bytes), as trace.cu writes them out. */
typedef struct dsv4_trace_rec {
    unsigned long long grid;   /* %gridid */
    unsigned long long ts;     /* %globaltimer, ns: the scope's start (the CTA's, at a kernel's
                                  opening macro) */
    unsigned long long t0, t1; /* before and after its wait (DSV4_PDL_LATE: ts, ts) */
    unsigned long long te;     /* its end: the kernel's exit at an opening macro */
    uint32_t site;             /* file hash << 16 | line of the macro */
    uint16_t sm;
    uint16_t kind; /* 0 DSV4_PDL_LATE, 1 DSV4_PDL_WAIT, 2 DSV4_PDL_WAIT_HELD, 3 a counter polled */
    uint32_t blk;  /* linear CTA index */
    uint32_t nblk; /* CTAs in the grid */
} dsv4_trace_rec;

/* Where a unit's records go (device memory of trace.cu). buf NULL: tracing is off. */
typedef struct dsv4_trace_dev {
    dsv4_trace_rec *buf;
    unsigned *count;
    unsigned cap;
} dsv4_trace_dev;

/* FNV-1a of the file's base name: the same on any machine the build ran on. */
__host__ __device__ constexpr uint32_t dsv4_trace_fnv(const char *s, uint32_t h)
{
    return *s ? dsv4_trace_fnv(s + 1, (h ^ (uint32_t)(unsigned char)*s) * 16777619u) : h;
}
__host__ __device__ constexpr const char *dsv4_trace_base(const char *s, const char *b)
{
    return *s ? dsv4_trace_base(s + 1, *s == '/' ? s + 1 : b) : b;
}
__host__ __device__ constexpr uint32_t dsv4_trace_site(const char *file, int line)
{
    return (dsv4_trace_fnv(dsv4_trace_base(file, file), 2166136261u) & 0xffff0000u) |
           ((uint32_t)line & 0xffffu);
}

/* trace.cu: a unit's setter, called once per unit before main. */
typedef int (*dsv4_trace_setter)(const dsv4_trace_dev *d);
int dsv4_trace_register(dsv4_trace_setter set);

static __device__ dsv4_trace_dev dsv4_trace_target;

static int dsv4_trace_set_unit(const dsv4_trace_dev *d)
{
    return cudaMemcpyToSymbol(dsv4_trace_target, d, sizeof *d) == cudaSuccess;
}
[[maybe_unused]] static const int dsv4_trace_unit_registered =
    dsv4_trace_register(dsv4_trace_set_unit);

static __device__ __forceinline__ unsigned long long dsv4_trace_now()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

static __device__ __forceinline__ bool dsv4_trace_thread0()
{
    return (threadIdx.x | threadIdx.y | threadIdx.z) == 0;
}

/* Thread 0's record of a scope: its slot is taken at the start (the atomic's round trip is only
 * waited for at the end, so the kernel does not stall on it), its times stored at the end. */
typedef struct dsv4_trace_open {
    unsigned long long ts, t0, t1;
    unsigned slot; /* ~0u: not recorded (another thread, tracing off, the buffer full) */
} dsv4_trace_open;

static __device__ __forceinline__ dsv4_trace_open dsv4_trace_enter()
{
    dsv4_trace_open o = {0, 0, 0, ~0u};
    if (!dsv4_trace_thread0() || !dsv4_trace_target.buf) return o;
    o.ts = o.t0 = o.t1 = dsv4_trace_now();
    o.slot = atomicAdd(dsv4_trace_target.count, 1u);
    return o;
}

static __device__ __forceinline__ void dsv4_trace_leave(const dsv4_trace_open &o, uint32_t site,
                                                        int kind)
{
    if (o.slot >= dsv4_trace_target.cap) return; /* ~0u too */
    dsv4_trace_rec r;
    r.te = dsv4_trace_now();
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(r.grid));
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    r.ts = o.ts, r.t0 = o.t0, r.t1 = o.t1;
    r.site = site, r.sm = (uint16_t)sm, r.kind = (uint16_t)kind;
    r.blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    r.nblk = gridDim.x * gridDim.y * gridDim.z;
    dsv4_trace_target.buf[o.slot] = r;
}

/* What the PDL macros declare in a trace build: a scope that (KIND 1, 2) waits as the macro
 * would and records its times when it ends; at a kernel's opening macro that is the CTA's exit
 * (thread 0's), elsewhere the end of the enclosing block. */
template <uint32_t SITE, int KIND> struct dsv4_trace_scope {
    dsv4_trace_open o;
    __device__ __forceinline__ dsv4_trace_scope()
    {
        o = dsv4_trace_enter();
        if (KIND == 1)
            asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory");
        else if (KIND == 2)
            asm volatile("griddepcontrol.wait;" ::: "memory");
        if (KIND != 0 && o.slot != ~0u) o.t1 = dsv4_trace_now();
    }
    __device__ __forceinline__ ~dsv4_trace_scope()
    {
        dsv4_trace_leave(o, SITE, KIND);
    }
};

#define DSV4_TRACE_CAT2(a, b) a##b
#define DSV4_TRACE_CAT(a, b)  DSV4_TRACE_CAT2(a, b)
#define DSV4_TRACE_SCOPE(kind)                                                                     \
    dsv4_trace_scope<dsv4_trace_site(__FILE__, __LINE__), kind> DSV4_TRACE_CAT(dsv4_trace_,        \
                                                                               __LINE__)

/* Around a wait that polls a counter instead of the PDL wait (moe_mma.cu's RDY). */
#define DSV4_TRACE_ENTER(o) const dsv4_trace_open o = dsv4_trace_enter()
#define DSV4_TRACE_LEAVE(o)                                                                        \
    do {                                                                                           \
        dsv4_trace_open o##_done = o;                                                              \
        if (o.slot != ~0u) o##_done.t1 = dsv4_trace_now();                                         \
        dsv4_trace_leave(o##_done, dsv4_trace_site(__FILE__, __LINE__), 3);                        \
    } while (0)

#endif
