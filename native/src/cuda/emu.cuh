/* emu.cuh — a small CUDA emulator on the host, so that the backend's kernels run in tests on
 * machines without a GPU (compiled as C++ with -DSQ_CUDA_EMU; never part of the library).
 *
 * What it models: grids run block after block; the threads of a block run as cooperative fibers
 * (ucontext) that switch only at __syncthreads and at warp collectives, so shared memory
 * (`__shared__` becomes a function-static: one copy, blocks run one at a time), barriers, warp
 * shuffles and the warp-wide mma.sync fragments behave as on the device. The mma and dp4a
 * semantics are implemented from the PTX ISA's fragment layouts (common.cuh wraps every
 * instruction, so the kernels contain no asm of their own). Float intrinsics (__fadd_rn, ...)
 * are plain IEEE operations here, which is what they are on the device too; math functions
 * (expf) come from libm and may differ from the device's by an ulp.
 *
 * What it cannot tell: speed, register or shared-memory limits, memory-model races that the
 * fibers' fixed schedule hides, and whether the PTX reading of the fragment layouts is right
 * (the kernels and the emulator share it; only a GPU run checks it: docs/CUDA.md).
 */
#ifndef SQ_CUDA_EMU_CUH
#define SQ_CUDA_EMU_CUH

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint2 { uint32_t x, y; };
struct uint4 { uint32_t x, y, z, w; };
struct int2 { int32_t x, y; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return uint4{x, y, z, w}; }

/* ---- the CUDA runtime subset the backend uses ------------------------------------------------ */
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorInvalidValue = 1, cudaErrorNoDevice = 100 };
typedef void *cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
#define cudaStreamNonBlocking 1
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t sharedMemPerBlockOptin, totalGlobalMem;
};

inline const char *cudaGetErrorString(cudaError_t e) {
    return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "emulator error";
}
inline cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
/* SQ_CUDA_EMU_CC=80|86|89|90 picks the emulated compute capability (default 89). */
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    const char *e = getenv("SQ_CUDA_EMU_CC");
    int cc = e ? atoi(e) : 89;
    if (cc < 10) cc = 89;
    snprintf(p->name, sizeof p->name, "CUDA emulator on the host");
    p->major = cc / 10;
    p->minor = cc % 10;
    p->multiProcessorCount = 4;
    p->sharedMemPerBlockOptin = 99 * 1024;
    p->totalGlobalMem = (size_t)8 << 30;
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    *s = nullptr;
    return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
inline cudaError_t cudaMalloc(void **p, size_t n) {
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) {
    if (n) memcpy(d, s, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k) { return cudaMemcpyAsync(d, s, n, k, 0); }
inline cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t) {
    memset(d, v, n);
    return cudaSuccess;
}
template <class F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
    return cudaSuccess;
}

/* ---- fibers, barriers, collectives --------------------------------------------------------- */
/* Switching fibers: on x86-64 a few instructions that save the callee-saved registers and swap
 * stacks (swapcontext also saves the signal mask, a system call per switch); ucontext elsewhere. */
#if defined(__x86_64__) && defined(__GNUC__)
#define SQ_EMU_FAST_SWITCH 1
__attribute__((naked, noinline)) static void sq_emu_swap(void **save_sp, void *to_sp) {
    __asm__ volatile("pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
                     "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
                     "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
#endif

struct sq_emu_fiber {
#ifdef SQ_EMU_FAST_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    dim3 tid;
    int done;
};
struct sq_emu_barrier {
    int count, gen;
};
struct sq_emu_state {
    dim3 grid, block, bidx;
    int nthreads, cur;
    std::vector<sq_emu_fiber> fibers;
    std::vector<char> stacks;
#ifdef SQ_EMU_FAST_SWITCH
    void *sched_sp;
#else
    ucontext_t sched;
#endif
    sq_emu_barrier block_bar, warp_bar[32];
    uint32_t slots[32][32][12]; /* [warp][lane][word]: operands of a warp collective */
    long progress;              /* barrier releases + finished threads: deadlock detection */
    const std::function<void()> *body;
    std::vector<unsigned char> dyn_smem;
};
inline sq_emu_state sq_emu_st;

#define threadIdx (sq_emu_st.fibers[sq_emu_st.cur].tid)
#define blockIdx (sq_emu_st.bidx)
#define blockDim (sq_emu_st.block)
#define gridDim (sq_emu_st.grid)

inline void sq_emu_yield() {
    sq_emu_fiber &f = sq_emu_st.fibers[sq_emu_st.cur];
#ifdef SQ_EMU_FAST_SWITCH
    sq_emu_swap(&f.sp, sq_emu_st.sched_sp);
#else
    swapcontext(&f.ctx, &sq_emu_st.sched);
#endif
}

inline void sq_emu_barrier_wait(sq_emu_barrier &b, int n) {
    int g = b.gen;
    if (++b.count == n) {
        b.count = 0;
        b.gen++;
        sq_emu_st.progress++;
        return;
    }
    while (b.gen == g) sq_emu_yield();
}

inline int sq_emu_lane() { return (int)(threadIdx.x % 32); }
inline int sq_emu_warp_size(int warp) {
    int n = sq_emu_st.nthreads - warp * 32;
    return n < 32 ? n : 32;
}
inline void __syncthreads() { sq_emu_barrier_wait(sq_emu_st.block_bar, sq_emu_st.nthreads); }
inline void sq_emu_warp_sync() {
    int w = (int)(threadIdx.x / 32);
    sq_emu_barrier_wait(sq_emu_st.warp_bar[w], sq_emu_warp_size(w));
}
inline void __syncwarp(unsigned = 0xffffffffu) { sq_emu_warp_sync(); }

/* Every lane deposits `n` words, the warp meets, then each lane reads what it needs. */
inline uint32_t (*sq_emu_warp_slots())[12] { return sq_emu_st.slots[threadIdx.x / 32]; }

template <class T>
inline T sq_emu_shfl_idx(T v, int src) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    uint32_t(*s)[12] = sq_emu_warp_slots();
    memcpy(&s[sq_emu_lane()][0], &v, 4);
    sq_emu_warp_sync();
    T r;
    memcpy(&r, &s[src][0], 4);
    sq_emu_warp_sync();
    return r;
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int lane = sq_emu_lane();
    return sq_emu_shfl_idx(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int lane = sq_emu_lane(), src = lane ^ mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return sq_emu_shfl_idx(v, src);
}

/* ---- launching ----------------------------------------------------------------------------- */
inline void sq_emu_entry() {
    (*sq_emu_st.body)();
    sq_emu_st.fibers[sq_emu_st.cur].done = 1;
    sq_emu_st.progress++;
#ifdef SQ_EMU_FAST_SWITCH
    sq_emu_yield(); /* a finished fiber is never resumed */
    abort();
#endif
}

inline void sq_emu_launch(dim3 grid, dim3 block, size_t smem, const std::function<void()> &body) {
    sq_emu_state &st = sq_emu_st;
    const size_t stack = 128 * 1024;
    int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > 1024 || block.y != 1 || block.z != 1) {
        fprintf(stderr, "emu: unsupported block shape %ux%ux%u\n", block.x, block.y, block.z);
        abort();
    }
    if (st.stacks.size() < (size_t)n * stack) st.stacks.resize((size_t)n * stack);
    st.fibers.resize((size_t)n);
    st.dyn_smem.assign(smem + 16, 0xA5); /* garbage, as on the device */
    st.grid = grid;
    st.block = block;
    st.nthreads = n;
    st.body = &body;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                st.bidx = dim3(bx, by, bz);
                st.block_bar = sq_emu_barrier{0, 0};
                for (auto &w : st.warp_bar) w = sq_emu_barrier{0, 0};
                for (int i = 0; i < n; i++) {
                    sq_emu_fiber &f = st.fibers[(size_t)i];
                    f.tid = dim3((unsigned)i, 0, 0);
                    f.done = 0;
                    char *base = st.stacks.data() + (size_t)i * stack;
#ifdef SQ_EMU_FAST_SWITCH
                    /* what sq_emu_swap pops: six registers, then the "return" into sq_emu_entry */
                    uintptr_t *sp = (uintptr_t *)(((uintptr_t)base + stack) & ~(uintptr_t)15);
                    *--sp = 0;
                    *--sp = (uintptr_t)&sq_emu_entry;
                    for (int r = 0; r < 6; r++) *--sp = 0;
                    f.sp = sp;
#else
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = base;
                    f.ctx.uc_stack.ss_size = stack;
                    f.ctx.uc_link = &st.sched;
                    makecontext(&f.ctx, sq_emu_entry, 0);
#endif
                }
                int left = n;
                while (left) {
                    long before = st.progress;
                    left = 0;
                    for (int i = 0; i < n; i++) {
                        if (st.fibers[(size_t)i].done) continue;
                        st.cur = i;
#ifdef SQ_EMU_FAST_SWITCH
                        sq_emu_swap(&st.sched_sp, st.fibers[(size_t)i].sp);
#else
                        swapcontext(&st.sched, &st.fibers[(size_t)i].ctx);
#endif
                        left += !st.fibers[(size_t)i].done;
                    }
                    if (left && st.progress == before) {
                        fprintf(stderr, "emu: deadlock in block (%u,%u,%u): threads wait at different barriers\n", bx,
                                by, bz);
                        abort();
                    }
                }
            }
}

#define SQ_EMU_DYN_SMEM() ((void *)(((uintptr_t)sq_emu_st.dyn_smem.data() + 15) & ~(uintptr_t)15))

/* ---- float / int intrinsics ---------------------------------------------------------------- */
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __int2float_rn(int v) { return (float)v; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __int_as_float(int v) {
    float f;
    memcpy(&f, &v, 4);
    return f;
}
inline int __float_as_int(float f) {
    int v;
    memcpy(&v, &f, 4);
    return v;
}
template <class T>
inline T __ldg(const T *p) {
    return *p;
}

#endif
