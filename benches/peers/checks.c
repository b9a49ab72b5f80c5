/* The floor of the check bench: the same HTTP checks as fog-orchestrator's, from a minimal C program.
 *   checks PORT new     every second, 100 checks at once through epoll, each on a new socket: socket,
 *                       connect, send, recv, close with SO_LINGER 0 (what a check cost before issue 12's
 *                       sixth round, without any runtime)
 *   checks PORT again   the same on 100 sockets kept and connected again: connect, send, recv, and
 *                       connect(AF_UNSPEC) to reset, each socket with TCP_DEFER_ACCEPT so that the
 *                       handshake's last ACK goes with the request (what a check costs now, without any
 *                       runtime)
 * Runs until killed; the bench counts the target's log lines and this process's CPU. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TARGETS 100

static const char request[] =
    "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: floor\r\nAccept: */*\r\n\r\n";

static int fresh_socket(int epoll, int index, int hold_ack) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct epoll_event event = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = index};
    int second = 1;
    if (fd < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) < 0 ||
        (hold_ack && setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &second, sizeof second) < 0)) {
        perror("socket");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "new") && strcmp(argv[2], "again"))) {
        fprintf(stderr, "usage: checks PORT new|again\n");
        return 2;
    }
    int again = strcmp(argv[2], "again") == 0;
    struct sockaddr_in target = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sockaddr unspecified = {.sa_family = AF_UNSPEC};
    struct linger reset = {1, 0};
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    int fds[TARGETS], waiting[TARGETS] = {0};
    for (int i = 0; again && i < TARGETS; i++) fds[i] = fresh_socket(epoll, i, 1);
    struct timespec due;
    clock_gettime(CLOCK_MONOTONIC, &due);
    for (;;) {
        due.tv_sec += 1;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL) == EINTR) {}
        for (int i = 0; i < TARGETS; i++) {
            if (!again) fds[i] = fresh_socket(epoll, i, 0);
            if (connect(fds[i], (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
                perror("connect");
                return 1;
            }
            /* On loopback the handshake is over by now; the bench's target never makes this wait. */
            if (send(fds[i], request, sizeof request - 1, MSG_NOSIGNAL) < 0) {
                perror("send");
                return 1;
            }
            waiting[i] = 1;
        }
        for (int left = TARGETS; left > 0;) {
            struct epoll_event events[64];
            int ready = epoll_wait(epoll, events, 64, 1000);
            if (ready <= 0) break;
            for (int k = 0; k < ready; k++) {
                int i = events[k].data.u32;
                char response[1024];
                /* Events of a connection already reset are stale. */
                if (!waiting[i] || recv(fds[i], response, sizeof response, 0) <= 0) continue;
                waiting[i] = 0;
                left--;
                if (again) {
                    connect(fds[i], &unspecified, sizeof unspecified);
                } else {
                    setsockopt(fds[i], SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
                    close(fds[i]);
                }
            }
        }
    }
}
