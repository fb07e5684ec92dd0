/* matmul_avx512.c — AVX-512 VNNI kernels (compiled with AVX-512 F/BW/VL/VNNI/DQ flags, picked by
 * dispatch.c only when CPUID reports avx512f+bw+vl+dq+vnni and XCR0 shows the OS saves ZMM state).
 *
 * The code is matmul_x86_impl.h with the u8×s8 dot products done by _mm256_dpbusd_epi32 (VL form):
 * one instruction instead of maddubs + add (+ madd), and int32 accumulation without sub-blocks.
 * 256-bit vectors keep this variant line-for-line the tested AVX2 code; test_kernels.c also runs
 * it with dpbusd emulated on AVX2 machines. */
#define SQ_X86_VNNI 1
#define SQ_X86_NAME "avx512"
#define SQ_X86_TABLE sq_kernels_avx512
#include "matmul_x86_impl.h"
