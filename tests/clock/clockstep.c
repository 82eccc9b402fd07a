/* An LD_PRELOAD library for the clock tests (tests/test_clock_steps.py):
 * moves a process's wall clock (CLOCK_REALTIME and its coarse variant,
 * gettimeofday, time) by an offset a test changes while the process runs,
 * as an administrator's `date -s`, NTP stepping the clock at boot, or a
 * virtual machine resumed from a snapshot would, without touching the
 * machine's clock. CLOCK_MONOTONIC is left alone: it never steps.
 *
 * YMO_TEST_CLOCK_FILE names a file of 8 bytes, a signed 64-bit offset in
 * nanoseconds (native byte order), mapped shared: a write by the test is
 * seen by the next clock read. Without the variable the clock is not
 * moved.
 *
 * What a blocking wait with an absolute CLOCK_REALTIME deadline does is
 * the kernel's business and is not moved: such a wait computed from a
 * clock moved forward sleeps that much longer, as a real wait does when
 * the clock steps back. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static int64_t *offset_ns;      /* the mapped file, or NULL */
static int mapped;              /* tried: offset_ns is final */

static void
clockstep_init(void)
{
    if (real_clock_gettime == NULL) {
        real_clock_gettime =
            (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    }
    /* Two threads may both map the file the first time (one mapping of
     * 8 bytes too many); neither reads the clock unmoved meanwhile. */
    if (!__atomic_load_n(&mapped, __ATOMIC_ACQUIRE)) {
        const char *path = getenv("YMO_TEST_CLOCK_FILE");
        if (path != NULL && *path != '\0') {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED,
                               fd, 0);
                close(fd);
                if (p != MAP_FAILED) {
                    __atomic_store_n(&offset_ns, (int64_t *)p,
                                     __ATOMIC_RELEASE);
                }
            }
        }
        __atomic_store_n(&mapped, 1, __ATOMIC_RELEASE);
    }
}

static int64_t
offset(void)
{
    int64_t *p = __atomic_load_n(&offset_ns, __ATOMIC_ACQUIRE);
    return p != NULL ? __atomic_load_n(p, __ATOMIC_RELAXED) : 0;
}

int
clock_gettime(clockid_t id, struct timespec *ts)
{
    if (real_clock_gettime == NULL ||
        !__atomic_load_n(&mapped, __ATOMIC_ACQUIRE)) {
        clockstep_init();
    }
    int r = real_clock_gettime(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec +
                     offset();
        ts->tv_sec = (time_t)(ns / 1000000000);
        ts->tv_nsec = (long)(ns % 1000000000);
        if (ts->tv_nsec < 0) {
            ts->tv_nsec += 1000000000;
            ts->tv_sec -= 1;
        }
    }
    return r;
}

int
gettimeofday(struct timeval *tv, void *tz)
{
    (void)tz;
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}

time_t
time(time_t *out)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return (time_t)-1;
    }
    if (out != NULL) {
        *out = ts.tv_sec;
    }
    return ts.tv_sec;
}
