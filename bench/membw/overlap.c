/* Can reading LoRA adapters from memory hide behind the base model's compute-bound products?
 * A batch-16 decode step of SmolLM2 with 16 distinct rank-16 adapters reads ~59 MB of f16
 * adapter panels (~2 MB a layer) beside ~20 ms of compute; read after the products, as the
 * engine does, they add their time at the memory's speed (bench/RESULTS.md, issue 18).
 *
 * Per "layer", each thread runs a compute-bound FMA loop (COMPUTE iterations) and then sums its
 * half of the layer's f16 chunk, four ways:
 *   compute   the loop alone
 *   read      the chunk alone (f16 widened and summed, as the delta products read it)
 *   both      loop, then chunk: what the engine does now
 *   prefetch  loop with the chunk's lines prefetched evenly through it (just in time for the
 *             read after it), then the chunk
 * Chunks rotate through 8 step-sized sets, so each is cold (beyond the caches) when read.
 * If `prefetch` came out near `compute` + a cached read, overlapping would pay; it did not on
 * the AMD EPYC Zen 4 VM (RESULTS.md). Usage: ./overlap [COMPUTE iterations per layer] [KiB a
 * layer, both threads together; default 2048] (one
 * JSON line a round, ms per 30-layer step). Built by run.sh with -march=x86-64-v3 -fopenmp. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>

#define LAYERS 30
#define SETS 8
#define STEPS 5
#define ROUNDS 6

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Eight independent FMA chains (compute-bound); prefetches `lines` lines from `pf` spread over
 * the iterations. */
static float compute(long iters, const char *pf, long lines) {
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_set1_ps(1.0f);
    const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
    long every = lines > 0 ? (iters + lines - 1) / lines : 0, next = 0;
    for (long i = 0; i < iters; i++) {
        for (int k = 0; k < 8; k++) acc[k] = _mm256_fmadd_ps(acc[k], m, a);
        for (int k = 0; k < 8; k++) acc[k] = _mm256_fmadd_ps(acc[k], m, a);
        if (every && i % every == 0) {
            /* Enough lines per visit to cover the chunk within the loop. */
            long per = (lines + iters / every - 1) / (iters / every);
            for (long j = 0; j < per && next < lines; j++, next++) _mm_prefetch(pf + next * 64, _MM_HINT_T0);
        }
    }
    __m256 s = acc[0];
    for (int k = 1; k < 8; k++) s = _mm256_add_ps(s, acc[k]);
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0] + o[7];
}

static float read_f16(const char *p, size_t bytes) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (size_t i = 0; i + 64 <= bytes; i += 64)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_add_ps(acc[k], _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(p + i + 16 * k))));
    __m256 s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0] + o[7];
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    size_t chunk = (argc > 2 ? strtoul(argv[2], NULL, 10) : 2048) << 10;
    int threads = omp_get_max_threads();
    size_t half = chunk / threads, per_thread = (size_t)SETS * LAYERS * half;
    char **bufs = malloc(threads * sizeof *bufs);
    for (int t = 0; t < threads; t++) {
        bufs[t] = aligned_alloc(64, per_thread);
        if (!bufs[t]) { fprintf(stderr, "out of memory\n"); return 1; }
        /* Small f16 values (exponent bits only partly set): no infinities or NaNs. */
        for (size_t i = 0; i < per_thread; i++) bufs[t][i] = (char)((i * 7 + t) % 251 & 0x3b);
    }
    const char *names[] = {"compute", "read", "both", "prefetch"};
    volatile float sink = 0;
    for (int round = 0; round < ROUNDS; round++) {
        printf("{\"threads\": %d, \"compute_iterations\": %ld, \"chunk_kib\": %zu", threads, iters, chunk >> 10);
        for (int variant = 0; variant < 4; variant++) {
            double start = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
            {
                const char *buf = bufs[omp_get_thread_num()];
                float x = 0;
                for (int step = 0; step < STEPS; step++) {
                    int set = (round * STEPS + step) % SETS;
                    for (int l = 0; l < LAYERS; l++) {
                        const char *chunk = buf + ((size_t)set * LAYERS + l) * half;
                        if (variant != 1) x += compute(iters, variant == 3 ? chunk : NULL, variant == 3 ? half / 64 : 0);
                        if (variant != 0) x += read_f16(chunk, half);
                    }
                }
                sink += x;
            }
            printf(", \"%s_ms\": %.2f", names[variant], (now() - start) * 1e3 / STEPS);
        }
        printf("}\n");
    }
    return sink == 12345.0f;
}
