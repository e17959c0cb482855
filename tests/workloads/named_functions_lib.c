/* For the symbols tests: the library of named_functions.c -DWITH_LIB and dlopen_on_request.c. */
#include <stdio.h>
#define NOINLINE __attribute__((noinline))

NOINLINE static int lib_local(int x) { return x + 7; }
NOINLINE int lib_work(int x) { return lib_local(x) * 2; }
void lib_report(void) {
    printf("lib_local %p\nlib_work %p\nlib_report %p\n",
           (void *)lib_local, (void *)lib_work, (void *)lib_report);
}
