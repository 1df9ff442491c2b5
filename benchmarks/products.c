/* The C kernel's two products alone, timed: gemm (a layer's step, O = init + A X) and wgrad
 * (the weight gradient's lane-wise sums), for a few shapes, float or double; and their outputs
 * written to a file, so that two builds can be compared bit for bit. Thread CPU time.
 *
 *   F="-O3 -march=native -mtune=znver3 -fno-math-errno -fno-trapping-math -Wno-psabi"
 *   cc $F -DREAL=float benchmarks/products.c -o /tmp/halves -lm
 *   cc $F -DREAL=float -DMEMGRID_NO_HALVES benchmarks/products.c -o /tmp/wide -lm
 *   /tmp/halves /tmp/halves.bin && /tmp/wide /tmp/wide.bin && cmp /tmp/halves.bin /tmp/wide.bin
 */
#define NAME(x) x##_bench
#include "../memgrid/csrc/cells.c"
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static unsigned long long rng = 88172645463325252ull;
static REAL rnd(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (REAL)((rng >> 11) * (1.0 / 9007199254740992.0) - 0.5);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s OUTPUT\n", argv[0]); return 2; }
    FILE *out = fopen(argv[1], "wb");
    if (!out) { perror(argv[1]); return 2; }
    /* rows (R = c or 4c), columns (m + c), batch: B = 100 and 77 have scalar columns */
    const int shapes[][3] = {{20, 21, 128}, {40, 15, 128}, {80, 40, 128}, {10, 11, 1024},
                             {40, 25, 100}, {7, 9, 77}, {20, 40, 128}};
    for (int k = 0; k < (int)(sizeof shapes / sizeof shapes[0]); k++) {
        const int nout = shapes[k][0], ns = shapes[k][1], B = shapes[k][2];
        REAL *A = malloc(sizeof(REAL) * nout * ns), *init = malloc(sizeof(REAL) * nout);
        REAL *Xm = malloc(sizeof(REAL) * ns * B), *Om = malloc(sizeof(REAL) * nout * B);
        REAL *acc = calloc((size_t)nout * ns * VL, sizeof(REAL));
        const REAL *X[64], *G[128];
        REAL *O[128];
        for (int i = 0; i < nout * ns; i++) A[i] = rnd();
        for (int i = 0; i < nout; i++) init[i] = rnd();
        for (int i = 0; i < ns * B; i++) Xm[i] = rnd();
        for (int s = 0; s < ns; s++) X[s] = Xm + s * B;
        for (int o = 0; o < nout; o++) G[o] = O[o] = Om + o * B;
        const int reps = (int)(2e8 / ((double)nout * ns * B)) + 1;
        double t0 = now();
        for (int r = 0; r < reps; r++) gemm(nout, ns, A, init, X, O, B);
        const double tg = now() - t0;
        fwrite(Om, sizeof(REAL), (size_t)nout * B, out);
        t0 = now();
        for (int r = 0; r < reps; r++) wgrad(nout, ns, G, X, acc, B);
        const double tw = now() - t0;
        fwrite(acc, sizeof(REAL), (size_t)nout * ns * VL, out);
        const double flops = 2.0 * nout * ns * B * reps;
        printf("%3d x %2d x %4d: gemm %6.1f GFLOP/s  wgrad %6.1f GFLOP/s\n", nout, ns, B,
               flops / tg * 1e-9, flops / tw * 1e-9);
        free(A); free(init); free(Xm); free(Om); free(acc);
    }
    return fclose(out) != 0;
}
