/* For discovery.process tests: spins on the CPU for argv[1] milliseconds, then exits. */
#include <stdlib.h>
#include <time.h>
/* Spin on the CPU for argv[1] milliseconds, then exit. */
int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 30;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 < ms);
    return 0;
}
