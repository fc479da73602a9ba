/* fastdiv Cython backend: vectorised math and per-row kernels (C, GCC/Clang vector extensions).
 *
 * Why explicit vectors instead of relying on the auto-vectoriser:
 *   - gcc does not vectorise a NaN-honouring max reduction (`m = v > m ? v : m`) unless
 *     -ffinite-math-only is on, and we cannot use that flag: masked logits are -inf and NaN
 *     must propagate.  With vector-extension types the max is a compare + blend per vector.
 *   - the kernels carry several reductions at once (sum, weighted sum, max); writing them on
 *     explicit vectors makes the generated code independent of vectoriser heuristics.
 * Vectors are one register wide: 64 bytes with AVX-512 (where comparisons, selects, masked
 * adds, max, vscalefps use intrinsics on mask registers), else 32 (AVX/AVX2) or 16 bytes
 * (SSE2, NEON, ...) with generic vector-extension code.  Requires GCC >= 12 or Clang
 * (vector extensions, __builtin_convertvector, __builtin_shufflevector).
 *
 * ISA levels (issue 21): this file and the row templates are compiled once per instruction-set
 * level (_level.c; setup.py passes each level's -march flags), so the width and the intrinsics
 * are chosen below from the compiler's predefined macros of that level (__AVX512F__, __AVX__,
 * ...; `#pragma GCC target` would not define them); _dispatch.h picks a level at import.
 *
 * Compile-flag assumptions (see setup.py): -O3 -fno-math-errno -fno-trapping-math
 * -fassociative-math -fno-signed-zeros -ffp-contract=fast, never -ffinite-math-only.
 * -fassociative-math folds `(y + M) - M` (the magic-number rounding trick) and
 * `(t - k*C1) - k*C2` (a Cody-Waite split) in generic code.  So: rounding to an integer goes
 * through an fma builtin (AVX-512; reassociation does not see through it) or float->int
 * truncation (generic); the split is fenced with __builtin_assoc_barrier where it matters
 * (float64, and float32 without fma); float32 with fma uses t - k*ln2 rounded once, whose
 * error (|k| * 2e-9 relative) is far below the float32 tolerance (1e-5).
 *
 * Denormals: the machine this was tuned on is an Intel Xeon (AVX-512, AMX; lscpu: KVM guest),
 * where producing a denormal result without FTZ/DAZ costs a microcode assist.  The
 * exponentials therefore return exactly 0 below the normal range (exp(t) < 1.6e-38 for float,
 * < 3.3e-308 for double) instead of building denormal powers of two: a masked logit (-inf)
 * never touches the slow path.  Consequence: results whose true value is below ~1e-36
 * (float32) / ~1e-305 (float64) come out as 0 or lose their relative precision.
 */
#ifndef FASTDIV_SIMD_H
#define FASTDIV_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h> /* aligned_alloc: the per-thread scratch of fd_compare_rows */

#ifndef FD_SIMD_FLAGS
#define FD_SIMD_FLAGS ""
#endif
static const char fd_simd_flags[] = FD_SIMD_FLAGS;

#define FD_INLINE static inline __attribute__((always_inline))

/* Keeps -fassociative-math from reassociating across an expression.  Needed wherever a
   difference of nearly equal large values must be formed first: x - shift inside exp,
   z - shift_z in KL, m - x_t in CE, and the Cody-Waite split.
   FD_ASSOC_BARRIER (scalars): __builtin_assoc_barrier (gcc >= 12) / __arithmetic_fence.
   FD_VBARRIER (vectors): an empty asm that pins the value in a vector register; costs
   nothing.  (gcc 12 lowers __builtin_assoc_barrier on a vector lane by lane, which halved
   the throughput of the exp loop.) */
#if defined(__clang__) && defined(__has_builtin)
#if __has_builtin(__arithmetic_fence)
#define FD_ASSOC_BARRIER(x) __arithmetic_fence(x)
#endif
#elif defined(__GNUC__) && __GNUC__ >= 12
#define FD_ASSOC_BARRIER(x) __builtin_assoc_barrier(x)
#endif
#ifndef FD_ASSOC_BARRIER
#define FD_ASSOC_BARRIER(x) (x)
#endif
#if defined(__AVX512F__)
#define FD_VBARRIER(v) __extension__({ __typeof__(v) fd_b_ = (v); __asm__("" : "+v"(fd_b_)); fd_b_; })
#elif defined(__SSE2__)
#define FD_VBARRIER(v) __extension__({ __typeof__(v) fd_b_ = (v); __asm__("" : "+x"(fd_b_)); fd_b_; })
#elif defined(__aarch64__)
#define FD_VBARRIER(v) __extension__({ __typeof__(v) fd_b_ = (v); __asm__("" : "+w"(fd_b_)); fd_b_; })
#else
#define FD_VBARRIER(v) FD_ASSOC_BARRIER(v)
#endif

/* ------------------------------------------------------------------------------------------ */
/* Vector types: the target's register width (64 bytes with AVX-512, 32 with AVX, else 16).   */
/* (Wider-than-register vector types live in memory with gcc 12 and their comparisons are     */
/* scalarised: a portable build with 64-byte types ran ~20x slower.)                          */
/* ------------------------------------------------------------------------------------------ */
#if defined(__AVX512F__) && !defined(FD_NO_AVX512)
#define FD_AVX512 1
#define FD_VBYTES 64
#elif defined(__AVX__)
#define FD_AVX512 0
#define FD_VBYTES 32
#else
#define FD_AVX512 0
#define FD_VBYTES 16
#endif
#define FD_WF (FD_VBYTES / 4) /* float lanes */
/* The instruction set the kernels were compiled for (from the compiler's predefined macros). */
#if FD_AVX512
static const char fd_simd_isa[] = "avx512f";
#elif defined(__AVX2__)
static const char fd_simd_isa[] = "avx2";
#elif defined(__AVX__)
static const char fd_simd_isa[] = "avx";
#elif defined(__SSE4_2__)
static const char fd_simd_isa[] = "sse4.2";
#elif defined(__SSE2__)
static const char fd_simd_isa[] = "sse2";
#elif defined(__ARM_NEON) || defined(__ARM_NEON__)
static const char fd_simd_isa[] = "neon";
#else
static const char fd_simd_isa[] = "generic";
#endif
#define FD_WD (FD_VBYTES / 8) /* double lanes */

#if defined(__SSE2__) /* AVX-512 kernels; F16C / AVX2 half-precision loads */
#include <immintrin.h>
#endif

typedef float fd_vf __attribute__((vector_size(FD_VBYTES)));
typedef int32_t fd_vi __attribute__((vector_size(FD_VBYTES)));  /* masks of fd_vf comparisons */
typedef uint32_t fd_vu __attribute__((vector_size(FD_VBYTES))); /* bit arithmetic (wraps) */
typedef double fd_vd __attribute__((vector_size(FD_VBYTES)));
typedef int64_t fd_vl __attribute__((vector_size(FD_VBYTES)));  /* masks of fd_vd comparisons */
typedef uint64_t fd_vq __attribute__((vector_size(FD_VBYTES)));
typedef float fd_vfh __attribute__((vector_size(FD_VBYTES / 2)));   /* half a float vector */
typedef int32_t fd_vih __attribute__((vector_size(FD_VBYTES / 2))); /* int32 per double lane */
/* Unaligned, aliasing-safe views for loads from arbitrary row offsets. */
typedef float fd_vf_u __attribute__((vector_size(FD_VBYTES), aligned(4), may_alias));
typedef double fd_vd_u __attribute__((vector_size(FD_VBYTES), aligned(8), may_alias));

/* Chunk: 128 vectors of each input array (8 KiB with AVX-512).  A chunk is read from memory
   once by the max pass (prefetched while the previous chunk was being exponentiated), then
   again from L1 by the accumulation pass; its sums are kept in vector lanes of the working
   precision and added to doubles at the end of the chunk.  128 terms per float32 lane bound
   the rounding error of a chunk sum by ~128 * 6e-8 = 8e-6 relative even in the worst case
   (identical terms, whose rounding errors do not cancel; typical errors are ~1e-7).  Rows up
   to one chunk long go through the block driver. */
#ifndef FD_CHUNK_BYTES
#define FD_CHUNK_BYTES (128 * FD_VBYTES)
#endif
/* Prefetch distance in bytes, so that DRAM traffic for the next chunk(s) overlaps the
   (compute-bound) exponentials of this one: two chunks ahead for kernels streaming one array,
   one chunk for two arrays (measured: one chunk ahead is 2-4% slower for lse/CE, two chunks
   ahead 5-7% slower for KL, half a chunk 25% slower).  Prefetching past the end of a row
   fetches the start of the next row, which is what the next call reads first. */
#ifndef FD_PREFETCH_BYTES
#define FD_PREFETCH_BYTES FD_CHUNK_BYTES
#endif
#define FD_PREFETCH(p) __builtin_prefetch((const char *)(p) + FD_PREFETCH_BYTES, 0, 3)
#define FD_PREFETCH_1(p) __builtin_prefetch((const char *)(p) + 2 * FD_PREFETCH_BYTES, 0, 3)

FD_INLINE fd_vf fd_splat_f32(float c) { return (fd_vf){0} + c; }
FD_INLINE fd_vd fd_splat_f64(double c) { return (fd_vd){0} + c; }
FD_INLINE fd_vf fd_load_f32(const float *p) { return *(const fd_vf_u *)p; }
FD_INLINE fd_vd fd_load_f64(const double *p) { return *(const fd_vd_u *)p; }

/* ------------------------------------------------------------------------------------------ */
/* Comparisons, selects and masked accumulation.                                              */
/* With AVX-512 these map to mask registers: a comparison is one vcmpps into a k register, a   */
/* select one vblendmps, "acc += m ? 0 : v" one masked vaddps.  Written with generic vector    */
/* masks (all-ones lanes), gcc 12 turns a select into two or three xor/and instructions and    */
/* sometimes computes both arms, which made the kernels compute-bound.                         */
/* fd_mf / fd_md: the mask types of float / double vectors.                                    */
/* ------------------------------------------------------------------------------------------ */
#if FD_AVX512
typedef __mmask16 fd_mf;
typedef __mmask8 fd_md;
#define FD_M512(v) ((__m512)(v))
#define FD_M512D(v) ((__m512d)(v))
FD_INLINE fd_mf fd_lt_f32(fd_vf a, fd_vf b) { return _mm512_cmp_ps_mask(FD_M512(a), FD_M512(b), _CMP_LT_OQ); }
FD_INLINE fd_mf fd_gt_f32(fd_vf a, fd_vf b) { return _mm512_cmp_ps_mask(FD_M512(a), FD_M512(b), _CMP_GT_OQ); }
FD_INLINE fd_mf fd_eq_f32(fd_vf a, fd_vf b) { return _mm512_cmp_ps_mask(FD_M512(a), FD_M512(b), _CMP_EQ_OQ); }
FD_INLINE fd_mf fd_ne_f32(fd_vf a, fd_vf b) { return _mm512_cmp_ps_mask(FD_M512(a), FD_M512(b), _CMP_NEQ_UQ); }
FD_INLINE fd_mf fd_isnan_f32(fd_vf a) { return _mm512_cmp_ps_mask(FD_M512(a), FD_M512(a), _CMP_UNORD_Q); }
FD_INLINE fd_vf fd_sel_f32(fd_mf m, fd_vf a, fd_vf b) { return (fd_vf)_mm512_mask_blend_ps(m, FD_M512(b), FD_M512(a)); }
/* acc + (m ? 0 : v) */
FD_INLINE fd_vf fd_add_unless_f32(fd_vf acc, fd_mf m, fd_vf v) { return (fd_vf)_mm512_mask_add_ps(FD_M512(acc), (fd_mf)~m, FD_M512(acc), FD_M512(v)); }
/* acc + (m ? v : 0) */
FD_INLINE fd_vf fd_add_where_f32(fd_vf acc, fd_mf m, fd_vf v) { return (fd_vf)_mm512_mask_add_ps(FD_M512(acc), m, FD_M512(acc), FD_M512(v)); }
/* number of lanes set in m (on the scalar ports: popcnt of the k register) */
FD_INLINE int fd_popcount_f32(fd_mf m) { return __builtin_popcount((unsigned)m); }
/* every lane of m set */
FD_INLINE int fd_all_f32(fd_mf m) { return m == (fd_mf)0xFFFF; }
/* no lane set */
FD_INLINE fd_mf fd_none_f32(void) { return (fd_mf)0; }
/* max ignoring NaN: `v > acc ? v : acc`; vmaxps returns its second operand on NaN */
FD_INLINE fd_vf fd_max_f32(fd_vf acc, fd_vf v) { return (fd_vf)_mm512_max_ps(FD_M512(v), FD_M512(acc)); }
/* t < lo ? lo : t and t > hi ? hi : t, both keeping a NaN t */
FD_INLINE fd_vf fd_clamp_lo_f32(fd_vf t, fd_vf lo) { return (fd_vf)_mm512_max_ps(FD_M512(lo), FD_M512(t)); }
FD_INLINE fd_vf fd_clamp_hi_f32(fd_vf t, fd_vf hi) { return (fd_vf)_mm512_min_ps(FD_M512(hi), FD_M512(t)); }
/* max(t, 0), and 0 for a NaN t (vmaxps returns its second operand on NaN) */
FD_INLINE fd_vf fd_max0_f32(fd_vf t) { return (fd_vf)_mm512_max_ps(FD_M512(t), _mm512_setzero_ps()); }
/* m ? max(acc, v) : acc (NaN-ignoring) */
FD_INLINE fd_vf fd_max_where_f32(fd_vf acc, fd_mf m, fd_vf v) { return (fd_vf)_mm512_mask_max_ps(FD_M512(acc), m, FD_M512(v), FD_M512(acc)); }

FD_INLINE fd_md fd_lt_f64(fd_vd a, fd_vd b) { return _mm512_cmp_pd_mask(FD_M512D(a), FD_M512D(b), _CMP_LT_OQ); }
FD_INLINE fd_md fd_gt_f64(fd_vd a, fd_vd b) { return _mm512_cmp_pd_mask(FD_M512D(a), FD_M512D(b), _CMP_GT_OQ); }
FD_INLINE fd_md fd_eq_f64(fd_vd a, fd_vd b) { return _mm512_cmp_pd_mask(FD_M512D(a), FD_M512D(b), _CMP_EQ_OQ); }
FD_INLINE fd_md fd_ne_f64(fd_vd a, fd_vd b) { return _mm512_cmp_pd_mask(FD_M512D(a), FD_M512D(b), _CMP_NEQ_UQ); }
FD_INLINE fd_md fd_isnan_f64(fd_vd a) { return _mm512_cmp_pd_mask(FD_M512D(a), FD_M512D(a), _CMP_UNORD_Q); }
FD_INLINE fd_vd fd_sel_f64(fd_md m, fd_vd a, fd_vd b) { return (fd_vd)_mm512_mask_blend_pd(m, FD_M512D(b), FD_M512D(a)); }
FD_INLINE fd_vd fd_add_unless_f64(fd_vd acc, fd_md m, fd_vd v) { return (fd_vd)_mm512_mask_add_pd(FD_M512D(acc), (fd_md)~m, FD_M512D(acc), FD_M512D(v)); }
FD_INLINE fd_vd fd_add_where_f64(fd_vd acc, fd_md m, fd_vd v) { return (fd_vd)_mm512_mask_add_pd(FD_M512D(acc), m, FD_M512D(acc), FD_M512D(v)); }
FD_INLINE int fd_popcount_f64(fd_md m) { return __builtin_popcount((unsigned)m); }
FD_INLINE fd_vd fd_max_f64(fd_vd acc, fd_vd v) { return (fd_vd)_mm512_max_pd(FD_M512D(v), FD_M512D(acc)); }
FD_INLINE fd_vd fd_clamp_lo_f64(fd_vd t, fd_vd lo) { return (fd_vd)_mm512_max_pd(FD_M512D(lo), FD_M512D(t)); }
FD_INLINE fd_vd fd_clamp_hi_f64(fd_vd t, fd_vd hi) { return (fd_vd)_mm512_min_pd(FD_M512D(hi), FD_M512D(t)); }
FD_INLINE fd_vd fd_max_where_f64(fd_vd acc, fd_md m, fd_vd v) { return (fd_vd)_mm512_mask_max_pd(FD_M512D(acc), m, FD_M512D(v), FD_M512D(acc)); }
#else
/* x86 below AVX-512: maxps / minps (SSE) and blendvps (SSE4.1, AVX) for the selects that are
   exactly their semantics: max(a, b) = a > b ? a : b, min(a, b) = a < b ? a : b (the second
   operand for NaN and for equal zeros), blendv by the sign bit of a comparison mask.  The
   same bits as the and/andnot/or form below, in one instruction instead of three or four. */
#if FD_VBYTES == 32 && defined(__AVX__)
#define FD_X86_MAX 1
#define FD_X86_BLEND 1
FD_INLINE fd_vf fd_maxps(fd_vf a, fd_vf b) { return (fd_vf)_mm256_max_ps((__m256)a, (__m256)b); }
FD_INLINE fd_vf fd_minps(fd_vf a, fd_vf b) { return (fd_vf)_mm256_min_ps((__m256)a, (__m256)b); }
FD_INLINE fd_vd fd_maxpd(fd_vd a, fd_vd b) { return (fd_vd)_mm256_max_pd((__m256d)a, (__m256d)b); }
FD_INLINE fd_vd fd_minpd(fd_vd a, fd_vd b) { return (fd_vd)_mm256_min_pd((__m256d)a, (__m256d)b); }
FD_INLINE fd_vf fd_blendps(fd_vi m, fd_vf a, fd_vf b) { return (fd_vf)_mm256_blendv_ps((__m256)b, (__m256)a, (__m256)m); }
FD_INLINE fd_vd fd_blendpd(fd_vl m, fd_vd a, fd_vd b) { return (fd_vd)_mm256_blendv_pd((__m256d)b, (__m256d)a, (__m256d)m); }
#elif FD_VBYTES == 16 && defined(__SSE2__)
#define FD_X86_MAX 1
FD_INLINE fd_vf fd_maxps(fd_vf a, fd_vf b) { return (fd_vf)_mm_max_ps((__m128)a, (__m128)b); }
FD_INLINE fd_vf fd_minps(fd_vf a, fd_vf b) { return (fd_vf)_mm_min_ps((__m128)a, (__m128)b); }
FD_INLINE fd_vd fd_maxpd(fd_vd a, fd_vd b) { return (fd_vd)_mm_max_pd((__m128d)a, (__m128d)b); }
FD_INLINE fd_vd fd_minpd(fd_vd a, fd_vd b) { return (fd_vd)_mm_min_pd((__m128d)a, (__m128d)b); }
#if defined(__SSE4_1__)
#define FD_X86_BLEND 1
FD_INLINE fd_vf fd_blendps(fd_vi m, fd_vf a, fd_vf b) { return (fd_vf)_mm_blendv_ps((__m128)b, (__m128)a, (__m128)m); }
FD_INLINE fd_vd fd_blendpd(fd_vl m, fd_vd a, fd_vd b) { return (fd_vd)_mm_blendv_pd((__m128d)b, (__m128d)a, (__m128d)m); }
#endif
#endif
typedef fd_vi fd_mf;
typedef fd_vl fd_md;
FD_INLINE fd_mf fd_lt_f32(fd_vf a, fd_vf b) { return a < b; }
FD_INLINE fd_mf fd_gt_f32(fd_vf a, fd_vf b) { return a > b; }
FD_INLINE fd_mf fd_eq_f32(fd_vf a, fd_vf b) { return a == b; }
FD_INLINE fd_mf fd_ne_f32(fd_vf a, fd_vf b) { return a != b; }
FD_INLINE fd_mf fd_isnan_f32(fd_vf a) { return a != a; }
#if defined(FD_X86_BLEND)
FD_INLINE fd_vf fd_sel_f32(fd_mf m, fd_vf a, fd_vf b) { return fd_blendps(m, a, b); }
#else
FD_INLINE fd_vf fd_sel_f32(fd_mf m, fd_vf a, fd_vf b) { return (fd_vf)((m & (fd_vi)a) | (~m & (fd_vi)b)); }
#endif
FD_INLINE fd_vf fd_add_unless_f32(fd_vf acc, fd_mf m, fd_vf v) { return acc + (fd_vf)(~m & (fd_vi)v); }
FD_INLINE fd_vf fd_add_where_f32(fd_vf acc, fd_mf m, fd_vf v) { return acc + (fd_vf)(m & (fd_vi)v); }
FD_INLINE int fd_popcount_f32(fd_mf m)
{
    int c = 0;
    for (int l = 0; l < FD_WF; l++) c -= m[l];
    return c;
}
FD_INLINE int fd_all_f32(fd_mf m)
{
#if FD_VBYTES == 32 && defined(__AVX__)
    return _mm256_movemask_ps((__m256)m) == 0xFF;
#elif FD_VBYTES == 16 && defined(__SSE__)
    return _mm_movemask_ps((__m128)m) == 0xF;
#else
    int a = -1;
    for (int l = 0; l < FD_WF; l++) a &= m[l];
    return a != 0;
#endif
}
FD_INLINE fd_mf fd_none_f32(void) { return (fd_mf){0}; }
#if defined(FD_X86_MAX)
FD_INLINE fd_vf fd_max_f32(fd_vf acc, fd_vf v) { return fd_maxps(v, acc); }
FD_INLINE fd_vf fd_clamp_lo_f32(fd_vf t, fd_vf lo) { return fd_maxps(lo, t); }
FD_INLINE fd_vf fd_clamp_hi_f32(fd_vf t, fd_vf hi) { return fd_minps(hi, t); }
FD_INLINE fd_vf fd_max0_f32(fd_vf t) { return fd_maxps(t, (fd_vf){0}); }
#else
FD_INLINE fd_vf fd_max_f32(fd_vf acc, fd_vf v) { return fd_sel_f32(v > acc, v, acc); }
FD_INLINE fd_vf fd_clamp_lo_f32(fd_vf t, fd_vf lo) { return fd_sel_f32(t < lo, lo, t); }
FD_INLINE fd_vf fd_clamp_hi_f32(fd_vf t, fd_vf hi) { return fd_sel_f32(t > hi, hi, t); }
FD_INLINE fd_vf fd_max0_f32(fd_vf t) { return fd_sel_f32(t > 0, t, (fd_vf){0}); }
#endif
FD_INLINE fd_vf fd_max_where_f32(fd_vf acc, fd_mf m, fd_vf v) { return fd_sel_f32(m & (v > acc), v, acc); }

FD_INLINE fd_md fd_lt_f64(fd_vd a, fd_vd b) { return a < b; }
FD_INLINE fd_md fd_gt_f64(fd_vd a, fd_vd b) { return a > b; }
FD_INLINE fd_md fd_eq_f64(fd_vd a, fd_vd b) { return a == b; }
FD_INLINE fd_md fd_ne_f64(fd_vd a, fd_vd b) { return a != b; }
FD_INLINE fd_md fd_isnan_f64(fd_vd a) { return a != a; }
#if defined(FD_X86_BLEND)
FD_INLINE fd_vd fd_sel_f64(fd_md m, fd_vd a, fd_vd b) { return fd_blendpd(m, a, b); }
#else
FD_INLINE fd_vd fd_sel_f64(fd_md m, fd_vd a, fd_vd b) { return (fd_vd)((m & (fd_vl)a) | (~m & (fd_vl)b)); }
#endif
FD_INLINE fd_vd fd_add_unless_f64(fd_vd acc, fd_md m, fd_vd v) { return acc + (fd_vd)(~m & (fd_vl)v); }
FD_INLINE fd_vd fd_add_where_f64(fd_vd acc, fd_md m, fd_vd v) { return acc + (fd_vd)(m & (fd_vl)v); }
FD_INLINE int fd_popcount_f64(fd_md m)
{
    int c = 0;
    for (int l = 0; l < FD_WD; l++) c -= (int)m[l];
    return c;
}
#if defined(FD_X86_MAX)
FD_INLINE fd_vd fd_max_f64(fd_vd acc, fd_vd v) { return fd_maxpd(v, acc); }
FD_INLINE fd_vd fd_clamp_lo_f64(fd_vd t, fd_vd lo) { return fd_maxpd(lo, t); }
FD_INLINE fd_vd fd_clamp_hi_f64(fd_vd t, fd_vd hi) { return fd_minpd(hi, t); }
#else
FD_INLINE fd_vd fd_max_f64(fd_vd acc, fd_vd v) { return fd_sel_f64(v > acc, v, acc); }
FD_INLINE fd_vd fd_clamp_lo_f64(fd_vd t, fd_vd lo) { return fd_sel_f64(t < lo, lo, t); }
FD_INLINE fd_vd fd_clamp_hi_f64(fd_vd t, fd_vd hi) { return fd_sel_f64(t > hi, hi, t); }
#endif
FD_INLINE fd_vd fd_max_where_f64(fd_vd acc, fd_md m, fd_vd v) { return fd_sel_f64(m & (v > acc), v, acc); }
#endif
/* Counters of lanes where a mask is false (the "x == max" entries of FD_ACC_S): a scalar fed
   by popcnt of the k register with AVX-512, else a vector of per-lane counts (extracting
   lanes to count them was the slowest part of the generic loop). */
#if FD_AVX512
typedef ptrdiff_t fd_cnt_f32;
typedef ptrdiff_t fd_cnt_f64;
FD_INLINE fd_cnt_f32 fd_cnt_add_f32(fd_cnt_f32 c, fd_mf rest) { return c + FD_WF - fd_popcount_f32(rest); }
FD_INLINE fd_cnt_f64 fd_cnt_add_f64(fd_cnt_f64 c, fd_md rest) { return c + FD_WD - fd_popcount_f64(rest); }
FD_INLINE double fd_cnt_total_f32(fd_cnt_f32 c) { return (double)c; }
FD_INLINE double fd_cnt_total_f64(fd_cnt_f64 c) { return (double)c; }
#else
typedef fd_vi fd_cnt_f32;
typedef fd_vl fd_cnt_f64;
FD_INLINE fd_cnt_f32 fd_cnt_add_f32(fd_cnt_f32 c, fd_mf rest) { return c + rest + 1; }
FD_INLINE fd_cnt_f64 fd_cnt_add_f64(fd_cnt_f64 c, fd_md rest) { return c + rest + 1; }
FD_INLINE double fd_cnt_total_f32(fd_cnt_f32 c)
{
    int64_t t = 0;
    for (int l = 0; l < FD_WF; l++) t += c[l];
    return (double)t;
}
FD_INLINE double fd_cnt_total_f64(fd_cnt_f64 c)
{
    int64_t t = 0;
    for (int l = 0; l < FD_WD; l++) t += c[l];
    return (double)t;
}
#endif
FD_INLINE fd_vf fd_abs_f32(fd_vf a) { return (fd_vf)((fd_vu)a & 0x7fffffffu); }
FD_INLINE fd_vd fd_abs_f64(fd_vd a) { return (fd_vd)((fd_vq)a & 0x7fffffffffffffffull); }

/* The n < W trailing elements of a row, padded with `fill` (a value neutral for the kernel
   at hand, e.g. -inf for logits, 0 for a probability).  Never reads past p[n-1]. */
FD_INLINE fd_vf fd_load_tail_f32(const float *p, ptrdiff_t n, float fill)
{
#if FD_AVX512
    return (fd_vf)_mm512_mask_loadu_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1u), p);
#else
    float buf[FD_WF] __attribute__((aligned(FD_VBYTES)));
    for (int l = 0; l < FD_WF; l++) buf[l] = fill;
    for (ptrdiff_t l = 0; l < n; l++) buf[l] = p[l];
    return *(const fd_vf *)buf;
#endif
}
FD_INLINE fd_vd fd_load_tail_f64(const double *p, ptrdiff_t n, double fill)
{
#if FD_AVX512
    return (fd_vd)_mm512_mask_loadu_pd(_mm512_set1_pd(fill), (__mmask8)((1u << n) - 1u), p);
#else
    double buf[FD_WD] __attribute__((aligned(FD_VBYTES)));
    for (int l = 0; l < FD_WD; l++) buf[l] = fill;
    for (ptrdiff_t l = 0; l < n; l++) buf[l] = p[l];
    return *(const fd_vd *)buf;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Horizontal reductions as butterflies (log2(lanes) shuffle + op steps, not a serial chain).  */
/* Float lanes are widened to double before they are added together.                           */
/* ------------------------------------------------------------------------------------------ */
#if FD_VBYTES == 64
#define FD_LO_F 0, 1, 2, 3, 4, 5, 6, 7
#define FD_HI_F 8, 9, 10, 11, 12, 13, 14, 15
#define FD_BF_F(v, OP)                                                                         \
    v = OP(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)); \
    v = OP(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)); \
    v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)); \
    v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14))
#define FD_BF_D(v, OP)                                                                         \
    v = OP(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));                          \
    v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));                          \
    v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6))
#elif FD_VBYTES == 32
#define FD_LO_F 0, 1, 2, 3
#define FD_HI_F 4, 5, 6, 7
#define FD_BF_F(v, OP)                                                                         \
    v = OP(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));                          \
    v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));                          \
    v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6))
#define FD_BF_D(v, OP)                                                                         \
    v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1));                                      \
    v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2))
#else
#define FD_LO_F 0, 1
#define FD_HI_F 2, 3
#define FD_BF_F(v, OP)                                                                         \
    v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1));                                      \
    v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2))
#define FD_BF_D(v, OP) v = OP(v, __builtin_shufflevector(v, v, 1, 0))
#endif
#define FD_OP_ADD(a, b) ((a) + (b))

FD_INLINE double fd_hsum_f64(fd_vd a)
{
    FD_BF_D(a, FD_OP_ADD);
    return a[0];
}
FD_INLINE double fd_hsum_f32(fd_vf v)
{
    fd_vfh lo = __builtin_shufflevector(v, v, FD_LO_F), hi = __builtin_shufflevector(v, v, FD_HI_F);
    return fd_hsum_f64(__builtin_convertvector(lo, fd_vd) + __builtin_convertvector(hi, fd_vd));
}
FD_INLINE float fd_hmax_f32(fd_vf v)
{
    FD_BF_F(v, fd_max_f32);
    return v[0];
}
FD_INLINE double fd_hmax_f64(fd_vd v)
{
    FD_BF_D(v, fd_max_f64);
    return v[0];
}

/* Transpose-reductions: W vectors v[0..W) -> one vector whose lane i reduces v[i].
   log2(W) levels of (two-source shuffle, shuffle, op); W - 1 combines in all, i.e. about 3
   instructions per row instead of a per-row butterfly, and no cross-row dependency. */
#define FD_TRED16(NAME, VT, OP)                                                                \
    FD_INLINE VT NAME(VT *v)                                                                   \
    {                                                                                          \
        VT a[8], b[4], c[2];                                                                   \
        for (int i = 0; i < 8; i++)                                                            \
            a[i] = OP(__builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7,  \
                                              16, 17, 18, 19, 20, 21, 22, 23),                 \
                      __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13,    \
                                              14, 15, 24, 25, 26, 27, 28, 29, 30, 31));        \
        for (int i = 0; i < 4; i++)                                                            \
            b[i] = OP(__builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10,    \
                                              11, 16, 17, 18, 19, 24, 25, 26, 27),             \
                      __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14,  \
                                              15, 20, 21, 22, 23, 28, 29, 30, 31));            \
        for (int i = 0; i < 2; i++)                                                            \
            c[i] = OP(__builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12,    \
                                              13, 16, 17, 20, 21, 24, 25, 28, 29),             \
                      __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14,  \
                                              15, 18, 19, 22, 23, 26, 27, 30, 31));            \
        return OP(__builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20,   \
                                          22, 24, 26, 28, 30),                                 \
                  __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21,   \
                                          23, 25, 27, 29, 31));                                \
    }
#define FD_TRED8(NAME, VT, OP)                                                                 \
    FD_INLINE VT NAME(VT *v)                                                                   \
    {                                                                                          \
        VT a[4], b[2];                                                                         \
        for (int i = 0; i < 4; i++)                                                            \
            a[i] = OP(__builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11), \
                      __builtin_shufflevector(v[2 * i], v[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15)); \
        for (int i = 0; i < 2; i++)                                                            \
            b[i] = OP(__builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13), \
                      __builtin_shufflevector(a[2 * i], a[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15)); \
        return OP(__builtin_shufflevector(b[0], b[1], 0, 2, 4, 6, 8, 10, 12, 14),              \
                  __builtin_shufflevector(b[0], b[1], 1, 3, 5, 7, 9, 11, 13, 15));             \
    }
#define FD_TRED4(NAME, VT, OP)                                                                 \
    FD_INLINE VT NAME(VT *v)                                                                   \
    {                                                                                          \
        VT a0 = OP(__builtin_shufflevector(v[0], v[1], 0, 1, 4, 5),                            \
                   __builtin_shufflevector(v[0], v[1], 2, 3, 6, 7));                           \
        VT a1 = OP(__builtin_shufflevector(v[2], v[3], 0, 1, 4, 5),                            \
                   __builtin_shufflevector(v[2], v[3], 2, 3, 6, 7));                           \
        return OP(__builtin_shufflevector(a0, a1, 0, 2, 4, 6),                                 \
                  __builtin_shufflevector(a0, a1, 1, 3, 5, 7));                                \
    }
#define FD_TRED2(NAME, VT, OP)                                                                 \
    FD_INLINE VT NAME(VT *v)                                                                   \
    {                                                                                          \
        return OP(__builtin_shufflevector(v[0], v[1], 0, 2), __builtin_shufflevector(v[0], v[1], 1, 3)); \
    }
#if FD_VBYTES == 64
FD_TRED16(fd_tsum_f32, fd_vf, FD_OP_ADD)
FD_TRED16(fd_tmax_f32, fd_vf, fd_max_f32)
FD_TRED8(fd_tsum_f64, fd_vd, FD_OP_ADD)
FD_TRED8(fd_tmax_f64, fd_vd, fd_max_f64)
#elif FD_VBYTES == 32
FD_TRED8(fd_tsum_f32, fd_vf, FD_OP_ADD)
FD_TRED8(fd_tmax_f32, fd_vf, fd_max_f32)
FD_TRED4(fd_tsum_f64, fd_vd, FD_OP_ADD)
FD_TRED4(fd_tmax_f64, fd_vd, fd_max_f64)
#else
FD_TRED4(fd_tsum_f32, fd_vf, FD_OP_ADD)
FD_TRED4(fd_tmax_f32, fd_vf, fd_max_f32)
FD_TRED2(fd_tsum_f64, fd_vd, FD_OP_ADD)
FD_TRED2(fd_tmax_f64, fd_vd, fd_max_f64)
#endif

/* Columns of a block of rows: lane i = element `col` of row i (row stride V; rows past nrows
   read row 0).  Used for the V mod W trailing elements of short rows, so that no exponential
   is spent on padding lanes (C51: 51 = 3 * 16 + 3). */
#if FD_AVX512
typedef __m512i fd_idx_f32;
typedef __m256i fd_idx_f64;
FD_INLINE fd_idx_f32 fd_block_idx_f32(ptrdiff_t V, int nrows)
{
    __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __mmask16 valid = _mm512_cmplt_epi32_mask(lane, _mm512_set1_epi32(nrows));
    return _mm512_maskz_mullo_epi32(valid, lane, _mm512_set1_epi32((int)V));
}
FD_INLINE fd_idx_f64 fd_block_idx_f64(ptrdiff_t V, int nrows)
{
    __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    __mmask8 valid = _mm256_cmplt_epi32_mask(lane, _mm256_set1_epi32(nrows));
    return _mm256_maskz_mullo_epi32(valid, lane, _mm256_set1_epi32((int)V));
}
FD_INLINE fd_vf fd_gather_f32(const float *p, fd_idx_f32 idx) { return (fd_vf)_mm512_i32gather_ps(idx, p, 4); }
FD_INLINE fd_vd fd_gather_f64(const double *p, fd_idx_f64 idx) { return (fd_vd)_mm512_i32gather_pd(idx, p, 8); }
#else
typedef struct { ptrdiff_t o[FD_WF]; } fd_idx_f32;
typedef struct { ptrdiff_t o[FD_WD]; } fd_idx_f64;
FD_INLINE fd_idx_f32 fd_block_idx_f32(ptrdiff_t V, int nrows)
{
    fd_idx_f32 r;
    for (int i = 0; i < FD_WF; i++) r.o[i] = (i < nrows ? i : 0) * V;
    return r;
}
FD_INLINE fd_idx_f64 fd_block_idx_f64(ptrdiff_t V, int nrows)
{
    fd_idx_f64 r;
    for (int i = 0; i < FD_WD; i++) r.o[i] = (i < nrows ? i : 0) * V;
    return r;
}
FD_INLINE fd_vf fd_gather_f32(const float *p, fd_idx_f32 idx)
{
    fd_vf v;
    for (int i = 0; i < FD_WF; i++) v[i] = p[idx.o[i]];
    return v;
}
FD_INLINE fd_vd fd_gather_f64(const double *p, fd_idx_f64 idx)
{
    fd_vd v;
    for (int i = 0; i < FD_WD; i++) v[i] = p[idx.o[i]];
    return v;
}
#endif

#if FD_AVX512
/* x[i * V + t_i] and w[t_i] for the rows of a block whose target t_i is valid (not ignored,
   in [0, V)); *valid gets the mask of those rows.  Gathers instead of a scalar loop over the
   block's rows (the hard-label CE's finish, ~2 ns a row at C51's shape). */
FD_INLINE void fd_target_gather_f32(const float *x, const float *w, const int64_t *target,
                                    int nrows, ptrdiff_t V, int64_t ignore, fd_vf *xt, fd_vf *wt,
                                    unsigned *valid)
{
    __m256 xh[2], wh[2];
    unsigned ok_all = 0;
    for (int h = 0; h < 2; h++) {
        int n = nrows - 8 * h;
        __mmask8 live = n >= 8 ? (__mmask8)0xFF : n <= 0 ? (__mmask8)0 : (__mmask8)((1u << n) - 1u);
        __m512i t = _mm512_maskz_loadu_epi64(live, target + 8 * h);
        __mmask8 ok = live & _mm512_cmpneq_epi64_mask(t, _mm512_set1_epi64(ignore)) &
                      _mm512_cmpge_epi64_mask(t, _mm512_setzero_si512()) &
                      _mm512_cmplt_epi64_mask(t, _mm512_set1_epi64(V));
        __m512i row = _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi64(V));
        __m512i idx = _mm512_add_epi64(_mm512_add_epi64(row, _mm512_set1_epi64(8 * h * V)), t);
        xh[h] = _mm512_mask_i64gather_ps(_mm256_setzero_ps(), ok, idx, x, 4);
        wh[h] = _mm512_mask_i64gather_ps(_mm256_setzero_ps(), ok, t, w, 4);
        ok_all |= (unsigned)ok << (8 * h);
    }
    *xt = (fd_vf)_mm512_insertf32x8(_mm512_castps256_ps512(xh[0]), xh[1], 1);
    *wt = (fd_vf)_mm512_insertf32x8(_mm512_castps256_ps512(wh[0]), wh[1], 1);
    *valid = ok_all;
}
FD_INLINE void fd_target_gather_f64(const double *x, const double *w, const int64_t *target,
                                    int nrows, ptrdiff_t V, int64_t ignore, fd_vd *xt, fd_vd *wt,
                                    unsigned *valid)
{
    __mmask8 live = nrows >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << nrows) - 1u);
    __m512i t = _mm512_maskz_loadu_epi64(live, target);
    __mmask8 ok = live & _mm512_cmpneq_epi64_mask(t, _mm512_set1_epi64(ignore)) &
                  _mm512_cmpge_epi64_mask(t, _mm512_setzero_si512()) &
                  _mm512_cmplt_epi64_mask(t, _mm512_set1_epi64(V));
    __m512i idx = _mm512_add_epi64(
        _mm512_mullo_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi64(V)), t);
    *xt = (fd_vd)_mm512_mask_i64gather_pd(_mm512_setzero_pd(), ok, idx, x, 8);
    *wt = (fd_vd)_mm512_mask_i64gather_pd(_mm512_setzero_pd(), ok, t, w, 8);
    *valid = ok;
}
#endif

/* log of s = k + r, the softmax normaliser kept as a count k >= 1 of entries equal to the
   running max (each exactly exp(0) = 1) and the sum r of the others: log k + log1p(r / k).
   Keeping the 1s out of the vector lanes matters for confident rows: in a float32 lane
   holding 1.0, terms below 6e-8 round away, which loses up to 1/16 of r, i.e. percents of
   the cross-entropy or entropy of a near-one-hot row; log1p keeps r's relative precision. */
FD_INLINE double fd_log_kr(double k, double r)
{
    return k == 1.0 ? log1p(r) : log(k) + log1p(r / k);
}

/* float64 KL from logits (see fd_kl_exact in _row_state.h): the one-pass D = w/sx - log sx + log sz
   subtracts terms of order L = 1 + |w/sx| + 2 (|log sx| + |log sz|) + (how far the references
   rose while sums were carried), and its absolute error stays below a few eps L; a row with
   D < FD_KL_EXACT_BELOW * L is recomputed without cancellation, which keeps the one-pass
   results within 1e-12 relative (measured: < 1e-13).  The literal is
   fastdiv._registry.KL_EXACT_BELOW's, as FD_KL32_NEAR_BELOW is KL32_NEAR_BELOW's
   (tests/test_divergences.py checks both). */
#define FD_KL_EXACT_BELOW 1e-3
/* float32 working precision: the one pass's absolute error is a few eps L with the float32
   eps (measured ~1e-8 at L ~ 20, 64 x 50257 rows); a row with D < FD_KL32_NEAR_BELOW * L is
   summed again class by class (fd_kl_near32, _row_state.h): relative error ~1e-7, against
   2e-4 at D ~ 5e-5 and 2 % at D ~ 5e-7 for the one pass. */
#define FD_KL32_NEAR_BELOW 1e-4
/* A vector that fails the nearby terms' test (every |d| < 2: fd_js_half_term, fd_kl_near32)
   is summed lane by lane, each lane in its own form, where at most 1 / FD_NEAR_MIXED_SHARE
   of its lanes are wide (|d| >= FD_NEAR_MIXED_WIDE, not masked in one row only): the
   log-based terms of a near lane cancel down to m d^2 / 8.  fastdiv._registry's
   NEAR_MIXED_SHARE and NEAR_MIXED_WIDE (tests/test_divergences.py checks them). */
#define FD_NEAR_MIXED_SHARE 2
#define FD_NEAR_MIXED_WIDE 0.5
/* A float32 row pair whose JS (beta = 1/2) is below FD_JS_LANES_BELOW after a pass where some
   vector took the log-based terms is summed again with every vector that has a near lane taken
   lane by lane (fd_js_terms, _divergence_rows.h).  fastdiv._registry.JS_LANES_BELOW
   (tests/test_divergences.py checks it). */
#define FD_JS_LANES_BELOW 1e-3
FD_INLINE double fd_kl_scale(double wsx, double lsx, double lsz, double moved)
{
    return 1.0 + fabs(wsx) + 2.0 * (fabs(lsx) + fabs(lsz)) + moved;
}

/* (s, e) with s = fl(a - b) and a - b = s + e exactly (TwoSum), fenced against the
   -fassociative-math that would fold e to 0. */
FD_INLINE double fd_two_diff(double a, double b, double *e)
{
    double s = FD_VBARRIER(a - b);
    double bv = FD_VBARRIER(s - a);
    double t = FD_VBARRIER(s - bv);
    *e = FD_VBARRIER(a - t) - FD_VBARRIER(b + bv);
    return s;
}

/* expm1(b) and phi(b) = b e^b - e^b + 1 (>= 0) for |b| < 1 by their series (truncated below
   1e-17 relative): no cancellation for small b, where (b - 1) expm1(b) + b cancels to eps/b. */
FD_INLINE void fd_expm1_phi(double b, double *e1, double *ph)
{
    double e = 0.0, f = 0.0;
    /* Horner from the top: e = sum_{k>=1} b^(k-1) / k!, f = sum_{k>=2} (k-1) b^(k-2) / k! */
    static const double inv_fact[23] = {
        1.0, 1.0, 0.5, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
        1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0,
        1.0 / 87178291200.0, 1.0 / 1307674368000.0, 1.0 / 20922789888000.0,
        1.0 / 355687428096000.0, 1.0 / 6402373705728000.0, 1.0 / 121645100408832000.0,
        1.0 / 2432902008176640000.0, 1.0 / 51090942171709440000.0, 1.0 / 1124000727777607680000.0};
    for (int k = 19; k >= 1; k--) e = e * b + inv_fact[k];
    for (int k = 22; k >= 2; k--) f = f * b + (k - 1) * inv_fact[k];
    *e1 = e * b;
    *ph = f * b * b;
}

/* ------------------------------------------------------------------------------------------ */
/* exp                                                                                          */
/*   k = round(t / ln2), r = t - k ln2 in [-ln2/2, ln2/2], exp(t) = 2^k * P(r).                */
/*   P: minimax polynomials (Remez, relative error 3.9e-9 for float at degree 6, 1.8e-17 for   */
/*   double at degree 11, before rounding).                                                     */
/*   AVX-512: k by the 1.5 * 2^p rounding fma, 2^k * P by vscalefps (exact scaling, no integer */
/*   bit games); float goes by sixteenths instead, see fd_exp_core_f32 (a table of 2^(j/16),    */
/*   degree 3).  Generic: k by float->int truncation of t*log2e + 0.5 + BIAS (positive, so      */
/*   floor), 2^k from the exponent bits.                                                        */
/* The clamp t >= LO keeps 2^k normal; below LO the result is forced to exactly 0 (denormal    */
/* outputs are slow on Intel and irrelevant next to a softmax sum >= 1).                        */
/* ------------------------------------------------------------------------------------------ */
#define FD_LOG2E 1.44269504088896340736
#define FD_LN2 0.693147180559945309417

FD_INLINE fd_vf fd_exp_poly_f32(fd_vf r)
{
    fd_vf p = 0.0013948640637153269f * r + 0.00838115719023645f;
    p = p * r + 0.041666239859114496f;
    p = p * r + 0.16666325010555608f;
    p = p * r + 0.5000000081043168f;
    p = p * r + 1.0000000648778362f;
    return p * r + 1.0f;
}

FD_INLINE fd_vd fd_exp_poly_f64(fd_vd r)
{
    fd_vd p = 2.2981328866020198e-08 * r + 2.762636556852593e-07;
    p = p * r + 2.756426190540047e-06;
    p = p * r + 2.480150434536771e-05;
    p = p * r + 0.0001984126147461493;
    p = p * r + 0.0013888888932471243;
    p = p * r + 0.008333333337728652;
    p = p * r + 0.04166666666657327;
    p = p * r + 0.16666666666657265;
    p = p * r + 0.5000000000000006;
    p = p * r + 1.0000000000000007;
    return p * r + 1.0;
}

#define FD_EXP_LO_F32 -87.0f /* exp(-87) = 1.6e-38 > FLT_MIN */
#define FD_EXP_HI_F32 89.0f  /* exp(89) > FLT_MAX */
#define FD_EXP_LO_F64 -708.0 /* exp(-708) = 3.3e-308 > DBL_MIN */
#define FD_EXP_HI_F64 710.0  /* exp(710) > DBL_MAX */

/* Shared core: tc already clamped to [LO, HI] (or NaN); returns P(r) 2^k, or 0 where `under`. */
FD_INLINE fd_vf fd_exp_core_f32(fd_vf tc, fd_mf under, int full)
{
    /* tc is often x - shift: keep r = tc - k ln2 from becoming x - (shift + k ln2) */
    tc = FD_VBARRIER(tc);
#if FD_AVX512
    /* k = round(tc log2e) by the 1.5 * 2^23 trick: the fma is a builtin that reassociation
       cannot see through, so `y - M` is not folded to tc * log2e (as `(a + M) - M` would be
       under -fassociative-math).  2 flexible uops instead of vrndscaleps' 2 on port 0. */
    (void)full; /* vscalefps overflows to +inf by itself */
    /* By sixteenths: k = round(16 tc log2e), r = tc - (k/16) ln2 in [-ln2/32, ln2/32],
       exp(tc) = 2^(k >> 4) * 2^((k & 15)/16) * e^r.  M = 1.5 * 2^19 puts y = tc log2e + M
       where the spacing is 1/16, so y - M is k/16 exactly and the low 4 bits of y are k's:
       vpermps indexes the register of the 16 powers 2^(j/16) by them, and vscalefps scales
       by floor(k/16) = k >> 4 from y - M itself.  e^r then needs a degree-3 polynomial,
       T + (T r) q(r), instead of degree 6: three operations fewer on the FMA ports, the
       loop's bound on Zen 4 (7.5 against 9.3 cycles per vector in a bare sum).  r's
       reduction error, (k/16) (ln2 - float(ln2)), is the single-ln2 one of before. */
    const __m512 M = _mm512_set1_ps(786432.0f);
    __m512 y = _mm512_fmadd_ps(FD_M512(tc), _mm512_set1_ps((float)FD_LOG2E), M);
    fd_vf kq = (fd_vf)y - (fd_vf)M;
    fd_vf r = tc - kq * (float)FD_LN2;
    const __m512 T = _mm512_setr_ps(
        1.0f, 1.0442737824274138f, 1.0905077326652577f, 1.1387886347566916f, 1.1892071150027210f,
        1.2418578120734840f, 1.2968395546510096f, 1.3542555469368927f, 1.4142135623730951f,
        1.4768261459394993f, 1.5422108254079407f, 1.6104903319492543f, 1.6817928305074290f,
        1.7562521603732995f, 1.8340080864093424f, 1.9152065613971474f);
    fd_vf tj = (fd_vf)_mm512_permutexvar_ps(_mm512_castps_si512(y), T);
    /* q(r) = (e^r - 1) / r, minimax for the relative error of 1 + r q(r): 1.6e-9 */
    fd_vf q = (0.16666074097156525f * r + 0.5000162124633789f) * r + 1.0f;
    return (fd_vf)_mm512_maskz_scalef_ps((fd_mf)~under, FD_M512(tj + (tj * r) * q), FD_M512(kq));
#else
    fd_vi ki = __builtin_convertvector(tc * (float)FD_LOG2E + 128.5f, fd_vi); /* k + 128 */
    fd_vf kf = __builtin_convertvector(ki, fd_vf) - 128.0f;
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    fd_vf r = tc - kf * (float)FD_LN2; /* one rounding: fused */
#else
    /* Without fma, kf * ln2 rounded to float is off by up to 4e-6 at |k| ~ 126: Cody-Waite
       split (k*C1 exact, C1 has 9 significant bits), fenced so that -fassociative-math does
       not turn it back into tc - k*(C1 + C2). */
    fd_vf r = FD_VBARRIER(tc - kf * 0.693359375f) - kf * -2.12194440e-4f;
#endif
    fd_vf p = fd_exp_poly_f32(r);
    if (!full) /* k in [-126, 0]: one power of two */
        return fd_sel_f32(under, (fd_vf){0}, p * (fd_vf)(((fd_vu)ki - 1u) << 23));
    /* 2^k as 2^(k>>1) 2^(k-(k>>1)), so that k up to 128 overflows to +inf naturally */
    fd_vi k = ki - 128, k1 = k >> 1, k2 = k - k1;
    fd_vf s1 = (fd_vf)((fd_vu)(k1 + 127) << 23), s2 = (fd_vf)((fd_vu)(k2 + 127) << 23);
    return fd_sel_f32(under, (fd_vf){0}, (p * s1) * s2);
#endif
}

FD_INLINE fd_vd fd_exp_core_f64(fd_vd tc, fd_md under, int full)
{
    tc = FD_VBARRIER(tc);
#if FD_AVX512
    (void)full;
    const __m512d M = _mm512_set1_pd(6755399441055744.0); /* 1.5 * 2^52 */
    __m512d y = _mm512_fmadd_pd(FD_M512D(tc), _mm512_set1_pd(FD_LOG2E), M);
    fd_vd kf = (fd_vd)y - (fd_vd)M;
    /* Cody-Waite split (k*C1 exact), fenced against reassociation: 4e-16 instead of the
       2e-14 of a single rounded ln2 at |k| ~ 1000; one more fma, cheap at float64 rates. */
    fd_vd r = FD_VBARRIER(tc - kf * 6.93147180369123816490e-01) - kf * 1.90821492927058770002e-10;
    return (fd_vd)_mm512_maskz_scalef_pd((fd_md)~under, FD_M512D(fd_exp_poly_f64(r)), FD_M512D(kf));
#else
    /* int32 lanes: double <-> int64 vector conversions need AVX-512DQ */
    fd_vih ki = __builtin_convertvector(tc * FD_LOG2E + 1024.5, fd_vih); /* k + 1024 */
    fd_vd kf = __builtin_convertvector(ki, fd_vd) - 1024.0;
    fd_vd r = FD_VBARRIER(tc - kf * 6.93147180369123816490e-01) - kf * 1.90821492927058770002e-10;
    fd_vd p = fd_exp_poly_f64(r);
    fd_vl k = __builtin_convertvector(ki, fd_vl) - 1024;
    if (!full) /* k in [-1021, 0]: one power of two */
        return fd_sel_f64(under, (fd_vd){0}, p * (fd_vd)((fd_vq)(k + 1023) << 52));
    fd_vl k1 = k >> 1, k2 = k - k1;
    fd_vd s1 = (fd_vd)((fd_vq)(k1 + 1023) << 52), s2 = (fd_vd)((fd_vq)(k2 + 1023) << 52);
    return fd_sel_f64(under, (fd_vd){0}, (p * s1) * s2);
#endif
}

/* exp(t) for t <= 0, t = -inf or NaN: the softmax shift guarantees t = x - max <= 0.
   Returns exp(t) (0 when t < LO; NaN for NaN) and stores in *tc the clamped argument
   max(t, LO): the kernels use e * tc in place of e * t so that a masked entry (e = 0,
   t = -inf) contributes 0 * LO = 0 rather than 0 * -inf = NaN. */
FD_INLINE fd_vf fd_expn_f32(fd_vf t, fd_vf *tc_out)
{
    const fd_vf lo = fd_splat_f32(FD_EXP_LO_F32);
    fd_mf under = fd_lt_f32(t, lo); /* false for NaN: NaN flows through to the result */
    fd_vf tc = fd_clamp_lo_f32(t, lo);
    *tc_out = tc;
    return fd_exp_core_f32(tc, under, 0);
}

FD_INLINE fd_vd fd_expn_f64(fd_vd t, fd_vd *tc_out)
{
    const fd_vd lo = fd_splat_f64(FD_EXP_LO_F64);
    fd_md under = fd_lt_f64(t, lo);
    fd_vd tc = fd_clamp_lo_f64(t, lo);
    *tc_out = tc;
    return fd_exp_core_f64(tc, under, 0);
}

/* As fd_expn, for callers that do not need the clamped argument: on AVX-512 the clamp is
   dropped (a lane below LO, -inf included, is zeroed by the mask of vscalefps whatever the
   NaN/inf its polynomial produced), one instruction less per vector on the hottest loop. */
FD_INLINE fd_vf fd_expz_f32(fd_vf t)
{
#if FD_AVX512
    return fd_exp_core_f32(t, fd_lt_f32(t, fd_splat_f32(FD_EXP_LO_F32)), 0);
#else
    fd_vf tc;
    return fd_expn_f32(t, &tc);
#endif
}
FD_INLINE fd_vd fd_expz_f64(fd_vd t)
{
#if FD_AVX512
    return fd_exp_core_f64(t, fd_lt_f64(t, fd_splat_f64(FD_EXP_LO_F64)), 0);
#else
    fd_vd tc;
    return fd_expn_f64(t, &tc);
#endif
}

/* exp(t) over the whole range: 0 below LO, +inf above log(max), NaN for NaN.
   *tc_out gets t clamped to [LO, HI]. */
FD_INLINE fd_vf fd_exp_f32(fd_vf t, fd_vf *tc_out)
{
    const fd_vf lo = fd_splat_f32(FD_EXP_LO_F32);
    fd_mf under = fd_lt_f32(t, lo);
    fd_vf tc = fd_clamp_hi_f32(fd_clamp_lo_f32(t, lo), fd_splat_f32(FD_EXP_HI_F32));
    *tc_out = tc;
    return fd_exp_core_f32(tc, under, 1);
}

FD_INLINE fd_vd fd_exp_f64(fd_vd t, fd_vd *tc_out)
{
    const fd_vd lo = fd_splat_f64(FD_EXP_LO_F64);
    fd_md under = fd_lt_f64(t, lo);
    fd_vd tc = fd_clamp_hi_f64(fd_clamp_lo_f64(t, lo), fd_splat_f64(FD_EXP_HI_F64));
    *tc_out = tc;
    return fd_exp_core_f64(tc, under, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* log                                                                                          */
/*   x = 2^k * m with m in [sqrt(1/2), sqrt(2)) taken from the bits (denormals are first       */
/*   scaled by 2^23 / 2^52); log x = k ln2 + log(m).  Special values by selects:               */
/*   log(0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, log(NaN) = NaN.                         */
/* ------------------------------------------------------------------------------------------ */
/* log(1 + f) for f = m - 1, m in [sqrt(1/2), sqrt(2)): the mantissa part of fd_log and
   fd_logpos.  float: Cephes logf, log(1+f) = f - z/2 + f z P(f), z = f^2, relative error
   ~1e-7.  double: fdlibm, log(1+f) = f - hfsq + s (hfsq + R(s^2)), s = f / (2 + f). */
FD_INLINE fd_vf fd_log_mant_f32(fd_vf f)
{
    fd_vf z = f * f;
    fd_vf y = 7.0376836292E-2f * f - 1.1514610310E-1f;
    y = y * f + 1.1676998740E-1f;
    y = y * f - 1.2420140846E-1f;
    y = y * f + 1.4249322787E-1f;
    y = y * f - 1.6668057665E-1f;
    y = y * f + 2.0000714765E-1f;
    y = y * f - 2.4999993993E-1f;
    y = y * f + 3.3333331174E-1f;
    y = y * f * z - 0.5f * z;
    return f + y;
}

FD_INLINE fd_vd fd_log_mant_f64(fd_vd f)
{
    fd_vd s = f / (2.0 + f);
    fd_vd z = s * s, w = z * z;
    fd_vd t1 = w * (3.999999999940941908e-01 +
                    w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    fd_vd t2 = z * (6.666666666666735130e-01 +
                    w * (2.857142874366239149e-01 +
                         w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    fd_vd hfsq = 0.5 * f * f;
    return f - (hfsq - s * (hfsq + (t1 + t2)));
}

FD_INLINE fd_vf fd_log_f32(fd_vf x)
{
    fd_mf small = fd_lt_f32(x, fd_splat_f32(1.17549435e-38f)); /* below FLT_MIN, 0, negative */
    fd_vf xs = fd_sel_f32(small, x * 8388608.0f, x);              /* denormals: scale by 2^23 */
    fd_vu ix = (fd_vu)xs + (0x3f800000u - 0x3f3504f3u);
    fd_vf kf = __builtin_convertvector((fd_vi)(ix >> 23) - 127, fd_vf);
    kf = fd_sel_f32(small, kf - 23.0f, kf);
    fd_vf f = (fd_vf)((ix & 0x007fffffu) + 0x3f3504f3u) - 1.0f; /* m - 1 in [-0.293, 0.414) */
    fd_vf res = kf * (float)FD_LN2 + fd_log_mant_f32(f);
    /* x in (0, inf): res; else log(0) = -inf, log(+inf) = +inf, log(<0) = NaN, log(NaN) = NaN */
    fd_mf ok = fd_gt_f32(x, (fd_vf){0}) & fd_lt_f32(x, fd_splat_f32(INFINITY));
    fd_vf special = fd_sel_f32(fd_eq_f32(x, (fd_vf){0}), fd_splat_f32(-INFINITY),
                               fd_sel_f32(fd_lt_f32(x, (fd_vf){0}), fd_splat_f32(NAN), x));
    return fd_sel_f32(ok, res, special);
}

FD_INLINE fd_vd fd_log_f64(fd_vd x)
{
    fd_md small = fd_lt_f64(x, fd_splat_f64(2.2250738585072014e-308)); /* below DBL_MIN */
    fd_vd xs = fd_sel_f64(small, x * 4503599627370496.0, x);             /* 2^52 */
    fd_vq ix = (fd_vq)xs + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull);
    fd_vd kf = __builtin_convertvector((fd_vl)(ix >> 52) - 1023, fd_vd);
    kf = fd_sel_f64(small, kf - 52.0, kf);
    fd_vd f = (fd_vd)((ix & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull) - 1.0;
    fd_vd res = kf * FD_LN2 + fd_log_mant_f64(f);
    fd_md ok = fd_gt_f64(x, (fd_vd){0}) & fd_lt_f64(x, fd_splat_f64(INFINITY));
    fd_vd special = fd_sel_f64(fd_eq_f64(x, (fd_vd){0}), fd_splat_f64(-INFINITY),
                               fd_sel_f64(fd_lt_f64(x, (fd_vd){0}), fd_splat_f64(NAN), x));
    return fd_sel_f64(ok, res, special);
}

#if FD_AVX512
/* log1p(u), u >= 0, for whole vectors (the block drivers' finish): log(w) - ((w - 1) - u) / w
   with w = fl(1 + u); w - 1 is exact, so the quotient corrects w's rounding.  w and w - 1 come
   from fma builtins, which reassociation does not see through (as generic code, (w - 1) - u
   could be folded to 0).  Relative error ~1e-7 (float) from 1e-30 to 1e3. */
FD_INLINE fd_vf fd_vlog1p_f32(fd_vf u)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 w = _mm512_fmadd_ps(FD_M512(u), one, one);
    __m512 c = _mm512_fmsub_ps(w, one, one);
    return fd_log_f32((fd_vf)w) - ((fd_vf)c - u) / (fd_vf)w;
}
FD_INLINE fd_vd fd_vlog1p_f64(fd_vd u)
{
    const __m512d one = _mm512_set1_pd(1.0);
    __m512d w = _mm512_fmadd_pd(FD_M512D(u), one, one);
    __m512d c = _mm512_fmsub_pd(w, one, one);
    return fd_log_f64((fd_vd)w) - ((fd_vd)c - u) / (fd_vd)w;
}
#endif

/* log(p) of a probability below which the float64 reference's exp(log p) underflows to 0:
   the reference treats such a term as probability 0 (contributing exactly 0).  Used for the
   log-probability kernels so that float32 inputs match the reference's zero set. */
#define FD_LOG_DENORM_MIN (-745.13321910194122)

/* log x for x > 0 finite and normal, without the special-value selects of fd_log (10 % of
   the JS pass).  For x = 0 or subnormal the result is finite garbage; the JS pass multiplies
   it by a probability that is 0 or below 1e-37 there.  Same polynomials as fd_log, except
   for float32 with AVX-512:
   by a table, as the exp by sixteenths (the JS pass's log was 12 of its ~18 operations on
   the FMA ports, the loop's bound on Zen 4).  x = 2^k m with m in [0.75, 1.5) from the bits
   (a = bits(x) - bits(0.75): k = a >> 23, m = a's mantissa on 0.75's exponent); the top 5
   bits of a's mantissa pick one of 32 intervals of m (1/64 wide below 1, 1/32 above), whose
   reciprocal centre rc (a float) and L = -log(rc) (a float, from double) two vpermt2ps take
   from registers; r = m rc - 1 (one fma: |r| <= 1/64 but for the two intervals beside 1,
   whose rc is 1, where r = m - 1 is exact and in [-1/64, 1/32]); log x = k ln2 + L +
   log1p(r), log1p by its Taylor polynomial of degree 5 (truncation below 6e-9 relative),
   L + log1p(r) first and k ln2 added by one fma.  Against float64 log on every 7th float of
   [2^-126, 2): max 2.15 ulp, mean 0.25 (Cephes: 1.07 / 0.33); the max is just below a power
   of two (x = 1.133: log 0.12499), where L's own rounding is an ulp of the result; absolute,
   at most 1.1e-6 on [1e-10, 1] (Cephes: 2.0e-6).  Near x = 1 (k = 0, L = 0) the result is
   the polynomial alone. */
FD_INLINE fd_vf fd_logpos_f32(fd_vf x)
{
#if FD_AVX512
    const __m512i a = _mm512_sub_epi32(_mm512_castps_si512(FD_M512(x)), _mm512_set1_epi32(0x3f400000));
    const __m512 kf = _mm512_cvtepi32_ps(_mm512_srai_epi32(a, 23));
    const __m512 m = _mm512_castsi512_ps(
        _mm512_add_epi32(_mm512_and_si512(a, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x3f400000)));
    const __m512i j = _mm512_srli_epi32(a, 18); /* vpermt2ps reads its low 5 bits */
    const __m512 rc0 = _mm512_setr_ps(
        1.3195875883102417f, 1.2929292917251587f, 1.2673267126083374f, 1.2427184581756592f,
        1.2190476655960083f, 1.1962616443634033f, 1.174311876296997f, 1.1531531810760498f,
        1.1327433586120605f, 1.1130434274673462f, 1.0940171480178833f, 1.0756303071975708f,
        1.0578511953353882f, 1.0406503677368164f, 1.0240000486373901f, 1.0f);
    const __m512 rc1 = _mm512_setr_ps(
        1.0f, 0.9552238583564758f, 0.9275362491607666f, 0.9014084339141846f,
        0.8767123222351074f, 0.8533333539962769f, 0.8311688303947449f, 0.8101266026496887f,
        0.790123462677002f, 0.7710843086242676f, 0.7529411911964417f, 0.7356321811676025f,
        0.7191011309623718f, 0.7032967209815979f, 0.6881720423698425f, 0.6736842393875122f);
    const __m512 l0 = _mm512_setr_ps(
        -0.2773192524909973f, -0.25691041350364685f, -0.23690973222255707f, -0.21730127930641174f,
        -0.19806994497776031f, -0.1792013943195343f, -0.1606823354959488f, -0.14250008761882782f,
        -0.12464243918657303f, -0.10709808766841888f, -0.08985637873411179f, -0.07290682196617126f,
        -0.05623967573046684f, -0.039845872670412064f, -0.023716574534773827f, 0.0f);
    const __m512 l1 = _mm512_setr_ps(
        0.0f, 0.045809559524059296f, 0.0752234011888504f, 0.1037968099117279f,
        0.13157635927200317f, 0.15860500931739807f, 0.18492233753204346f, 0.2105647474527359f,
        0.23556606471538544f, 0.25995755195617676f, 0.2837681472301483f, 0.3070250451564789f,
        0.3297532796859741f, 0.3519763946533203f, 0.37371641397476196f, 0.39499375224113464f);
    const __m512 rc = _mm512_permutex2var_ps(rc0, j, rc1);
    const __m512 l = _mm512_permutex2var_ps(l0, j, l1);
    fd_vf r = (fd_vf)_mm512_fmsub_ps(m, rc, _mm512_set1_ps(1.0f));
    fd_vf q = ((0.2f * r - 0.25f) * r + 0.33333333f) * r - 0.5f;
    fd_vf lp = (fd_vf)l + (r + (r * r) * q); /* below 0.42 in magnitude */
    return (fd_vf)_mm512_fmadd_ps(kf, _mm512_set1_ps((float)FD_LN2), FD_M512(lp)); /* one rounding */
#else
    fd_vu ix = (fd_vu)x + (0x3f800000u - 0x3f3504f3u);
    fd_vf kf = __builtin_convertvector((fd_vi)(ix >> 23) - 127, fd_vf);
    fd_vf f = (fd_vf)((ix & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
    return kf * (float)FD_LN2 + fd_log_mant_f32(f);
#endif
}

/* J(d / 2) for s = d^2 in [0, 4), J(x) = x tanh x - log cosh x.  With q = p e^d, the
   Jensen-Shannon term at beta = 1/2 is 1/2 p log(p / m) + 1/2 q log(q / m) = m J(d / 2),
   m = (p + q) / 2: J is even, >= 0, d^2 / 8 near 0 and ln 2 at infinity.  J = s Q(s), Q of
   degree 6 fitted to J / s on [0, 4] (least squares on Chebyshev nodes, reweighted toward the
   relative minimax; fastdiv._registry.JSD_HALF_POLY holds the same literals): against mpmath,
   at most 2.2e-7 relative over [0, 4] in float32 Horner, so the term keeps its relative
   accuracy as d -> 0, where log m rounded at the size of log m (~1e-6 for m ~ 1e-5) is all of
   lp - lm.  |d| < 2 keeps Q's degree low: J's nearest singularities are at d = +-i pi,
   s = -pi^2. */
FD_INLINE fd_vf fd_jsd_f32(fd_vf s)
{
    fd_vf q = 5.788427515085459e-08f * s - 1.374143039356568e-06f;
    q = q * s + 1.7764687072485685e-05f;
    q = q * s - 0.0001825586223276332f;
    q = q * s + 0.0017348849214613438f;
    q = q * s - 0.015624696388840675f;
    q = q * s + 0.1249999850988388f;
    return s * q;
}

/* E(d) = (e^d - 1 - d) / d^2 for |d| < 2.  With q = p e^d, a class's KL terms are
   p (e^d - 1 - d) = p d^2 E(d) (KL(p || q): sum p (-d), plus sum (q - p) = 0) and its
   Jeffreys term (q - p) d = p d^2 (1 + d E(d)), each >= 0, so sums of them do not cancel as
   the rows' difference goes to 0 (KL(q || p) is the second less the first).  Degree 8 in d,
   fitted on Chebyshev nodes of [-2, 2] toward the relative minimax (fastdiv._registry.
   KL_NEAR_POLY holds the same literals): 2.3e-7 relative at most in float32 Horner.  E is
   entire, so the degree stays low on a bounded range. */
FD_INLINE fd_vf fd_kl_near_f32(fd_vf d)
{
    fd_vf e = 2.81619009001588e-07f * d + 2.984316097354167e-06f;
    e = e * d + 2.484798096702434e-05f;
    e = e * d + 0.00019774110114667565f;
    e = e * d + 0.0013886974193155766f;
    e = e * d + 0.00833404902368784f;
    e = e * d + 0.041666846722364426f;
    e = e * d + 0.16666646301746368f;
    e = e * d + 0.4999999701976776f;
    return e;
}

FD_INLINE fd_vd fd_logpos_f64(fd_vd x)
{
    fd_vq ix = (fd_vq)x + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull);
    fd_vd kf = __builtin_convertvector((fd_vl)(ix >> 52) - 1023, fd_vd);
    fd_vd f = (fd_vd)((ix & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull) - 1.0;
    return kf * FD_LN2 + fd_log_mant_f64(f);
}

/* log(p / q) for p, q > 0, without forming p / q (it overflows or underflows for far-apart p
   and q) and without log p - log q (it cancels for nearly equal p and q: a KL term p log(p/q)
   of 1e-14 came out with 1e-3 relative error).  With the mantissas mp, mq in [sqrt(1/2),
   sqrt(2)) of fd_log and one of them halved or doubled so that mp / mq lies in [sqrt(1/2),
   sqrt(2)]: log(p / q) = (kp - kq) ln2 + log(1 + u), u = (mp - mq) / mq in [-0.293, 0.414],
   the range of fd_log_mant.  mp - mq is exact (Sterbenz: mp / mq is within [1/2, 2]), so u
   carries one rounding and log(p / q) a few ulp of itself; when kp != kq the two terms do not
   cancel (|(kp - kq) ln2| >= ln2 > 2 |log(1 + u)|).  p or q zero, infinite, negative or NaN:
   finite garbage (the callers select those terms). */
FD_INLINE fd_vf fd_logratio_f32(fd_vf p, fd_vf q)
{
    const fd_vf tiny = fd_splat_f32(1.17549435e-38f);
    fd_mf sp = fd_lt_f32(p, tiny), sq = fd_lt_f32(q, tiny);       /* subnormals: scale by 2^23 */
    fd_vu ip = (fd_vu)fd_sel_f32(sp, p * 8388608.0f, p) + (0x3f800000u - 0x3f3504f3u);
    fd_vu iq = (fd_vu)fd_sel_f32(sq, q * 8388608.0f, q) + (0x3f800000u - 0x3f3504f3u);
    fd_vf kf = __builtin_convertvector((fd_vi)(ip >> 23) - (fd_vi)(iq >> 23), fd_vf);
    kf = fd_sel_f32(sp, kf - 23.0f, kf);
    kf = fd_sel_f32(sq, kf + 23.0f, kf);
    fd_vf mp = (fd_vf)((ip & 0x007fffffu) + 0x3f3504f3u);
    fd_vf mq = (fd_vf)((iq & 0x007fffffu) + 0x3f3504f3u);
    fd_mf hi = fd_gt_f32(mp, mq * 1.41421356f), lo = fd_gt_f32(mq, mp * 1.41421356f);
    mp = fd_sel_f32(hi, mp * 0.5f, fd_sel_f32(lo, mp * 2.0f, mp));
    kf = fd_sel_f32(hi, kf + 1.0f, fd_sel_f32(lo, kf - 1.0f, kf));
    /* The barriers fix the rounding steps: kf ln2 rounded, log_mant whole, then one add.  Left
       to -ffp-contract=fast and -fassociative-math, GCC 12 for aarch64 fused kf ln2 into the
       add in the float16 / bfloat16 instantiations' tail step but not in float32's, so their
       results differed by an ulp from the float32 kernel's on the upcast input. */
    return FD_VBARRIER(kf * (float)FD_LN2) + FD_VBARRIER(fd_log_mant_f32(FD_VBARRIER(mp - mq) / mq));
}

FD_INLINE fd_vd fd_logratio_f64(fd_vd p, fd_vd q)
{
    const fd_vd tiny = fd_splat_f64(2.2250738585072014e-308);
    fd_md sp = fd_lt_f64(p, tiny), sq = fd_lt_f64(q, tiny);       /* subnormals: scale by 2^52 */
    fd_vq ip = (fd_vq)fd_sel_f64(sp, p * 4503599627370496.0, p) + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull);
    fd_vq iq = (fd_vq)fd_sel_f64(sq, q * 4503599627370496.0, q) + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull);
    fd_vd kf = __builtin_convertvector((fd_vl)(ip >> 52) - (fd_vl)(iq >> 52), fd_vd);
    kf = fd_sel_f64(sp, kf - 52.0, kf);
    kf = fd_sel_f64(sq, kf + 52.0, kf);
    fd_vd mp = (fd_vd)((ip & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull);
    fd_vd mq = (fd_vd)((iq & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull);
    fd_md hi = fd_gt_f64(mp, mq * 1.4142135623730951), lo = fd_gt_f64(mq, mp * 1.4142135623730951);
    mp = fd_sel_f64(hi, mp * 0.5, fd_sel_f64(lo, mp * 2.0, mp));
    kf = fd_sel_f64(hi, kf + 1.0, fd_sel_f64(lo, kf - 1.0, kf));
    return kf * FD_LN2 + fd_log_mant_f64(FD_VBARRIER(mp - mq) / mq);
}

/* ------------------------------------------------------------------------------------------ */
/* Reading the inputs.  The row templates read their float inputs only through these, named   */
/* by the input suffix (f32, f64; h16: IEEE binary16 bits, b16: bfloat16 bits):                 */
/*   fd_ld_S(p)            one vector of the working precision from W inputs;                  */
/*   fd_ldt_S(p, n, fill)  the n < W trailing inputs, the other lanes = fill;                   */
/*   fd_gth_S(p, idx, c)   a block's column (lane i = p[idx_i]; c: p's column in its row);      */
/*   fd_at_S(p, i)         one input as a scalar;                                               */
/*   fd_tgather_S          the hard-label CE block's target logits and weights (AVX-512).       */
/* Half inputs are widened to float32 inside the vector loads, so the arithmetic and its        */
/* results are those of the float32 kernels on the upcast input (the widening is exact), while  */
/* memory traffic is that of the 16-bit input.                                                   */
/* ------------------------------------------------------------------------------------------ */
static inline float fd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, NaN (payload kept) */
    } else if (e == 0) {
        float f = (float)man * 0x1p-24f; /* zero and subnormals: man * 2^-24, exact */
        return sign ? -f : f;
    } else {
        bits = sign | ((e + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float fd_bf16_to_f32(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

FD_INLINE fd_vf fd_ld_f32(const float *p) { return fd_load_f32(p); }
FD_INLINE fd_vd fd_ld_f64(const double *p) { return fd_load_f64(p); }
FD_INLINE fd_vf fd_ldt_f32(const float *p, ptrdiff_t n, float fill) { return fd_load_tail_f32(p, n, fill); }
FD_INLINE fd_vd fd_ldt_f64(const double *p, ptrdiff_t n, double fill) { return fd_load_tail_f64(p, n, fill); }
FD_INLINE fd_vf fd_gth_f32(const float *p, fd_idx_f32 idx, ptrdiff_t c) { (void)c; return fd_gather_f32(p, idx); }
FD_INLINE fd_vd fd_gth_f64(const double *p, fd_idx_f64 idx, ptrdiff_t c) { (void)c; return fd_gather_f64(p, idx); }
FD_INLINE float fd_at_f32(const float *p, ptrdiff_t i) { return p[i]; }
FD_INLINE double fd_at_f64(const double *p, ptrdiff_t i) { return p[i]; }

/* W 16-bit inputs (unaligned) */
typedef uint16_t fd_vh_u __attribute__((vector_size(FD_VBYTES / 2), aligned(2), may_alias));

FD_INLINE fd_vf fd_ld_b16(const uint16_t *p)
{
    /* bfloat16 bits are the top half of the float32's: zero-extend and shift (vpmovzxwd from
       memory + vpslld; the generic conversion compiles to split 128-bit halves) */
#if FD_AVX512
    return (fd_vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
#elif FD_VBYTES == 32 && defined(__AVX2__)
    return (fd_vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
    return (fd_vf)(__builtin_convertvector(*(const fd_vh_u *)p, fd_vu) << 16);
#endif
}

FD_INLINE fd_vf fd_ld_h16(const uint16_t *p)
{
#if FD_AVX512
    return (fd_vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif FD_VBYTES == 32 && defined(__F16C__)
    return (fd_vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    /* exact without F16C: the magnitude bits moved to float32's places give the value times
       2^-112 (subnormal halves included), one multiply rescales it; exponent 31 (inf, NaN)
       gets float32's all-ones exponent, the payload kept */
    fd_vu u = __builtin_convertvector(*(const fd_vh_u *)p, fd_vu);
    fd_vu em = (u & 0x7fffu) << 13;
    fd_vu f = (fd_vu)((fd_vf)em * 0x1p112f);
    f |= (fd_vu)(em >= (0x7c00u << 13)) & 0x7f800000u;
    return (fd_vf)(f | ((u & 0x8000u) << 16));
#endif
}

FD_INLINE float fd_at_h16(const uint16_t *p, ptrdiff_t i) { return fd_f16_to_f32(p[i]); }
FD_INLINE float fd_at_b16(const uint16_t *p, ptrdiff_t i) { return fd_bf16_to_f32(p[i]); }

/* Tails: the n < W inputs copied into a zeroed vector, widened, then the fill (a row tail
   is read once per row or chunk: no need for masked 16-bit loads). */
#define FD_LDT_HALF(S)                                                                         \
    FD_INLINE fd_vf fd_ldt_##S(const uint16_t *p, ptrdiff_t n, float fill)                     \
    {                                                                                          \
        uint16_t b[FD_WF] __attribute__((aligned(FD_VBYTES / 2))) = {0};                       \
        memcpy(b, p, (size_t)n * 2);                                                           \
        fd_vf v = fd_ld_##S(b);                                                                \
        for (int l = (int)n; l < FD_WF; l++) v[l] = fill;                                      \
        return v;                                                                              \
    }
FD_LDT_HALF(h16)
FD_LDT_HALF(b16)
#undef FD_LDT_HALF

#if FD_AVX512
/* Columns of 16-bit inputs by a 32-bit gather that ends at the wanted element (its high
   half): it reads the element before it, which exists when the column c is not the row's
   first; column 0 is read lane by lane. */
FD_INLINE fd_vf fd_gth_b16(const uint16_t *p, fd_idx_f32 idx, ptrdiff_t c)
{
    if (c == 0) {
        fd_vf v;
        int o[16] __attribute__((aligned(64)));
        _mm512_store_si512((__m512i *)o, idx);
        for (int i = 0; i < 16; i++) v[i] = fd_bf16_to_f32(p[o[i]]);
        return v;
    }
    __m512i g = _mm512_i32gather_epi32(idx, (const void *)(p - 1), 2);
    return (fd_vf)_mm512_and_si512(g, _mm512_set1_epi32((int)0xffff0000u));
}
FD_INLINE fd_vf fd_gth_h16(const uint16_t *p, fd_idx_f32 idx, ptrdiff_t c)
{
    if (c == 0) {
        fd_vf v;
        int o[16] __attribute__((aligned(64)));
        _mm512_store_si512((__m512i *)o, idx);
        for (int i = 0; i < 16; i++) v[i] = fd_f16_to_f32(p[o[i]]);
        return v;
    }
    __m512i g = _mm512_i32gather_epi32(idx, (const void *)(p - 1), 2);
    return (fd_vf)_mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16)));
}
#else
FD_INLINE fd_vf fd_gth_b16(const uint16_t *p, fd_idx_f32 idx, ptrdiff_t c)
{
    (void)c;
    fd_vf v;
    for (int i = 0; i < FD_WF; i++) v[i] = fd_bf16_to_f32(p[idx.o[i]]);
    return v;
}
FD_INLINE fd_vf fd_gth_h16(const uint16_t *p, fd_idx_f32 idx, ptrdiff_t c)
{
    (void)c;
    fd_vf v;
    for (int i = 0; i < FD_WF; i++) v[i] = fd_f16_to_f32(p[idx.o[i]]);
    return v;
}
#endif

#if FD_AVX512
#define fd_tgather_f32 fd_target_gather_f32
#define fd_tgather_f64 fd_target_gather_f64
/* The hard-label CE block's x[i V + t_i] and w[t_i] for 16-bit x, lane by lane (once per
   block of 16 rows). */
#define FD_TGATHER_HALF(S)                                                                     \
    FD_INLINE void fd_tgather_##S(const uint16_t *x, const float *w, const int64_t *target,     \
                                  int nrows, ptrdiff_t V, int64_t ignore, fd_vf *xt, fd_vf *wt, \
                                  unsigned *valid)                                              \
    {                                                                                          \
        fd_vf a = {0}, b = {0};                                                                \
        unsigned ok = 0;                                                                       \
        for (int i = 0; i < nrows; i++) {                                                      \
            int64_t t = target[i];                                                             \
            if (t == ignore || t < 0 || t >= V) continue;                                      \
            a[i] = fd_at_##S(x, i * V + t);                                                    \
            b[i] = w[t];                                                                       \
            ok |= 1u << i;                                                                     \
        }                                                                                      \
        *xt = a;                                                                               \
        *wt = b;                                                                               \
        *valid = ok;                                                                           \
    }
FD_TGATHER_HALF(h16)
FD_TGATHER_HALF(b16)
#undef FD_TGATHER_HALF
#endif

/* ------------------------------------------------------------------------------------------ */
/* Row kernels: the row, divergence and evaluate templates instantiated by _inst.h           */
/* for each input format: f32, f64 (native), h16, b16 (16-bit inputs, float32 arithmetic).     */
/* ------------------------------------------------------------------------------------------ */
#define FD_CAT_(a, b) a##_##b
#define FD_CAT(a, b) FD_CAT_(a, b)

#define FD_INST 0
#include "_inst.h"
#define FD_INST 1
#include "_inst.h"
#define FD_INST 2
#include "_inst.h"
#define FD_INST 3
#include "_inst.h"

#endif /* FASTDIV_SIMD_H */
