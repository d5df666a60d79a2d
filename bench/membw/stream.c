/* STREAM-like memory bandwidth: read (sum), copy (a = b) and triad (a = b + s*c) over float
 * arrays of MIB MiB each (default 1024, well beyond the caches), best of 10 runs per kernel.
 * GB/s = 10^9 bytes/s, counting bytes the kernel names (STREAM convention: read 4N, copy 8N,
 * triad 12N; the write-allocate read of `a` is not counted). Threads come from OMP_NUM_THREADS;
 * built without OpenMP it is single-threaded. Usage: ./stream [MiB]   (prints one JSON line)  */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_max_threads(void) { return 1; }
#endif

#define RUNS 10
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
    size_t n = mib * (1u << 20) / sizeof(float);
    float *a = aligned_alloc(64, n * sizeof(float));
    float *b = aligned_alloc(64, n * sizeof(float));
    float *c = aligned_alloc(64, n * sizeof(float));
    if (!a || !b || !c) { fprintf(stderr, "out of memory\n"); return 1; }
    /* First touch with the same static schedule as the kernels (page placement, no page
     * faults inside the timed loops). */
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { a[i] = 0.0f; b[i] = 1.0f; c[i] = 2.0f; }

    double best[3] = {1e30, 1e30, 1e30};
    volatile float sink = 0.0f;
    for (int r = 0; r < RUNS; r++) {
        double t0 = now();
        float sum = 0.0f;
        /* simd reduction: vectorized with several accumulators, so the loop is load-bound. */
        #pragma omp parallel for simd schedule(static) reduction(+:sum)
        for (size_t i = 0; i < n; i++) sum += b[i];
        double t1 = now();
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i];
        double t2 = now();
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + 3.0f * c[i];
        double t3 = now();
        sink = sum + a[n / 2];  /* keep every kernel's result live */
        if (t1 - t0 < best[0]) best[0] = t1 - t0;
        if (t2 - t1 < best[1]) best[1] = t2 - t1;
        if (t3 - t2 < best[2]) best[2] = t3 - t2;
    }
    (void)sink;
    double bytes = (double)n * sizeof(float);
    printf("{\"threads\": %d, \"array_mib\": %zu, \"runs\": %d, \"read_gbps\": %.2f, "
           "\"copy_gbps\": %.2f, \"triad_gbps\": %.2f}\n", omp_get_max_threads(), mib, RUNS,
           bytes / best[0] / 1e9, 2 * bytes / best[1] / 1e9, 3 * bytes / best[2] / 1e9);
    free(a); free(b); free(c);
    return 0;
}
