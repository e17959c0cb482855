/* For test_debuginfo.py: prints its functions' addresses, then waits for stdin to close. */
#include <stdio.h>
#define NOINLINE __attribute__((noinline))
NOINLINE int alpha(int x) { return x * 3 + 1; }
NOINLINE static int beta(int x) { return alpha(x) ^ 5; }
NOINLINE int gamma_(int x) { return beta(x) - alpha(x); }
int main(void) {
    printf("alpha %p\nbeta %p\ngamma_ %p\nready\n", (void *)alpha, (void *)beta, (void *)gamma_);
    fflush(stdout);
    while (getchar() != EOF) {}
    return gamma_(1) == 12345;
}
