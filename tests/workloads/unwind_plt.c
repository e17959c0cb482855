/*
 * Calls through the PLT, for the unwind table tests of PLT rows.
 * Build: gcc -O2 -fcf-protection=none -o unwind_plt unwind_plt.c          (classic .plt)
 *        gcc -O2 -fcf-protection -Wl,-z,ibtplt -o unwind_plt unwind_plt.c (IBT .plt)
 */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	puts(argv[0]);
	return abs(argc) + atoi(argc > 1 ? argv[1] : "0");
}
