/*
 * A known flame graph: main calls hot() for about 60% of the CPU, warm() (through
 * warm_leaf) for 30% and syscalls() (getppid in a loop: kernel frames) for the
 * rest. Runs for argv[1] seconds (default 5).
 * Build: gcc -O0 -fno-omit-frame-pointer -o flame_mix flame_mix.c
 */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

void hot(void) { for (unsigned long i = 0; i < 6000000; i++) sink += i; }
void warm_leaf(void) { for (unsigned long i = 0; i < 3000000; i++) sink += i; }
void warm(void) { warm_leaf(); }
void syscalls(void) { for (int i = 0; i < 4000; i++) sink += getppid(); }

int main(int argc, char **argv)
{
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);

	while (time(NULL) < end) {
		hot();
		warm();
		syscalls();
	}
	return 0;
}
