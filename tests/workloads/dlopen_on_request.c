/* For the symbols tests: dlopens argv[1] when a line arrives, prints lib_work's address. */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (argc < 2 || !fgets(line, sizeof line, stdin)) return 1;
    void *handle = dlopen(argv[1], RTLD_NOW);
    if (!handle) return 2;
    printf("lib_work %p\nready\n", dlsym(handle, "lib_work"));
    fflush(stdout);
    while (getchar() != EOF) {}
    return 0;
}
