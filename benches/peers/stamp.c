/* A child for the restart-latency bench: appends its start time (CLOCK_MONOTONIC, nanoseconds) to the file
 * named by argv[1] as its first act, then sleeps until killed. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (argc > 1) {
        char line[64];
        int length = snprintf(line, sizeof line, "%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
        int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (fd >= 0) {
            (void)!write(fd, line, (size_t)length);
            close(fd);
        }
    }
    for (;;) pause();
}
