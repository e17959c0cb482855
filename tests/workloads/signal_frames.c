/*
 * CPU burnt inside a signal handler: SIGALRM every 50 ms interrupts
 * main -> outer -> interrupted, and in_handler burns in the handler, so a
 * whole stack crosses the kernel's signal frame (__restore_rt).
 * Runs for argv[1] seconds (default 3).
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -o signal_frames signal_frames.c
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

volatile unsigned long sink;

__attribute__((noinline)) void in_handler(void)
{
	for (unsigned long i = 0; i < 20000000; i++)
		sink += i;
}

void handler(int sig)
{
	(void)sig;
	in_handler();
}

__attribute__((noinline)) void interrupted(void)
{
	for (unsigned long i = 0; i < 100000000; i++)
		sink++;
}

__attribute__((noinline)) void outer(void)
{
	interrupted();
	sink++;
}

int main(int argc, char **argv)
{
	struct itimerval every = { { 0, 50000 }, { 0, 50000 } };
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 3);

	signal(SIGALRM, handler);
	setitimer(ITIMER_REAL, &every, NULL);
	while (time(NULL) < end)
		outer();
	return 0;
}
