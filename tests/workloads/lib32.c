/* For test_elf.py: a 32-bit shared library (-m32), where gcc can build one. */
int f32a(int x) { return x + 1; }
int f32b(int x) { return f32a(x) * 2; }
