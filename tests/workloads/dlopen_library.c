/*
 * The library dlopen_chain.c loads: burn_outer -> burn_mid -> burn_leaf.
 * Build: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -shared -fPIC \
 *        -o libdlopen_library.so dlopen_library.c
 */
#define NOIPA __attribute__((noipa))

volatile unsigned long library_sink;

/* 64 words of locals: more than the red zone, so the leaf moves rsp */
NOIPA unsigned long burn_leaf(unsigned long n)
{
	unsigned long buf[64];

	for (unsigned long i = 0; i < 64; i++)
		buf[i] = i * 7 + n;
	for (unsigned long i = 0; i < n; i++)
		library_sink += buf[i & 63];
	return library_sink;
}

NOIPA unsigned long burn_mid(unsigned long n)
{
	return burn_leaf(n) * 3 + n;
}

NOIPA unsigned long burn_outer(unsigned long n)
{
	return burn_mid(n) * 5 + n;
}
