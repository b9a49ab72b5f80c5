/* Floors for the peer bench, from a minimal C parent:
 *   floor respawn STAMP CHILD_FILE N   fork+exec STAMP, SIGKILL it, restart at once; prints each
 *                                      kill-to-first-write latency in microseconds (N kills).
 *   floor spawn N                      posix_spawn N `sleep 3600` children in a loop; prints the
 *                                      milliseconds from the first spawn to the last child's start,
 *                                      then kills them. */
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long last_stamp(const char *file) {
    FILE *f = fopen(file, "r");
    long long value = 0, last = 0;
    if (!f) return 0;
    while (fscanf(f, "%lld", &value) == 1) last = value;
    fclose(f);
    return last;
}

static int count_lines(const char *file) {
    FILE *f = fopen(file, "r");
    int lines = 0, c;
    if (!f) return 0;
    while ((c = fgetc(f)) != EOF) lines += c == '\n';
    fclose(f);
    return lines;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "respawn") == 0) {
        const char *stamp = argv[2], *file = argv[3];
        int kills = atoi(argv[4]);
        char *child_argv[] = {(char *)stamp, (char *)file, NULL};
        pid_t pid;
        posix_spawn(&pid, stamp, NULL, NULL, child_argv, environ);
        while (count_lines(file) < 1) usleep(100);
        for (int i = 0; i < kills; i++) {
            usleep(20000);
            int before = count_lines(file);
            long long killed = now_ns();
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            posix_spawn(&pid, stamp, NULL, NULL, child_argv, environ);
            while (count_lines(file) <= before) usleep(50);
            printf("%lld\n", (last_stamp(file) - killed) / 1000);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "spawn") == 0) {
        int n = atoi(argv[2]);
        pid_t *pids = calloc((size_t)n, sizeof *pids);
        char *child_argv[] = {"sleep", "3600", NULL};
        long long started = now_ns();
        for (int i = 0; i < n; i++) posix_spawnp(&pids[i], "sleep", NULL, NULL, child_argv, environ);
        long long spawned = now_ns();
        printf("%.1f\n", (spawned - started) / 1e6);
        for (int i = 0; i < n; i++) kill(pids[i], SIGKILL);
        for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
        return 0;
    }
    fprintf(stderr, "usage: floor respawn STAMP FILE N | floor spawn N\n");
    return 2;
}
