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

/* Bytes per process (one cache line). The supervisor maps one table of
 * slots shared by all its processes; each process writes only its own. */
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
    /* offset 24: open connections. The loop thread writes it; sibling
     * processes read it (see `accepting`). */
    _Atomic uint32_t conns;
    /* offset 28: 1 while the process accepts from the listeners it
     * shares with its siblings: its loop sets it when it starts and
     * clears it when it stops accepting; the supervisor clears it when
     * the process is gone. A loop about to accept compares its
     * `conns` with those of the siblings that accept, and lets a less
     * loaded one take the connection (server.c, listener_on_accept), and
     * one at its max_requests stops accepting only while a sibling that
     * is not due for recycling accepts. A sibling whose beat_ns is more
     * than 4 beats old counts as not accepting, whatever it says. */
    _Atomic uint32_t accepting;
    /* to YMO_HEARTBEAT_SIZE: slots are a table's entries */
    unsigned char _reserved[32];
} ymo_heartbeat_t;

_Static_assert(sizeof(ymo_heartbeat_t) == YMO_HEARTBEAT_SIZE,
               "heartbeat slots are YMO_HEARTBEAT_SIZE bytes apart");

#define YMO_RECYCLE_MAX_REQUESTS 1
#define YMO_RECYCLE_REQUESTED 2

#endif /* YMO_HEARTBEAT_H */
