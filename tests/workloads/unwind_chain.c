/*
 * A known call chain main -> drive -> mid -> leaf in code built without frame
 * pointers, for the unwind table tests. Runs argv[1] rounds (default 1).
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -g \
 *        -fno-asynchronous-unwind-tables -fno-unwind-tables -o unwind_chain unwind_chain.c
 * (.debug_frame only); without the last two flags the CFI is in .eh_frame.
 */
#include <stdlib.h>

volatile unsigned long sink;

__attribute__((noinline)) unsigned long leaf(unsigned long n)
{
	unsigned long buf[64];

	for (unsigned long i = 0; i < 64; i++)
		buf[i] = i * n;
	for (unsigned long i = 0; i < n; i++)
		sink += buf[i & 63];
	return sink;
}

__attribute__((noinline)) unsigned long mid(unsigned long n)
{
	return leaf(n) + leaf(n / 2) + 1;
}

__attribute__((noinline)) unsigned long drive(unsigned long rounds)
{
	unsigned long total = 0;

	for (unsigned long i = 0; i < rounds; i++)
		total += mid(1000000);
	return total;
}

int main(int argc, char **argv)
{
	return (int)(drive(argc > 1 ? strtoul(argv[1], NULL, 10) : 1) & 1);
}
