/* Fault injection for test builds (cmake -DEASEL_FAULTS=ON): makes a chosen
 * heap allocation or file write fail on purpose, so tests can prove that an
 * out-of-memory or a full disk fails one job cleanly and the server goes on.
 * In every other build the functions below do nothing and nothing is wrapped.
 *
 * How: the fault build links with -Wl,--wrap=malloc,calloc,realloc,
 * posix_memalign,aligned_alloc,strdup,strndup,write, so calls made from our
 * own code (libeasel + the binary, not from shared libraries such as libc,
 * SQLite or cJSON) go through engine/fault.c first.
 *
 * EASEL_FAULT (read at start-up; items joined by commas):
 *   alloc:N    the Nth allocation made while armed fails, once (N >= 1)
 *   alloc:N+   every armed allocation from the Nth on fails
 *   size:B     every armed allocation of B bytes or more fails
 *   write:N    the Nth write(2) from our code, on any thread, fails with ENOSPC
 *   write:N+   every write from the Nth on fails with ENOSPC
 * A thread is "armed" while it runs an image generation (sd_generate_ex()
 * arms itself: the server's job runner, the CLI, a test), or between
 * fault_arm() and fault_disarm(). So alloc:N counts only the allocations of
 * image generations, not those of HTTP handlers or model loading; a server
 * under alloc:N should be started with --no-calibrate (calibration is a
 * generation too). The counters are process-wide. */
#ifndef EASEL_FAULT_H
#define EASEL_FAULT_H

#include "err.h"

/* 1 in a fault build (-DEASEL_FAULTS=ON), else 0. */
int fault_enabled(void);
/* Replaces the configuration (the EASEL_FAULT syntax above; NULL or "" = no
 * faults) and zeroes the counters. EINVAL for a malformed spec (nothing
 * changed), EUNSUPPORTED outside a fault build. Not safe while other threads
 * allocate under an old configuration; call it between runs. */
easel_err fault_configure(const char *spec);
/* Arms/disarms the calling thread (calls nest). */
void fault_arm(void);
void fault_disarm(void);
/* Allocations counted while armed, writes counted, and failures injected so far. */
long fault_allocs(void);
long fault_writes(void);
long fault_injected(void);

#endif
