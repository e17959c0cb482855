/*
 * Burns CPU in its own image for a while, then execs another program.
 * Usage: exec_after SECONDS PROGRAM [ARG...].
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -o exec_after exec_after.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NOIPA __attribute__((noipa))

volatile unsigned long sink;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

NOIPA void spin_before_exec(double end)
{
	while (now() < end)
		for (int i = 0; i < 100000; i++)
			sink += i;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s SECONDS PROGRAM [ARG...]\n", argv[0]);
		return 2;
	}
	spin_before_exec(now() + atof(argv[1]));
	execv(argv[2], argv + 2);
	perror(argv[2]);
	return 1;
}
