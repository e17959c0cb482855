/*
 * Process churn: forks COUNT children, PARALLEL at a time. Each burns a CPU
 * time drawn uniformly from MIN_US..MAX_US microseconds in burn(), then
 * sleeps SLEEP_S seconds (default 0) and exits. At the end it prints the
 * children's CPU time as the kernel accounted it (wait4):
 *   children=COUNT cpu_us=TOTAL
 * Usage: churn COUNT MIN_US MAX_US PARALLEL [SLEEP_S]
 * Build: gcc -O0 -fno-omit-frame-pointer -o churn churn.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

static long cpu_us(void)
{
	struct timespec now;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
	return now.tv_sec * 1000000L + now.tv_nsec / 1000;
}

void burn(long us)
{
	long end = cpu_us() + us;

	while (cpu_us() < end)
		for (int i = 0; i < 1000; i++)
			sink += i;
}

void child(long us, int sleep_s)
{
	burn(us);
	if (sleep_s > 0)
		sleep(sleep_s);
	_exit(0);
}

static long reap(void)
{
	struct rusage usage;

	if (wait4(-1, NULL, 0, &usage) < 0)
		return -1;
	return usage.ru_utime.tv_sec * 1000000L + usage.ru_utime.tv_usec +
	       usage.ru_stime.tv_sec * 1000000L + usage.ru_stime.tv_usec;
}

int main(int argc, char **argv)
{
	long total = 0, used;
	int count, parallel, sleep_s, running = 0;
	long min_us, max_us;

	if (argc < 5) {
		fprintf(stderr, "usage: churn COUNT MIN_US MAX_US PARALLEL [SLEEP_S]\n");
		return 2;
	}
	count = atoi(argv[1]);
	min_us = atol(argv[2]);
	max_us = atol(argv[3]);
	parallel = atoi(argv[4]);
	sleep_s = argc > 5 ? atoi(argv[5]) : 0;
	srand(42);
	for (int i = 0; i < count; i++) {
		long us = min_us + (max_us > min_us ? rand() % (max_us - min_us + 1) : 0);

		if (running == parallel) {
			used = reap();
			if (used >= 0) {
				total += used;
				running--;
			}
		}
		if (fork() == 0)
			child(us, sleep_s);
		running++;
	}
	while (running > 0 && (used = reap()) >= 0) {
		total += used;
		running--;
	}
	printf("children=%d cpu_us=%ld\n", count, total);
	return 0;
}
