/* For bench/unwind.py: main -> f0 -> ... -> f63 -> leaf, argv[1] calls deep; leaf burns CPU. */
#include <stdlib.h>
#include <unistd.h>
static volatile unsigned long sink;
#define NOINLINE __attribute__((noinline, noclone))
NOINLINE int leaf(void) { for (;;) for (int i = 0; i < 1000; i++) sink += i; }
NOINLINE int f63(int n) { if (n <= 1) return leaf() + 63; return leaf() + (int)sink; }
NOINLINE int f62(int n) { if (n <= 1) return leaf() + 62; return f63(n - 1) + (int)sink; }
NOINLINE int f61(int n) { if (n <= 1) return leaf() + 61; return f62(n - 1) + (int)sink; }
NOINLINE int f60(int n) { if (n <= 1) return leaf() + 60; return f61(n - 1) + (int)sink; }
NOINLINE int f59(int n) { if (n <= 1) return leaf() + 59; return f60(n - 1) + (int)sink; }
NOINLINE int f58(int n) { if (n <= 1) return leaf() + 58; return f59(n - 1) + (int)sink; }
NOINLINE int f57(int n) { if (n <= 1) return leaf() + 57; return f58(n - 1) + (int)sink; }
NOINLINE int f56(int n) { if (n <= 1) return leaf() + 56; return f57(n - 1) + (int)sink; }
NOINLINE int f55(int n) { if (n <= 1) return leaf() + 55; return f56(n - 1) + (int)sink; }
NOINLINE int f54(int n) { if (n <= 1) return leaf() + 54; return f55(n - 1) + (int)sink; }
NOINLINE int f53(int n) { if (n <= 1) return leaf() + 53; return f54(n - 1) + (int)sink; }
NOINLINE int f52(int n) { if (n <= 1) return leaf() + 52; return f53(n - 1) + (int)sink; }
NOINLINE int f51(int n) { if (n <= 1) return leaf() + 51; return f52(n - 1) + (int)sink; }
NOINLINE int f50(int n) { if (n <= 1) return leaf() + 50; return f51(n - 1) + (int)sink; }
NOINLINE int f49(int n) { if (n <= 1) return leaf() + 49; return f50(n - 1) + (int)sink; }
NOINLINE int f48(int n) { if (n <= 1) return leaf() + 48; return f49(n - 1) + (int)sink; }
NOINLINE int f47(int n) { if (n <= 1) return leaf() + 47; return f48(n - 1) + (int)sink; }
NOINLINE int f46(int n) { if (n <= 1) return leaf() + 46; return f47(n - 1) + (int)sink; }
NOINLINE int f45(int n) { if (n <= 1) return leaf() + 45; return f46(n - 1) + (int)sink; }
NOINLINE int f44(int n) { if (n <= 1) return leaf() + 44; return f45(n - 1) + (int)sink; }
NOINLINE int f43(int n) { if (n <= 1) return leaf() + 43; return f44(n - 1) + (int)sink; }
NOINLINE int f42(int n) { if (n <= 1) return leaf() + 42; return f43(n - 1) + (int)sink; }
NOINLINE int f41(int n) { if (n <= 1) return leaf() + 41; return f42(n - 1) + (int)sink; }
NOINLINE int f40(int n) { if (n <= 1) return leaf() + 40; return f41(n - 1) + (int)sink; }
NOINLINE int f39(int n) { if (n <= 1) return leaf() + 39; return f40(n - 1) + (int)sink; }
NOINLINE int f38(int n) { if (n <= 1) return leaf() + 38; return f39(n - 1) + (int)sink; }
NOINLINE int f37(int n) { if (n <= 1) return leaf() + 37; return f38(n - 1) + (int)sink; }
NOINLINE int f36(int n) { if (n <= 1) return leaf() + 36; return f37(n - 1) + (int)sink; }
NOINLINE int f35(int n) { if (n <= 1) return leaf() + 35; return f36(n - 1) + (int)sink; }
NOINLINE int f34(int n) { if (n <= 1) return leaf() + 34; return f35(n - 1) + (int)sink; }
NOINLINE int f33(int n) { if (n <= 1) return leaf() + 33; return f34(n - 1) + (int)sink; }
NOINLINE int f32(int n) { if (n <= 1) return leaf() + 32; return f33(n - 1) + (int)sink; }
NOINLINE int f31(int n) { if (n <= 1) return leaf() + 31; return f32(n - 1) + (int)sink; }
NOINLINE int f30(int n) { if (n <= 1) return leaf() + 30; return f31(n - 1) + (int)sink; }
NOINLINE int f29(int n) { if (n <= 1) return leaf() + 29; return f30(n - 1) + (int)sink; }
NOINLINE int f28(int n) { if (n <= 1) return leaf() + 28; return f29(n - 1) + (int)sink; }
NOINLINE int f27(int n) { if (n <= 1) return leaf() + 27; return f28(n - 1) + (int)sink; }
NOINLINE int f26(int n) { if (n <= 1) return leaf() + 26; return f27(n - 1) + (int)sink; }
NOINLINE int f25(int n) { if (n <= 1) return leaf() + 25; return f26(n - 1) + (int)sink; }
NOINLINE int f24(int n) { if (n <= 1) return leaf() + 24; return f25(n - 1) + (int)sink; }
NOINLINE int f23(int n) { if (n <= 1) return leaf() + 23; return f24(n - 1) + (int)sink; }
NOINLINE int f22(int n) { if (n <= 1) return leaf() + 22; return f23(n - 1) + (int)sink; }
NOINLINE int f21(int n) { if (n <= 1) return leaf() + 21; return f22(n - 1) + (int)sink; }
NOINLINE int f20(int n) { if (n <= 1) return leaf() + 20; return f21(n - 1) + (int)sink; }
NOINLINE int f19(int n) { if (n <= 1) return leaf() + 19; return f20(n - 1) + (int)sink; }
NOINLINE int f18(int n) { if (n <= 1) return leaf() + 18; return f19(n - 1) + (int)sink; }
NOINLINE int f17(int n) { if (n <= 1) return leaf() + 17; return f18(n - 1) + (int)sink; }
NOINLINE int f16(int n) { if (n <= 1) return leaf() + 16; return f17(n - 1) + (int)sink; }
NOINLINE int f15(int n) { if (n <= 1) return leaf() + 15; return f16(n - 1) + (int)sink; }
NOINLINE int f14(int n) { if (n <= 1) return leaf() + 14; return f15(n - 1) + (int)sink; }
NOINLINE int f13(int n) { if (n <= 1) return leaf() + 13; return f14(n - 1) + (int)sink; }
NOINLINE int f12(int n) { if (n <= 1) return leaf() + 12; return f13(n - 1) + (int)sink; }
NOINLINE int f11(int n) { if (n <= 1) return leaf() + 11; return f12(n - 1) + (int)sink; }
NOINLINE int f10(int n) { if (n <= 1) return leaf() + 10; return f11(n - 1) + (int)sink; }
NOINLINE int f9(int n) { if (n <= 1) return leaf() + 9; return f10(n - 1) + (int)sink; }
NOINLINE int f8(int n) { if (n <= 1) return leaf() + 8; return f9(n - 1) + (int)sink; }
NOINLINE int f7(int n) { if (n <= 1) return leaf() + 7; return f8(n - 1) + (int)sink; }
NOINLINE int f6(int n) { if (n <= 1) return leaf() + 6; return f7(n - 1) + (int)sink; }
NOINLINE int f5(int n) { if (n <= 1) return leaf() + 5; return f6(n - 1) + (int)sink; }
NOINLINE int f4(int n) { if (n <= 1) return leaf() + 4; return f5(n - 1) + (int)sink; }
NOINLINE int f3(int n) { if (n <= 1) return leaf() + 3; return f4(n - 1) + (int)sink; }
NOINLINE int f2(int n) { if (n <= 1) return leaf() + 2; return f3(n - 1) + (int)sink; }
NOINLINE int f1(int n) { if (n <= 1) return leaf() + 1; return f2(n - 1) + (int)sink; }
NOINLINE int f0(int n) { if (n <= 1) return leaf() + 0; return f1(n - 1) + (int)sink; }
int main(int argc, char **argv) { alarm(600); return f0(atoi(argv[1])); }
