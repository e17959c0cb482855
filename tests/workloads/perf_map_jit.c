/* For test_perfmap.py: generates code at run time and names it in its own perf map. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) return 1;
    memset(code, 0xc3, 4096);
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
    FILE *map = fopen(path, "w");
    if (!map) return 2;
    fprintf(map, "%lx 40 LazyCompile:*handler /app/server.js:10\n", (unsigned long)code);
    fprintf(map, "%lx 20 jit_second\n", (unsigned long)(code + 0x40));
    fclose(map);
    void (*generated)(void) = (void (*)(void))code;
    for (int i = 0; i < 100000; i++) generated();
    printf("first %p\nsecond %p\nthird %p\nready\n", code + 4, code + 0x40, code + 0x80);
    fflush(stdout);
    while (getchar() != EOF) {}
    return 0;
}
