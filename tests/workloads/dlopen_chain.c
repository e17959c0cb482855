/*
 * Loads a library with dlopen() after it has run a while, then burns CPU in
 * it under a known chain: main -> call_library -> burn_outer -> burn_mid ->
 * burn_leaf (the last three in the library, dlopen_library.c).
 * Usage: dlopen_chain LIBRARY SECONDS_BEFORE SECONDS_AFTER.
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -o dlopen_chain dlopen_chain.c
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NOIPA __attribute__((noipa))

volatile unsigned long sink;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Before the load: busy in the program itself, so that it is sampled. */
NOIPA void spin_before_load(double end)
{
	while (now() < end)
		for (int i = 0; i < 100000; i++)
			sink += i;
}

NOIPA unsigned long call_library(unsigned long (*outer)(unsigned long), double end)
{
	unsigned long total = 0;

	while (now() < end)
		total += outer(100000);
	return total;
}

int main(int argc, char **argv)
{
	unsigned long (*outer)(unsigned long);
	void *library;

	if (argc != 4) {
		fprintf(stderr, "usage: %s LIBRARY SECONDS_BEFORE SECONDS_AFTER\n", argv[0]);
		return 2;
	}
	spin_before_load(now() + atof(argv[2]));
	library = dlopen(argv[1], RTLD_NOW);
	if (!library) {
		fprintf(stderr, "%s\n", dlerror());
		return 1;
	}
	outer = (unsigned long (*)(unsigned long))dlsym(library, "burn_outer");
	if (!outer) {
		fprintf(stderr, "%s\n", dlerror());
		return 1;
	}
	return (int)(call_library(outer, now() + atof(argv[3])) & 1);
}
