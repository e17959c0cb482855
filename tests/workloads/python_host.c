/* For test_interpreter.py: loads libpython argv[1], initialises it when a line arrives. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    pthread_key_t key;
    for (int i = argc > 3 ? atoi(argv[3]) : 0; i > 0; i--) pthread_key_create(&key, NULL);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void (*initialize)(void) = (void (*)(void))dlsym(lib, "Py_Initialize");
    int (*run)(const char *) = (int (*)(const char *))dlsym(lib, "PyRun_SimpleString");
    printf("loaded\n");
    fflush(stdout);
    char line[8];
    if (!fgets(line, sizeof line, stdin)) return 1;
    initialize();
    return run(argv[2]);
}
