/*
 * Many distinct stacks, as a real service has: eight functions call each
 * other along a path drawn at random, DEPTH calls deep, and the last one burns
 * a little CPU; then a new path is drawn. Each process draws from its own seed.
 * Usage: many_stacks SECONDS DEPTH SEED
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -o many_stacks many_stacks.c
 */
#include <stdlib.h>
#include <time.h>

#define NOIPA __attribute__((noipa))

volatile unsigned long sink;
static unsigned int seed;
static int depth;

typedef void (*step_fn)(int);
static step_fn steps[8];

static void next(int level)
{
	if (level >= depth) {
		for (int i = 0; i < 20000; i++)
			sink += i;
		return;
	}
	steps[rand_r(&seed) & 7](level + 1);
}

NOIPA void step_a(int level) { next(level); sink++; }
NOIPA void step_b(int level) { next(level); sink++; }
NOIPA void step_c(int level) { next(level); sink++; }
NOIPA void step_d(int level) { next(level); sink++; }
NOIPA void step_e(int level) { next(level); sink++; }
NOIPA void step_f(int level) { next(level); sink++; }
NOIPA void step_g(int level) { next(level); sink++; }
NOIPA void step_h(int level) { next(level); sink++; }

int main(int argc, char **argv)
{
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 10);

	depth = argc > 2 ? atoi(argv[2]) : 6;
	seed = argc > 3 ? atoi(argv[3]) : 1;
	steps[0] = step_a; steps[1] = step_b; steps[2] = step_c; steps[3] = step_d;
	steps[4] = step_e; steps[5] = step_f; steps[6] = step_g; steps[7] = step_h;
	while (time(NULL) < end)
		next(0);
	return 0;
}
