/* What the parts of raycg.transports._native share: the control segment's layout
 * (drawn in _shm_ring.py, checked against it at import), memory-ordered loads and
 * stores, the futex wake-up, and the module's objects. See _native.c for the why. */
#ifndef RAYCG_NATIVE_H
#define RAYCG_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() ((void)0)
#endif

#if PY_VERSION_HEX >= 0x030D0000
#define IS_FINALIZING() Py_IsFinalizing()
#else
#define IS_FINALIZING() _Py_IsFinalizing()
#endif

/* Byte offsets of the control segment (drawn in _shm_ring.py). */
#define WRITE_SEQ 64
#define DATA_FUTEX 72
#define WRITER_WAITING 88
#define WRITING 96
#define CLOSED 128
#define SPACE_FUTEX 132
#define READERS 256
#define LINE 64
#define R_RELEASED 0
#define R_WAITING 12
#define SLOT_WORDS 8

/* How long a reader keeps spinning while the writer copies the value it waits for
 * (the WRITING word): long enough for hundreds of MiB, short enough that a writer
 * killed mid-copy costs one bounded spin before the futex sleep takes over. */
#define WRITING_SPIN_MAX_NS 20000000LL

/* Set once by the module init (_native.c). */
extern PyObject *pickle_dumps, *pickle_loads, *protocol5, *MISS;
extern PyTypeObject WriterCoreType, ReaderCoreType, PinType;

static inline uint64_t load_u64(const char *base, uint64_t off) {
    return __atomic_load_n((const uint64_t *)(base + off), __ATOMIC_ACQUIRE);
}
static inline uint32_t load_u32(const char *base, uint64_t off) {
    return __atomic_load_n((const uint32_t *)(base + off), __ATOMIC_ACQUIRE);
}
static inline void store_u64(char *base, uint64_t off, uint64_t v) {
    __atomic_store_n((uint64_t *)(base + off), v, __ATOMIC_RELEASE);
}
static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* A core's control pointer: swapped (set_ctrl, holding the GIL) by a close() on one
 * thread while another spins without the GIL, so loaded and stored atomically. Every
 * method that lets the GIL go, or runs Python code, holds its own reference to the
 * mapping's exporter for the whole call: whichever pointer it reads stays mapped. */
static inline char *ctrl_of(char *const *field) { return __atomic_load_n(field, __ATOMIC_ACQUIRE); }
static inline void set_ctrl_field(char **field, char *ctrl) { __atomic_store_n(field, ctrl, __ATOMIC_RELEASE); }

/* Both cores' set_ctrl(keep, addr): use this control memory from now on (a closed
 * endpoint's private copy), held by ``keep``; the old mapping goes with the last call
 * still holding it (_native.c). */
PyObject *swap_ctrl(PyObject **keep_field, char **ctrl_field, PyObject *args);

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline long sys_futex_wake(void *addr, int count) {
    return syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
}

/* Bump the futex word at ``addr`` and wake every sleeper on it. The word changes only
 * for a sleeper: one that reads it, says it waits, then sleeps cannot miss this.
 * Atomic (lock xadd): several processes bump the same word (every reader and a close
 * bump space_futex), and a plain load-add-store could write back a stale value, the
 * very one a sleeper expects, so that its FUTEX_WAIT sleeps through the wake-up. */
static inline void bump_and_wake_word(uint32_t *word) {
    __atomic_fetch_add(word, 1, __ATOMIC_SEQ_CST);
    sys_futex_wake(word, INT32_MAX);
}
static inline void bump_and_wake(char *ctrl, uint64_t off) { bump_and_wake_word((uint32_t *)(ctrl + off)); }

/* The one spin of both ends (_native.c): until ready(arg), for spin_ns, and beyond that
 * while the WRITING word equals ``writing`` (0: never), bounded. */
typedef int (*ready_fn)(void *arg);
int spin_until(ready_fn ready, void *arg, const char *ctrl, int64_t spin_ns, int64_t pure_ns,
               uint64_t writing);

#endif
