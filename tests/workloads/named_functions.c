/* For the symbols tests: prints its functions' addresses, waits for stdin to close. */
#include <stdio.h>
#define NOINLINE __attribute__((noinline))

NOINLINE int alpha(int x) { return x * 3 + 1; }
NOINLINE static int beta(int x) { return alpha(x) ^ 5; }
NOINLINE int gamma_(int x) { return beta(x) - alpha(x); }
#ifdef WITH_LIB
void lib_report(void);
#endif

int main(void) {
    printf("alpha %p\nbeta %p\ngamma_ %p\n", (void *)alpha, (void *)beta, (void *)gamma_);
#ifdef WITH_LIB
    lib_report();
#endif
    printf("ready\n");
    fflush(stdout);
    while (getchar() != EOF) {}
    return gamma_(1) == 12345;
}
