/* log.c — one line per event on stderr, with time and level.
 * Never pass secrets here: callers log hashes or redacted hosts (STYLE 9). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proxy/px.h"

enum px_level px_log_level = PX_INFO;

const char px_err_timeout[] = "timed out";
const char px_err_refused[] = "connection refused";
const char px_err_reset[] = "connection reset";
const char px_err_redis_down[] = "redis unavailable";
const char px_err_nomem[] = "out of memory";
const char px_err_bad_response[] = "malformed upstream response";
const char px_err_closed[] = "connection closed";

static const char *const level_names[] = {"ERR", "WARN", "INFO", "DEBUG"};

void px_logf(enum px_level lvl, const char *ctx, const char *fmt, ...)
{
    char ts[32], msg[1024];
    time_t now = time(NULL);
    struct tm tm;
    va_list ap;

    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* One fprintf per line so lines of concurrent workers do not interleave. */
    fprintf(stderr, "%s %s %s%s%s\n", ts, level_names[lvl], ctx ? ctx : "", ctx ? " " : "", msg);
}

static time_t allow_sec;
static int allow_used;
static unsigned long allow_dropped;

int px_log_allow(int per_second)
{
    time_t now = time(NULL);

    if (now != allow_sec) {
        if (allow_dropped > 0)
            fprintf(stderr, "(%lu similar log lines suppressed)\n", allow_dropped);
        allow_sec = now;
        allow_used = 0;
        allow_dropped = 0;
    }
    if (allow_used >= per_second) {
        allow_dropped++;
        return 0;
    }
    allow_used++;
    return 1;
}

int px_log_open_error(const char *path)
{
    int fd, saved;

    if (!strcmp(path, "stderr"))
        return 0;
    /* O_APPEND: the workers share the file, and a line is one write(). */
    if ((fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) == -1)
        return -1;
    fflush(stderr);
    /* dup2() replaces descriptor 2 in one step: no moment without a stderr. */
    if (fd != STDERR_FILENO && dup2(fd, STDERR_FILENO) == -1) {
        saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (fd != STDERR_FILENO)
        close(fd);
    else
        fcntl(fd, F_SETFD, 0); /* descriptor 2 was closed: keep it across exec */
    return 0;
}
