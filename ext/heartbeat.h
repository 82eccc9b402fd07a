/* heartbeat.h - the slot through which a server process tells its
 * supervisor that its loop is alive: a small struct in memory the
 * supervisor mapped (anonymous MAP_SHARED) before it forked the process.
 * Plain C. The supervisor reads it with struct.unpack_from at the offsets
 * below (yimmo/_supervisor.py keeps the same layout), so the layout is
 * part of the interface: fixed-size fields, natural alignment, no padding
 * before `recycle`. */
#ifndef YMO_HEARTBEAT_H
#define YMO_HEARTBEAT_H

#include <stdatomic.h>
#include <stdint.h>

/* Bytes the supervisor maps per process (one cache line). */
#define YMO_HEARTBEAT_SIZE 64

typedef struct ymo_heartbeat {
    /* offset 0: CLOCK_MONOTONIC nanoseconds of the loop's last beat.
     * Written by the loop thread only (from an ev_timer, so a loop that
     * stops turning stops beating; the loop never holds the GIL, so a
     * stuck app cannot fake it). 0 until the first beat. */
    _Atomic uint64_t beat_ns;
    /* offset 8: requests completed (responses finished). Loop thread
     * writes. */
    _Atomic uint64_t requests;
    /* offset 16: 1 once the process asked to be replaced
     * (ymo_server_request_recycle: any thread; set once, never cleared
     * by the process). */
    _Atomic uint32_t recycle;
    /* offset 20: why: 1 max_requests, 2 asked by the app or the
     * watchdog. Written before `recycle`. */
    _Atomic uint32_t reason;
} ymo_heartbeat_t;

#define YMO_RECYCLE_MAX_REQUESTS 1
#define YMO_RECYCLE_REQUESTED 2

#endif /* YMO_HEARTBEAT_H */
