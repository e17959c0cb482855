/* For bench/rss.py: sleeps 0.5-1.5 s, then burns 1 ms of CPU in one of two call chains, forever. */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static volatile unsigned long sink;
static long elapsed_ns(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000000000L + now.tv_nsec - start->tv_nsec;
}
static void burn(long ns) {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (elapsed_ns(&start) < ns) for (int i = 0; i < 1000; i++) sink += i;
}
static void work_a(long ns) { burn(ns); }
static void work_b(long ns) { work_a(ns); }
int main(int argc, char **argv) {
    int index = argc > 1 ? atoi(argv[1]) : 0;
    srand(index + 1);
    for (;;) {
        usleep(500000 + rand() % 1000000);
        (index % 2 ? work_a : work_b)(1000000);
    }
}
