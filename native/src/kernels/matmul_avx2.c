/* matmul_avx2.c — AVX2 kernels (compiled with -mavx2 -mfma -mf16c, picked by dispatch.c when the CPU
 * and OS support AVX2 + FMA + F16C). The code is in matmul_x86_impl.h, shared with the AVX-512
 * VNNI variant. */
#define SQ_X86_VNNI 0
#define SQ_X86_NAME "avx2"
#define SQ_X86_TABLE sq_kernels_avx2
#include "matmul_x86_impl.h"
