/*
 * Spends most of its time in the kernel: small writes to /dev/null from
 * write_loop(). Runs for argv[1] seconds (default 5).
 * Build: gcc -O0 -fno-omit-frame-pointer -o syscalls syscalls.c
 */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

void write_loop(int fd)
{
	char byte = 0;

	for (int i = 0; i < 100000; i++)
		write(fd, &byte, 1);
}

int main(int argc, char **argv)
{
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);
	int fd = open("/dev/null", O_WRONLY);

	while (time(NULL) < end)
		write_loop(fd);
	return 0;
}
