/*
 * Three leaf functions burning CPU in the ratio 3:2:1, each under its own
 * call chain from main. Runs for argv[1] seconds (default 5).
 * Build: gcc -O0 -fno-omit-frame-pointer -o three_leaves three_leaves.c
 */
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

void leaf_a(void) { for (unsigned long i = 0; i < 3000000; i++) sink += i; }
void leaf_b(void) { for (unsigned long i = 0; i < 2000000; i++) sink += i; }
void leaf_c(void) { for (unsigned long i = 0; i < 1000000; i++) sink += i; }

void chain_a2(void) { leaf_a(); }
void chain_a1(void) { chain_a2(); }
void chain_b1(void) { leaf_b(); }
void chain_c1(void) { leaf_c(); }

int main(int argc, char **argv)
{
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);

	while (time(NULL) < end) {
		chain_a1();
		chain_b1();
		chain_c1();
	}
	return 0;
}
