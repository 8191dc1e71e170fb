/* bench/syscost.c — nanoseconds per call of the system calls that
 * bench/syscalls.sh finds the proxy making more often than nginx, on a
 * connected loopback TCP socket with nothing to read (the state in which the
 * proxy makes them). cc -O2 bench/syscost.c -o /tmp/syscost && /tmp/syscost */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define N 1000000

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(void)
{
    int sv[2], ep = epoll_create1(0), n, i;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = 0};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof(a);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    char byte;
    double t;

    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &al))
        return 1;
    sv[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(sv[0], (struct sockaddr *)&a, sizeof(a)) || (sv[1] = accept(l, NULL, NULL)) < 0)
        return 1;
    ev.data.fd = sv[1];
    epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &ev);

    t = now();
    for (i = 0; i < N; i++) {
        ev.events = (i & 1) ? EPOLLIN : EPOLLIN | EPOLLOUT;
        epoll_ctl(ep, EPOLL_CTL_MOD, sv[1], &ev);
    }
    printf("epoll_ctl(MOD)            %6.0f ns\n", (now() - t) / N);
    t = now();
    for (i = 0; i < N; i++)
        ioctl(sv[1], FIONREAD, &n);
    printf("ioctl(FIONREAD)           %6.0f ns\n", (now() - t) / N);
    t = now();
    for (i = 0; i < N; i++)
        recv(sv[1], &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    printf("recv(MSG_PEEK), EAGAIN    %6.0f ns\n", (now() - t) / N);
    t = now();
    for (i = 0; i < N; i++)
        epoll_wait(ep, &ev, 1, 0); /* nothing ready (last MOD: EPOLLIN only) */
    printf("epoll_wait(0), 0 ready    %6.0f ns\n", (now() - t) / N);
    t = now();
    for (i = 0; i < N; i++) {
        int err;
        socklen_t el = sizeof(err);
        getsockopt(sv[1], SOL_SOCKET, SO_ERROR, &err, &el);
    }
    printf("getsockopt(SO_ERROR)      %6.0f ns\n", (now() - t) / N);
    t = now();
    for (i = 0; i < N; i++)
        getppid();
    printf("getppid (bare syscall)    %6.0f ns\n", (now() - t) / N);
    return 0;
}
