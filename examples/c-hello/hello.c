/* Prints a greeting and its arguments; static, so it runs FROM scratch. */
#include <stdio.h>

#define GREETING "Hello from c-hello"

int main(int argc, char **argv)
{
    printf("%s\n", GREETING);
    for (int i = 1; i < argc; i++)
        printf("arg %d: %s\n", i, argv[i]);
    return 0;
}
