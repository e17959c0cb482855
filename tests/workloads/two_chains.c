/*
 * Two known call chains to two leaves, for the native walker's holdout test:
 * main -> drive_a -> mid_a -> leaf_a and main -> drive_b -> mid_b -> leaf_b,
 * the leaves burning CPU in the ratio 3:1. Runs for argv[1] seconds (default 4).
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -o two_chains two_chains.c
 * noipa keeps each function a frame of its own (no inlining, cloning or
 * identical-code folding); each keeps something on its stack, so that every
 * frame's CFA is the stack pointer plus an offset of its own. Each call's
 * work is drawn at random around a mean: a periodic workload would alias
 * with a periodic sampler and skew the shares a sampler sees.
 */
#include <stdlib.h>
#include <time.h>

#define NOIPA __attribute__((noipa))

volatile unsigned long sink;
static unsigned long state = 88172645463325252UL;

/* 100,000 to 300,000 iterations: xorshift64 (Marsaglia 2003) */
static unsigned long work(void)
{
	state ^= state << 13;
	state ^= state >> 7;
	state ^= state << 17;
	return 100000 + state % 200001;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 64 words of locals: more than the red zone, so the leaf moves rsp */
NOIPA unsigned long leaf_a(unsigned long n)
{
	unsigned long buf[64];

	for (unsigned long i = 0; i < 64; i++)
		buf[i] = i * 3 + n;
	for (unsigned long i = 0; i < n; i++)
		sink += buf[i & 63];
	return sink;
}

NOIPA unsigned long leaf_b(unsigned long n)
{
	unsigned long buf[64];

	for (unsigned long i = 0; i < 64; i++)
		buf[i] = i * 5 + n;
	for (unsigned long i = 0; i < n; i++)
		sink += buf[i & 63];
	return sink;
}

/* n lives across the call: a callee-saved register pushed */
NOIPA unsigned long mid_a(unsigned long n)
{
	return leaf_a(n) * 3 + n;
}

NOIPA unsigned long mid_b(unsigned long n)
{
	return leaf_b(n) * 5 + n;
}

NOIPA unsigned long drive_a(unsigned long rounds)
{
	unsigned long total = 0;

	for (unsigned long i = 0; i < rounds; i++)
		total += mid_a(work());
	return total;
}

NOIPA unsigned long drive_b(unsigned long rounds)
{
	unsigned long total = 0;

	for (unsigned long i = 0; i < rounds; i++)
		total += mid_b(work());
	return total;
}

int main(int argc, char **argv)
{
	double end = now() + (argc > 1 ? atof(argv[1]) : 4);
	unsigned long total = 0;

	while (now() < end) {
		total += drive_a(3);
		total += drive_b(1);
	}
	return (int)(total & 1);
}
